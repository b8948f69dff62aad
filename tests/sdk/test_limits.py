"""Limits as the official SDK sees them: a 429 raises RateLimitError with the limit's code, and
with its retries on the SDK waits as `retry-after-ms` says and succeeds once capacity returns."""
import time

import openai
import pytest
from openai import OpenAI

from conftest import Stack

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def limited():
    s = Stack("""
[models.pricey]
provider = "mock"
model = "mock-1"
price = { input_per_1m = 0, output_per_1m = 1000 }

[orgs.default]
default_cost_center = "cc"
[orgs.default.limits]
requests_per_second = 2
[orgs.default.cost_centers.cc]
budget = { usd = "0.05", period = "month" }
""")
    yield s
    s.stop()


def test_rate_limit_error_then_retries_succeed(limited):
    no_retry = OpenAI(base_url=limited.base_url, api_key="x", max_retries=0)
    raw = no_retry.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert "x-ratelimit-remaining-requests" in raw.headers
    no_retry.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as e:
        no_retry.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert e.value.status_code == 429
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1

    # With retries, the SDK backs off as told and gets through once the window allows.
    retrying = OpenAI(base_url=limited.base_url, api_key="x", max_retries=5)
    start = time.time()
    for _ in range(4):
        out = retrying.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert out.choices[0].message.content
    assert time.time() - start >= 0.5, "four requests at 2/s needed at least one wait"


def test_budget_exhaustion_is_a_rate_limit_error_with_its_own_code(limited):
    client = OpenAI(base_url=limited.base_url, api_key="x", max_retries=0)
    # Worst case of one request: 100 completion tokens at 1000 USD / 1M = 0.1 USD > 0.05 USD.
    time.sleep(1.1)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="pricey", messages=MESSAGES, max_tokens=100)
    assert e.value.code == "budget_exceeded"
    assert "cost center default/cc" in e.value.message
    assert e.value.response.headers["x-should-retry"] == "false"
    # So even a retrying client gives up at once instead of waiting for next month.
    retrying = OpenAI(base_url=limited.base_url, api_key="x", max_retries=5)
    start = time.time()
    with pytest.raises(openai.RateLimitError):
        retrying.chat.completions.create(model="pricey", messages=MESSAGES, max_tokens=100)
    assert time.time() - start < 5


@pytest.fixture(scope="module")
def split_stack():
    s = Stack("""
[models.ab]
provider = "mock"
model = "mock-a"
[models.ab.split]
experiment = "sdk-exp"
subject = "end_user"
[[models.ab.split.variants]]
name = "control"
weight = 50
[[models.ab.split.variants]]
name = "treatment"
weight = 50
provider = "mock"
model = "mock-b"
""")
    yield s
    s.stop()


def test_the_sdk_sees_no_difference_but_the_variant_header(split_stack):
    client = OpenAI(base_url=split_stack.base_url, api_key="x", max_retries=0)
    seen = set()
    for i in range(40):
        raw = client.chat.completions.with_raw_response.create(
            model="ab", messages=MESSAGES, user=f"sdk-user-{i}")
        out = raw.parse()
        assert out.choices[0].message.content
        assert out.usage.total_tokens > 0
        seen.add(raw.headers["x-model-bridge-variant"])
        again = client.chat.completions.with_raw_response.create(
            model="ab", messages=MESSAGES, user=f"sdk-user-{i}")
        assert again.headers["x-model-bridge-variant"] == raw.headers["x-model-bridge-variant"]
    assert seen == {"control", "treatment"}
    stream = client.chat.completions.create(model="ab", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True}, user="s")
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens > 0
