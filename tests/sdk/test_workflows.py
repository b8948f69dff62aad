"""A workflow called as a model from the official OpenAI Python SDK, streamed and not: an
existing client calls `workflow:<name>` with no code change."""
import json

import pytest
from openai import OpenAI

from conftest import Stack


@pytest.fixture(scope="module")
def wf_stack(tmp_path_factory):
    wf = tmp_path_factory.mktemp("workflows")
    (wf / "triage.json").write_text(json.dumps({
        "name": "triage",
        "steps": [
            {"id": "classify", "type": "llm", "model": "gpt-4o-mini",
             "messages": [{"role": "user", "content": "Classify: {{ inputs.text }}"}]},
            {"id": "label", "type": "transform",
             "expr": "'label: ' + steps.classify.output"},
        ],
    }))
    s = Stack(f'\n[workflows]\ndir = "{wf}"\n')
    yield s
    s.stop()


def test_workflow_as_a_model(wf_stack):
    client = OpenAI(base_url=wf_stack.base_url, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "my invoice is wrong"}]
    done = client.chat.completions.create(model="workflow:triage", messages=messages)
    assert done.model == "workflow:triage"
    assert done.choices[0].message.content.startswith("label: ")
    assert done.usage.completion_tokens > 0

    stream = client.chat.completions.create(model="workflow:triage", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == done.choices[0].message.content
    assert usage.total_tokens == done.usage.total_tokens


def test_unknown_workflow_is_a_clean_error(wf_stack):
    import openai
    client = OpenAI(base_url=wf_stack.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="workflow:nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "workflow_not_found"
