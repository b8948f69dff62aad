"""The data plane over TLS (rustls): a certificate in config, HTTP/1.1 and HTTP/2 via ALPN."""
import os
import shutil
import ssl
import subprocess
from types import SimpleNamespace

import httpx
import pytest
from openai import OpenAI

from conftest import BIN, CONFIG, PROVIDER_KEY, Stack, free_port, wait_http


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True)
    base = Stack()  # a plain stack supplies the mock; a second gateway serves TLS
    port, ops = free_port(), free_port()
    cfg = base.config.read_text()
    cfg = cfg.replace(f"127.0.0.1:{base.port}", f"127.0.0.1:{port}").replace(
        f"127.0.0.1:{base.ops}", f"127.0.0.1:{ops}")
    cfg = cfg.replace("[usage]", f'[server.tls]\ncert_path = "{d}/cert.pem"\nkey_path = "{d}/key.pem"\n\n[usage]')
    (d / "gateway.toml").write_text(cfg)
    env = dict(os.environ, SDK_PROVIDER_KEY=PROVIDER_KEY)
    gw = subprocess.Popen([str(BIN / "model-bridge"), "serve", "--config", str(d / "gateway.toml")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_http(f"http://127.0.0.1:{ops}/readyz")
    yield SimpleNamespace(base_url=f"https://127.0.0.1:{port}/v1", cert=str(d / "cert.pem"),
                          port=port, ops=ops, dir=d)
    gw.terminate()
    gw.wait(timeout=15)
    base.stop()


@pytest.mark.parametrize("http2", [False, True])
def test_sdk_over_tls(tls_stack, http2):
    http = httpx.Client(verify=ssl.create_default_context(cafile=tls_stack.cert), http2=http2)
    c = OpenAI(base_url=tls_stack.base_url, api_key="k", http_client=http, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.http_response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert raw.parse().usage.completion_tokens == 8
    chunks = list(c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).startswith("tok0")


def connections_to(port):
    """Sockets in any state (established, time-wait, ...) whose remote end is 127.0.0.1:port."""
    n = 0
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        remote = line.split()[2]
        if int(remote.split(":")[1], 16) == port:
            n += 1
    return n


def test_provider_over_tls_keeps_its_connections(tls_stack):
    """The TLS gateway as the provider of a plain one: requests go out over rustls on pooled
    connections (a late TLS 1.3 session ticket must not make a pooled connection look dead)."""
    d = tls_stack.dir
    port, ops = free_port(), free_port()
    cfg = CONFIG.format(port=port, ops=ops, mock=0, usage=d / "usage-front.jsonl", sink="jsonl",
                        extra="")
    cfg = cfg.replace('base_url = "http://127.0.0.1:0/v1"',
                      f'base_url = "https://127.0.0.1:{tls_stack.port}/v1"\nverify_tls = false')
    cfg = cfg.replace('model = "mock-1"', 'model = "gpt-4o-mini"')
    (d / "front.toml").write_text(cfg)
    env = dict(os.environ, SDK_PROVIDER_KEY=PROVIDER_KEY)
    gw = subprocess.Popen([str(BIN / "model-bridge"), "serve", "--config", str(d / "front.toml")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_http(f"http://127.0.0.1:{ops}/readyz")
        c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        for i in range(30):
            if i % 2:
                chunks = list(c.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
                assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            else:
                r = c.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
                assert r.usage.completion_tokens == 8
        opened = connections_to(tls_stack.port)
        assert 1 <= opened <= 3, f"{opened} connections for 30 sequential requests"
    finally:
        gw.terminate()
        gw.wait(timeout=15)


def test_certificate_expiry_is_a_metric(tls_stack):
    """`model_bridge_tls_cert_not_after_seconds{listener="data"}` is the served certificate's
    notAfter, so an alert can page weeks before it lapses."""
    import calendar
    import time
    end = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", tls_stack.cert],
                         check=True, capture_output=True, text=True).stdout.strip()
    want = calendar.timegm(time.strptime(end.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"))
    body = httpx.get(f"http://127.0.0.1:{tls_stack.ops}/metrics").text
    line = next(l for l in body.splitlines()
                if l.startswith('model_bridge_tls_cert_not_after_seconds{listener="data"}'))
    assert int(float(line.split()[-1])) == want
