"""The official OpenAI Python SDK, pointed at the gateway, sees OpenAI: same objects, same
exception classes, exact token accounting."""
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(stack, **kw):
    kw.setdefault("max_retries", 0)
    return OpenAI(base_url=stack.base_url, api_key="sk-caller-not-forwarded", **kw)


def mock_usage(headers):
    p, c, cached = (int(x) for x in headers["x-mock-usage"].split(","))
    return p, c, cached


def test_chat_non_stream_usage_matches_mock(stack):
    raw = client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-cached-tokens": "2"})
    completion = raw.parse()
    p, c, cached = mock_usage(raw.headers)
    assert completion.choices[0].message.content.startswith("tok0")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (p, c)
    assert completion.usage.prompt_tokens_details.cached_tokens == cached == 2
    assert raw.headers["x-mock-authorization"] == "Bearer sk-provider-secret-sdk-77"
    rec = stack.record(raw.headers["x-request-id"])
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cached_tokens"]) == (p, c, cached)
    assert rec["usage_source"] == "provider" and rec["status"] == 200


@pytest.mark.parametrize("client_asks", [False, True])
def test_chat_stream_usage_matches_mock(stack, client_asks):
    kw = {"stream_options": {"include_usage": True}} if client_asks else {}
    raw = client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        extra_headers={"x-mock-chunks": "6"}, **kw)
    p, c, cached = mock_usage(raw.headers)
    stream = raw.parse()
    text, usage_chunks = "", []
    for chunk in stream:
        if chunk.usage is not None:
            usage_chunks.append(chunk.usage)
        for ch in chunk.choices:
            text += ch.delta.content or ""
    assert text == "".join(f"tok{i} " for i in range(6))
    if client_asks:
        assert len(usage_chunks) == 1
        assert (usage_chunks[0].prompt_tokens, usage_chunks[0].completion_tokens) == (p, c)
    else:
        assert usage_chunks == [], "the injected usage chunk must not reach a client that did not ask"
    rec = stack.record(raw.headers["x-request-id"])
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cached_tokens"]) == (p, c, cached)
    assert rec["stream"] is True and rec["ttft_ms"] > 0


def test_embeddings(stack):
    raw = client(stack).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["alpha", "beta", "gamma"])
    emb = raw.parse()
    assert len(emb.data) == 3 and len(emb.data[0].embedding) == 8
    assert emb.data[1].embedding[0] == pytest.approx(0.08)
    assert raw.headers["x-mock-model"] == "mock-embed"
    p, _, _ = mock_usage(raw.headers)
    assert emb.usage.prompt_tokens == p
    assert stack.record(raw.headers["x-request-id"])["prompt_tokens"] == p


def test_models_list(stack):
    ids = sorted(m.id for m in client(stack).models.list())
    assert ids == ["dead-model", "gpt-4o-mini", "text-embedding-3-small"]
    assert client(stack).models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_responses_api(stack):
    raw = client(stack).responses.with_raw_response.create(model="gpt-4o-mini", input="hi")
    resp = raw.parse()
    p, c, _ = mock_usage(raw.headers)
    assert resp.output_text.startswith("tok0")
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (p, c)
    events = list(client(stack).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed"


def test_errors_raise_the_sdks_own_classes(stack):
    c = client(stack)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={"stream": "yes"})
    assert e.value.body["param"] == "stream"
    with pytest.raises(openai.BadRequestError):
        c.post("/chat/completions", body={"messages": MESSAGES}, cast_to=object)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="gpt-4o-mini",
                                  messages=[{"role": "user", "content": "x" * (9 << 20)}])
    assert e.value.status_code == 413 and e.value.code == "request_too_large"
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="dead-model", messages=MESSAGES)
    assert e.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                  extra_headers={"x-mock-latency-ms": "2500"})
    assert e.value.status_code == 504 and e.value.code == "upstream_timeout"
    # Provider errors pass through: the SDK sees the provider's status and body.
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                  extra_headers={"x-mock-status": "429"})
    assert "mock error 429" in str(e.value)


@pytest.mark.parametrize("size", [100, 100 << 10, 5 << 20])
def test_body_sizes(stack, size):
    content = "y" * size
    raw = client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}])
    assert raw.parse().usage.prompt_tokens == mock_usage(raw.headers)[0]
    assert int(raw.headers["x-mock-body-bytes"]) > size


def _body(size):
    import json
    return json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": "z" * size}]}).encode()


@pytest.mark.parametrize("size", [100, 100 << 10, 5 << 20])
def test_chunked_bodies(stack, size):
    body = _body(size)

    def gen():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    with httpx.Client() as h:
        r = h.post(f"{stack.base_url}/chat/completions", content=gen(),
                   headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert "transfer-encoding" not in r.request.headers or r.request.headers["transfer-encoding"] == "chunked"
    assert int(r.headers["x-mock-body-bytes"]) == len(body) - len("gpt-4o-mini") + len("mock-1")


@pytest.mark.parametrize("size", [100, 100 << 10, 5 << 20])
def test_h2c_bodies_through_the_sdk(stack, size):
    http = httpx.Client(http1=False, http2=True)
    c = client(stack, http_client=http)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "w" * size}])
    assert raw.http_response.http_version == "HTTP/2"
    assert raw.parse().usage.prompt_tokens == mock_usage(raw.headers)[0]
    stream = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert sum(1 for _ in stream) > 0


def test_reload_under_load_has_zero_failures(stack):
    failures, successes = [], []
    stop = threading.Event()

    def worker(i):
        c = client(stack)
        while not stop.is_set():
            try:
                if i % 2:
                    list(c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
                else:
                    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                successes.append(1)
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    before = stack.metrics().count('config_reloads_total{result="success"}')
    for n in range(8):
        time.sleep(0.2)
        stack.write_config(f'\n[models."extra-{n}"]\nprovider = "mock"\n')
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert before >= 0
    m = stack.metrics()
    line = next(l for l in m.splitlines() if l.startswith('model_bridge_config_reloads_total{result="success"}'))
    assert float(line.split()[-1]) >= 4
    assert failures == []
    assert len(successes) > 50
    assert client(stack).models.retrieve("extra-7").id == "extra-7"


def test_client_disconnect_mid_stream_is_recorded_cancelled(stack):
    raw = client(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True,
        extra_headers={"x-mock-chunks": "300", "x-mock-chunk-interval-ms": "10"})
    rid = raw.headers["x-request-id"]
    stream = raw.parse()
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
        if seen == 5:
            break
    stream.close()
    rec = stack.record(rid)
    assert rec["cancelled"] is True
    assert 5 <= rec["completion_tokens"] < 300
    assert rec["usage_source"] == "estimated"
