"""SSO with JWTs: RS256 / ES256 / EdDSA tokens checked against a JWKS served locally, key
rotation picked up on an unknown kid, wrong aud / iss, expired and not-yet-valid tokens refused,
groups bound to roles by policy, org isolation."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from openai import OpenAI

from conftest import ROOT, Stack, free_port

ISS, AUD, SECRET = "https://idp.test", "model-bridge", "hs-test-secret-0123456789abcdef-xyz"
MESSAGES = [{"role": "user", "content": "hi"}]


class JWKS:
    def __init__(self):
        self.keys = {}
        self.fetches = 0
        self.port = free_port()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                body = json.dumps({"keys": list(outer.keys.values())}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, kid, private, alg):
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(private.public_key()))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        self.keys[kid] = jwk


@pytest.fixture(scope="module")
def idp():
    return JWKS()


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }


@pytest.fixture(scope="module")
def sso(tmp_path_factory, idp, keys):
    idp.add("rsa-1", keys["rsa"], "RS256")
    idp.add("ec-1", keys["ec"], "ES256")
    policies = tmp_path_factory.mktemp("policies")
    (policies / "roles.toml").write_text((ROOT / "policies" / "roles.toml").read_text())
    (policies / "bindings.toml").write_text(
        '[[bindings]]\nsubject = "group:ml-eng"\nroles = ["invoker"]\norg = "a"\n\n'
        '[[bindings]]\nsubject = "group:ops"\nroles = ["invoker"]\norg = "b"\n\n'
        '[[bindings]]\nsubject = "group:a-admins"\nroles = ["org-admin"]\norg = "a"\n')
    extra = f"""
[auth]
key_store = "keys.json"
policies = "{policies}"

[auth.jwt]
issuer = "{ISS}"
audience = "{AUD}"
jwks_url = "http://127.0.0.1:{idp.port}/jwks.json"
jwks_refresh_min_s = 0
hs256_secret = "{SECRET}"
leeway_s = 5

[orgs.a]
[orgs.a.cost_centers.a-cc]
[orgs.b]
[orgs.b.cost_centers.b-cc]

[models."a-private"]
provider = "mock"
org = "a"
"""
    s = Stack(extra)
    yield s
    s.stop()


def token(key, alg, kid=None, **over):
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "u1", "email": "ann@a.test", "org": "a",
              "groups": ["ml-eng"], "iat": now, "nbf": now - 1, "exp": now + 300}
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def chat(stack, tok, model="gpt-4o-mini"):
    c = OpenAI(base_url=stack.base_url, api_key=tok, max_retries=0)
    return c.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)


@pytest.mark.parametrize("kind,alg", [("rsa", "RS256"), ("ec", "ES256")])
def test_asymmetric_tokens_from_jwks_url(sso, keys, kind, alg):
    raw = chat(sso, token(keys[kind], alg, kid=f"{kind}-1"))
    assert raw.parse().usage.completion_tokens == 8
    rec = sso.record(raw.headers["x-request-id"])
    assert (rec["org"], rec["user"], rec["key_id"]) == ("a", "ann@a.test", None)


def test_hs256_for_testing(sso):
    assert chat(sso, token(SECRET, "HS256")).parse().choices


def test_key_rotation_is_picked_up_on_unknown_kid(sso, idp, keys):
    before = idp.fetches
    idp.add("ed-1", keys["ed"], "EdDSA")
    raw = chat(sso, token(keys["ed"], "EdDSA", kid="ed-1"))
    assert raw.parse().choices
    assert idp.fetches == before + 1


@pytest.mark.parametrize("over", [
    {"aud": "someone-else"},
    {"iss": "https://evil.test"},
    {"exp": int(time.time()) - 120},
    {"nbf": int(time.time()) + 120},
    {"org": "not-configured"},
])
def test_bad_tokens_are_401(sso, keys, over):
    with pytest.raises(openai.AuthenticationError):
        chat(sso, token(keys["rsa"], "RS256", kid="rsa-1", **over))


def test_forged_signature_and_unknown_kid(sso, keys):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(openai.AuthenticationError):
        chat(sso, token(other, "RS256", kid="rsa-1"))
    with pytest.raises(openai.AuthenticationError):
        chat(sso, token(other, "RS256", kid="nobody"))
    with pytest.raises(openai.AuthenticationError):
        chat(sso, token("wrong-secret-0123456789abcdef-xyzw", "HS256"))


def test_groups_bind_roles_and_orgs_isolate(sso, keys):
    with pytest.raises(openai.PermissionDeniedError):
        chat(sso, token(keys["rsa"], "RS256", kid="rsa-1", groups=["unbound"]))
    assert chat(sso, token(keys["rsa"], "RS256", kid="rsa-1"), model="a-private").parse().choices
    b_token = token(keys["rsa"], "RS256", kid="rsa-1", org="b", groups=["ops"], email="bob@b.test")
    assert chat(sso, b_token).parse().choices
    with pytest.raises(openai.NotFoundError):
        chat(sso, b_token, model="a-private")


def test_jwt_admin_is_confined_to_its_org(sso, keys):
    import httpx
    tok = token(keys["rsa"], "RS256", kid="rsa-1", groups=["a-admins"])
    ops = f"http://127.0.0.1:{sso.ops}/admin/v1"
    h = {"Authorization": f"Bearer {tok}"}
    with httpx.Client() as c:
        who = c.get(f"{ops}/whoami", headers=h).json()
        assert who["org"] == "a" and who["user"] == "ann@a.test" and "org-admin" in who["roles"]
        assert c.get(f"{ops}/orgs/a/keys", headers=h).status_code == 200
        made = c.post(f"{ops}/orgs/a/keys", headers=h, json={"roles": ["invoker"]})
        assert made.status_code == 201 and made.json()["key"].startswith("mbk_")
        for method, path in [("GET", "/orgs/b"), ("GET", "/orgs/b/keys"), ("POST", "/orgs/b/keys"),
                             ("GET", "/orgs/b/cost_centers")]:
            r = c.request(method, f"{ops}{path}", headers=h, json={"roles": []} if method == "POST" else None)
            assert r.status_code == 404, (method, path, r.status_code)
    # Attribution into the other org's cost center is refused on the data plane too.
    with pytest.raises(openai.PermissionDeniedError):
        OpenAI(base_url=sso.base_url, api_key=tok, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-model-bridge-cost-center": "b-cc"})
    assert OpenAI(base_url=sso.base_url, api_key=tok, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-model-bridge-cost-center": "a-cc"}).choices
