"""The gateway's own overhead per workflow step, excluding provider time: the mock answers at
once, and each figure is the workflow's cost minus the same work done directly.

    .venv/bin/python benches/workflow.py [runs]

- transform step: a 100-step chain of CEL transforms, per step (wall and gateway CPU);
- LLM step: a 10-step chain of chat completions through the workflow, minus 10 direct chat
  completions from this client, per step (wall and gateway CPU).
"""
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sdk"))
from conftest import Stack  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
def cpu_s(pid):
    """CPU seconds of every thread of `pid` (schedstat: nanoseconds, unlike /proc/pid/stat's
    10 ms ticks)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def main():
    wf = Path(tempfile.mkdtemp(prefix="mb-wf-bench-"))
    chain = [{"id": f"t{i}", "type": "transform", "expr": f"{i} + 1"} for i in range(100)]
    (wf / "transforms.json").write_text(json.dumps({"name": "transforms", "steps": chain}))
    llm = [{"id": f"l{i}", "type": "llm", "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}]} for i in range(10)]
    (wf / "llms.json").write_text(json.dumps({"name": "llms", "steps": llm}))
    (wf / "empty.json").write_text(json.dumps({"name": "empty", "steps": [
        {"id": "t", "type": "transform", "expr": "1"}]}))
    s = Stack(f'\n[workflows]\ndir = "{wf}"\nmax_steps = 1000\n')
    base = s.base_url
    pid = s.gw.pid
    try:
        def measure(fn, n):
            for _ in range(3):
                fn()
            c0, t0 = cpu_s(pid), time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n, (cpu_s(pid) - c0) / n

        run = lambda name: (lambda: post(f"{base}/workflows/{name}/runs", {"inputs": {}}))
        chat = lambda: post(f"{base}/chat/completions",
                            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        def direct10():
            for _ in range(10):
                chat()

        empty_w, empty_c = measure(run("empty"), RUNS)
        tr_w, tr_c = measure(run("transforms"), RUNS)
        llm_w, llm_c = measure(run("llms"), RUNS)
        dir_w, dir_c = measure(direct10, RUNS)
        print(f"runs per figure: {RUNS}")
        print(f"one-step run (a transform) end to end: {empty_w * 1e6:.0f} µs wall, {empty_c * 1e6:.0f} µs gateway CPU")
        print(f"transform step: {(tr_w - empty_w) / 99 * 1e6:.1f} µs wall, {(tr_c - empty_c) / 99 * 1e6:.1f} µs gateway CPU")
        # Wall time of the direct calls includes this Python client's own HTTP work, which
        # the workflow's calls (made by the gateway to itself) do not: compare CPU.
        print(f"LLM step: {llm_w / 10 * 1e6:.0f} µs wall; gateway CPU {llm_c / 10 * 1e6:.1f} µs vs "
              f"{dir_c / 10 * 1e6:.1f} µs for the same call made directly: "
              f"{(llm_c - dir_c) / 10 * 1e6:.1f} µs of workflow overhead")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
