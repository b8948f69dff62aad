"""The console in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium) against a real gateway, the mock provider and ClickHouse: sign-in with a key, a
streamed chat in the playground, the generated Python snippet run as is, keys created,
shown once and revoked, the audit log filtered and its chain verified, the spend page's total
against the spend API's, a viewer without write controls whose forged write is refused, and
hostile text rendered as text. Screenshots of every page go to target/console-screenshots/."""
import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sdk"))
from conftest import ROOT, Stack  # noqa: E402

SHOTS = ROOT / "target" / "console-screenshots"
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
CH = os.environ.get("MB_CLICKHOUSE_URL")


def ch(sql):
    req = urllib.request.Request(CH, data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode().strip()


class Idp:
    """A minimal OIDC provider: discovery, an authorization endpoint that signs the user in at
    once, and a token endpoint that checks the PKCE verifier against the challenge (S256)."""

    def __init__(self):
        self.codes = {}
        self.exchanges = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        self.port = self.server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.secret = secrets.token_hex(16)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handler(self):
        idp = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("access-control-allow-origin", "*")
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    return self.reply(200, {"issuer": idp.issuer,
                                            "authorization_endpoint": f"{idp.issuer}/authorize",
                                            "token_endpoint": f"{idp.issuer}/token"})
                if url.path == "/authorize":
                    assert q["response_type"] == "code" and q["client_id"] == "mb-console"
                    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
                    code = secrets.token_urlsafe(16)
                    idp.codes[code] = (q["code_challenge"], q["redirect_uri"])
                    loc = f"{q['redirect_uri']}?{urllib.parse.urlencode({'code': code, 'state': q['state']})}"
                    self.send_response(302)
                    self.send_header("location", loc)
                    self.end_headers()
                    return
                self.reply(404, {})

            def do_POST(self):
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["content-length"])).decode()))
                challenge, redirect = idp.codes.pop(form.get("code"), (None, None))
                digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
                ok = (challenge is not None and redirect == form.get("redirect_uri")
                      and base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == challenge)
                idp.exchanges.append(ok)
                if not ok:
                    return self.reply(400, {"error": "invalid_grant"})
                now = int(time.time())
                token = jwt.encode({"iss": idp.issuer, "aud": "mb-console", "sub": "ann", "email": "ann@acme.test",
                                    "org": "acme", "groups": ["acme-admins"], "iat": now, "exp": now + 300},
                                   idp.secret, algorithm="HS256")
                self.reply(200, {"access_token": "opaque-" + secrets.token_hex(8), "id_token": token,
                                 "token_type": "Bearer"})

        return H


@pytest.fixture(scope="module")
def idp():
    i = Idp()
    yield i
    i.server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, idp):
    if not CH:
        assert os.environ.get("CI") not in ("true", "1"), "MB_CLICKHOUSE_URL must be set in CI"
        pytest.skip("MB_CLICKHOUSE_URL not set (run scripts/test.sh)")
    policies = tmp_path_factory.mktemp("policies")
    (policies / "roles.toml").write_text((ROOT / "policies" / "roles.toml").read_text())
    (policies / "sso.toml").write_text(
        '[[bindings]]\nsubject = "group:acme-admins"\nroles = ["org-admin"]\norg = "acme"\n')
    db = f"mb_console_{secrets.token_hex(4)}"
    extra = f"""
[models."gpt-4o"]
provider = "mock"
model = "mock-1"
price = {{ input_per_1m = "2.5", output_per_1m = "10" }}

[auth]
key_store = "keys.json"
policies = "{policies}"

[auth.jwt]
issuer = "{idp.issuer}"
audience = "mb-console"
hs256_secret = "{idp.secret}"

[console]
oidc_client_id = "mb-console"

[audit]
sink = "clickhouse"

[orgs.acme]
default_cost_center = "eng"
[orgs.acme.cost_centers.eng]
[orgs.acme.cost_centers.research]

[clickhouse]
url = "{CH}"
database = "{db}"
migrate_on_start = true
batch_interval_ms = 50
spool_dir = "spool"
"""
    # Streams slow enough to watch: 12 chunks, 150 ms apart.
    s = Stack(extra, mock_args=("--chunks", "12", "--chunk-interval-ms", "150"), sink="clickhouse")
    s.db = db
    s.ops_url = f"http://127.0.0.1:{s.ops}"
    s.admin_key = s.create_key("--org", "acme", "--role", "org-admin")
    s.viewer_key = s.create_key("--org", "acme", "--role", "org-viewer", "--role", "invoker")
    for k in (s.admin_key, s.viewer_key):
        wait_status(s, k, 200)
    yield s
    s.stop()
    ch(f"DROP DATABASE IF EXISTS {db}")


