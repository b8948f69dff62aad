"""Starts the mock provider and the gateway (binaries from MB_BIN_DIR) on free loopback ports."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("MB_BIN_DIR", ROOT / "target" / "debug"))
PROVIDER_KEY = "sk-provider-secret-sdk-77"


_GIVEN = set()


def free_port():
    """A port free now and not handed out before in this process (the kernel may give a
    just-released port again; a gateway's two planes must not get the same one)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def wait_http(url, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never became ready")


def wait_tcp(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


CONFIG = """
[server]
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops}"
threads = 2
max_body_bytes = 8388608
drain_timeout_ms = 5000

[usage]
sink = "{sink}"
path = "{usage}"
flush_interval_ms = 20

[reload]
poll_interval_ms = 100

[providers.mock]
kind = "openai_compatible"
base_url = "http://127.0.0.1:{mock}/v1"
api_key = "${{SDK_PROVIDER_KEY}}"
first_byte_timeout_ms = 1500
idle_timeout_ms = 1000

[providers.dead]
kind = "openai_compatible"
base_url = "http://127.0.0.1:1/v1"
connect_timeout_ms = 500

[models."gpt-4o-mini"]
provider = "mock"
model = "mock-1"

[models."text-embedding-3-small"]
provider = "mock"
model = "mock-embed"

[models."dead-model"]
provider = "dead"
{extra}
"""


class Stack:
    def __init__(self, extra="", mock_args=(), sink="jsonl", env=None):
        self.extra = extra
        self.sink = sink
        self.dir = Path(tempfile.mkdtemp(prefix="mb-sdk-"))
        self.mock_port = free_port()
        self.port = free_port()
        self.ops = free_port()
        self.usage = self.dir / "usage.jsonl"
        self.config = self.dir / "gateway.toml"
        self.log = self.dir / "gateway.log"
        self.procs = []
        self.mock = subprocess.Popen(
            [str(BIN / "mock-openai"), "--listen", f"127.0.0.1:{self.mock_port}", "--threads", "2",
             *mock_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(self.mock)
        wait_tcp(self.mock_port)
        self.write_config("")
        env = dict(os.environ, SDK_PROVIDER_KEY=PROVIDER_KEY, RUST_LOG="info", **(env or {}))
        logf = open(self.log, "wb")
        self.gw = subprocess.Popen(
            [str(BIN / "model-bridge"), "serve", "--config", str(self.config)],
            stdout=logf, stderr=logf, env=env)
        self.procs.append(self.gw)
        wait_http(f"http://127.0.0.1:{self.ops}/readyz")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def write_config(self, extra):
        text = CONFIG.format(port=self.port, ops=self.ops, mock=self.mock_port,
                             usage=self.usage, sink=self.sink, extra=self.extra + extra)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config)

    def records(self):
        if not self.usage.exists():
            return []
        return [json.loads(l) for l in self.usage.read_text().splitlines() if l.strip()]

    def record(self, request_id, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for r in self.records():
                if r["request_id"] == request_id:
                    return r
            time.sleep(0.02)
        raise AssertionError(f"no usage record for {request_id}")

    def create_key(self, *args):
        """`model-bridge keys create` against this gateway's config; returns the key."""
        out = subprocess.run(
            [str(BIN / "model-bridge"), "keys", "create", "--config", str(self.config), *args],
            check=True, capture_output=True, env=dict(os.environ, SDK_PROVIDER_KEY=PROVIDER_KEY))
        return json.loads(out.stdout)["key"]

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ops}/metrics") as r:
            return r.read().decode()

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    yield s
    s.stop()
    assert PROVIDER_KEY not in s.log.read_text(), "provider key leaked into the log"