def models_status(stack, key):
    req = urllib.request.Request(f"{stack.base_url}/models", headers={"authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def until(check, timeout, what):
    """Polls `check` until it returns something truthy (returned), failing with `what`'s text
    after `timeout` seconds: the one waiting loop of these tests outside the browser."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.05)


def wait_status(stack, key, want, timeout=10):
    until(lambda: models_status(stack, key) == want, timeout,
          lambda: f"key answered {models_status(stack, key)}, not {want}")


def admin_get(stack, key, path):
    req = urllib.request.Request(f"{stack.ops_url}/admin/v1{path}", headers={"authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    d.set_script_timeout(30)
    yield d
    d.quit()


def wait(d, cond, timeout=15):
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.05).until(cond)
    except TimeoutException:
        # What the page showed and said, for the failure's report.
        d.save_screenshot(str(SHOTS / "failure.png"))
        logs = [e["message"] for e in d.get_log("browser")]
        text = d.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"timed out; page text:\n{text}\nbrowser log:\n" + "\n".join(logs))


def css(d, sel):
    return d.find_element(By.CSS_SELECTOR, sel)


def present(d, sel):
    try:
        d.find_element(By.CSS_SELECTOR, sel)
        return True
    except NoSuchElementException:
        return False


def sign_in(d, stack, key):
    d.get(f"{stack.ops_url}/console/")
    d.execute_script("sessionStorage.clear()")
    d.get(f"{stack.ops_url}/console/")
    wait(d, lambda d: present(d, "#signin-key"))
    css(d, "#signin-key").send_keys(key)
    css(d, "#signin-submit").click()
    wait(d, lambda d: present(d, "#signout"))


def page(d, stack, name, ready_sel):
    d.get(f"{stack.ops_url}/console/#/{name}")
    wait(d, lambda d: present(d, ready_sel))


def shot(d, name):
    d.save_screenshot(str(SHOTS / f"{name}.png"))


def no_script_ran(d):
    assert d.execute_script("return window.__xss === undefined"), "injected markup ran"


def test_streamed_chat_in_the_playground_and_its_python_snippet(stack, browser):
    d = browser
    sign_in(d, stack, stack.admin_key)
    wait(d, lambda d: present(d, "#pg-model option[value='gpt-4o']"))
    Select(css(d, "#pg-model")).select_by_value("gpt-4o")
    user = css(d, "#pg-user")
    user.clear()
    user.send_keys("Tell me about bridges.")
    assert css(d, "#pg-stream").is_selected()
    # Every change of the output's text, and the moment the request is done, as the page
    # sees them.
    d.execute_script("""
        window.__growth = [];
        const out = document.getElementById('pg-output');
        new MutationObserver(() => window.__growth.push({len: out.textContent.length,
            done: !!document.getElementById('pg-done')}))
          .observe(out, {childList: true, characterData: true, subtree: true});""")
    css(d, "#pg-send").click()
    wait(d, lambda d: present(d, "#pg-done"))
    growth = d.execute_script("return window.__growth")
    before_done = sorted({g["len"] for g in growth if not g["done"] and g["len"] > 0})
    assert len(before_done) >= 3, f"the text did not grow while streaming: {growth}"
    text = css(d, "#pg-output").text
    assert text, "no text"

    # Usage and cost, as the gateway recorded them.
    wait(d, lambda d: present(d, "dd[data-field='Cost']"))
    rid = css(d, "dd[data-field='Request id']").text
    assert rid.startswith("req_")
    shown_cost = css(d, "dd[data-field='Cost']").text
    shown_usage = css(d, "dd[data-field='Usage']").text
    def usage_row():
        out = ch(f"SELECT prompt_tokens, completion_tokens, cost_nanousd FROM {stack.db}.usage_events "
                 f"WHERE request_id = '{rid}' FORMAT JSONEachRow")
        return json.loads(out) if out else None

    row = until(usage_row, 15, "usage row never reached ClickHouse")
    nano = int(row["cost_nanousd"])
    assert nano > 0
    assert shown_cost == f"${nano // 10**9}.{nano % 10**9:09d}", (shown_cost, nano)
    assert f"{row['prompt_tokens']} prompt + {row['completion_tokens']} completion" in shown_usage
    assert css(d, "dd[data-field='Provider']").text == "mock"
    shot(d, "playground")

    # The Python snippet, copied with its button, runs as is against the gateway.
    d.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": stack.ops_url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    pane = css(d, "#snippet-python").find_element(By.XPATH, "..")
    pane.find_element(By.CSS_SELECTOR, "button").click()
    copied = d.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done('ERR ' + e));")
    assert copied == css(d, "#snippet-python").text + "\n" or copied == css(d, "#snippet-python").text, copied
    assert stack.admin_key not in copied, "the snippet must not embed the key"
    script = Path(stack.dir) / "snippet.py"
    script.write_text(copied)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, MODEL_BRIDGE_API_KEY=stack.admin_key))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(text[:20]), (run.stdout, text)
    assert "completion_tokens" in run.stdout


def test_an_error_shows_its_openai_body(stack, browser):
    d = browser
    sign_in(d, stack, stack.admin_key)
    wait(d, lambda d: present(d, "#pg-model option[value='dead-model']"))
    Select(css(d, "#pg-model")).select_by_value("dead-model")
    css(d, "#pg-send").click()
    wait(d, lambda d: present(d, "[data-testid='error']"), timeout=30)
    err = css(d, "[data-testid='error']").text
    assert "HTTP 502" in err or "HTTP 503" in err, err
    assert '"error"' in err and '"code"' in err, err


def test_keys_are_created_shown_once_and_revoked(stack, browser):
    d = browser
    sign_in(d, stack, stack.admin_key)
    page(d, stack, "keys", "#key-form")
    css(d, "#key-name").send_keys(XSS)
    css(d, "#key-roles").send_keys("invoker")
    css(d, "#key-create").click()
    wait(d, lambda d: present(d, "#keys-secret-value"))
    secret = css(d, "#keys-secret-value").text
    assert secret.startswith("mbk_")
    key_id = secret.split("_")[1]
    shot(d, "keys-secret")
    wait_status(stack, secret, 200)
    # The name is text, exactly as typed; nothing in it ran.
    cell = wait(d, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr") if key_id in r.text])
    assert XSS in cell[0].text
    no_script_ran(d)
    # Shown once: gone when dismissed, and never again from the API.
    css(d, "#keys-secret-done").click()
    assert secret not in d.page_source
    d.refresh()
    wait(d, lambda d: present(d, "#keys-table"))
    assert secret not in d.page_source
    listed = admin_get(stack, stack.admin_key, "/orgs/acme/keys?limit=100")
    assert secret not in json.dumps(listed)
    shot(d, "keys")
    # Revoked from the page: the data plane refuses it.
    css(d, f"button[data-action='revoke'][data-key='{key_id}']").click()
    d.switch_to.alert.accept()
    wait(d, lambda d: not present(d, f"button[data-action='revoke'][data-key='{key_id}']"))
    wait_status(stack, secret, 401)


def test_audit_log_filters_and_verifies_its_chain(stack, browser):
    d = browser
    sign_in(d, stack, stack.admin_key)
    page(d, stack, "audit", "#audit-form")
    css(d, "#audit-action").send_keys("key.create")

    # Audit rows reach ClickHouse in batches: search again until they are there.
    def rows(d):
        if css(d, "#audit-results").get_attribute("data-state") != "done":
            return False
        found = d.find_elements(By.CSS_SELECTOR, "#audit-table tbody tr")
        actions = [r.find_elements(By.CSS_SELECTOR, "td")[2].text for r in found]
        if actions and all(a == "key.create" for a in actions):
            return found
        css(d, "#audit-search").click()
        return False

    found = wait(d, rows, timeout=20)
    # Unfiltered, the trail holds other actions too (the filter did the narrowing).
    everything = admin_get(stack, stack.admin_key, "/audit?limit=1000")["data"]
    assert len({e["action"] for e in everything}) > 1
    assert len(found) == sum(e["action"] == "key.create" for e in everything)
    # The key name with markup sits in the event's before / after, as text.
    details = [r for r in found if "<img" in r.text or r.find_elements(By.CSS_SELECTOR, "details")]
    assert details
    for det in d.find_elements(By.CSS_SELECTOR, "#audit-table details"):
        det.click()
    # (Shown as the event's JSON: the payload as a JSON string, its quotes escaped.)
    assert any(json.dumps(XSS)[1:-1] in p.text for p in d.find_elements(By.CSS_SELECTOR, "#audit-table pre"))
    no_script_ran(d)
    wait(d, lambda d: present(d, "#audit-chain [data-verified]"), timeout=30)
    assert css(d, "#audit-chain [data-verified]").get_attribute("data-verified") == "true", \
        css(d, "#audit-chain").text
    shot(d, "audit")


def test_spend_total_equals_the_spend_api(stack, browser):
    d = browser
    # Every usage row is in ClickHouse (the rollup follows by materialized view).
    def settled():
        rows = int(ch(f"SELECT count() FROM {stack.db}.usage_events WHERE org = 'acme' AND cost_nanousd > 0"))
        api = admin_get(stack, stack.admin_key, "/spend")
        return api if rows > 0 and api["total"]["requests"] >= rows else None

    api = until(settled, 20, "the spend API never covered every usage row")
    sign_in(d, stack, stack.admin_key)
    page(d, stack, "spend", "#spend-total")
    shown = int(css(d, "#spend-total").get_attribute("data-nanousd"))
    charted = int(css(d, "#spend-chart").get_attribute("data-total-nanousd"))
    assert shown == int(api["total"]["cost_nanousd"]) == charted > 0
    shot(d, "spend")


def test_a_viewer_sees_no_write_controls_and_a_forged_write_is_refused(stack, browser):
    d = browser
    sign_in(d, stack, stack.viewer_key)
    page(d, stack, "keys", "#keys-table")
    assert not present(d, "#key-form")
    assert not present(d, "button[data-action='revoke']")
    page(d, stack, "roles", "#assign-lookup")
    assert not present(d, "#assign-controls")
    shot(d, "roles-viewer")
    status = d.execute_async_script("""
        const done = arguments[0];
        fetch('/admin/v1/orgs/acme/keys', {method: 'POST', headers: {
            authorization: 'Bearer ' + sessionStorage.getItem('mb.credential'),
            'content-type': 'application/json'}, body: JSON.stringify({roles: ['org-admin']})})
          .then(r => r.json().then(b => done([r.status, b.error && b.error.type])), e => done(String(e)));""")
    assert status == [403, "permission_error"], status


def test_roles_assignment_and_every_page(stack, browser):
    d = browser
    sign_in(d, stack, stack.admin_key)
    page(d, stack, "roles", "#roles-table")
    # Inheritance expanded: org-admin holds what developer, finance and org-viewer grant.
    admin_row = [r for r in d.find_elements(By.CSS_SELECTOR, "#roles-table tbody tr")
                 if r.find_elements(By.CSS_SELECTOR, "td")[0].text == "org-admin"][0]
    for perm in ("endpoint:passthrough", "admin:spend:read", "admin:keys:write"):
        assert perm in admin_row.text, admin_row.text
    css(d, "#assign-user").send_keys("alice")
    Select(css(d, "#assign-role")).select_by_value("developer")
    # (Chromium's date-time widget takes typed keys in the locale's order: set the value.)
    d.execute_script("arguments[0].value = '2099-01-01T00:00'", css(d, "#assign-expires"))
    css(d, "#assign-submit").click()
    wait(d, lambda d: present(d, "#assign-table button[data-role='developer']"))
    assert "2099-01-01T00:00:00Z" in css(d, "#assign-table").text
    shot(d, "roles")
    css(d, "#assign-table button[data-role='developer']").click()
    wait(d, lambda d: not present(d, "#assign-table button[data-role='developer']"))
    for name, sel in [("experiments", "#experiments-table"), ("health", "#health-sinks")]:
        page(d, stack, name, sel)
        shot(d, name)
    assert "ClickHouse up" in css(d, "#health-sinks").text
    # The strict CSP held: nothing on any page needed inline script or style.
    violations = [e for e in d.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not violations, violations


def test_sso_sign_in_with_authorization_code_and_pkce(stack, idp, browser):
    d = browser
    d.get(f"{stack.ops_url}/console/")
    d.execute_script("sessionStorage.clear()")
    d.get(f"{stack.ops_url}/console/")
    wait(d, lambda d: present(d, "#signin-sso"))
    css(d, "#signin-sso").click()
    # To the IdP and back: the code is traded for tokens with the PKCE verifier.
    wait(d, lambda d: present(d, "#signout"))
    assert idp.exchanges == [True]
    assert "ann@acme.test · acme" in css(d, "#who").text
    assert "code=" not in d.current_url, "the code does not linger in the address bar"
    # The SSO user's group binding makes them an org admin: the keys page offers writes.
    page(d, stack, "keys", "#key-form")
    shot(d, "signed-in-with-sso")
