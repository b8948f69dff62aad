"""Virtual keys and RBAC as the official SDK sees them: AuthenticationError for 401,
PermissionDeniedError for 403, NotFoundError for another org's model."""
import time
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from conftest import ROOT, Stack

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory):
    policies = tmp_path_factory.mktemp("policies")
    (policies / "roles.toml").write_text((ROOT / "policies" / "roles.toml").read_text())
    (policies / "test.toml").write_text(
        '[roles.mini-only]\npermissions = ["model:invoke:gpt-4o-mini", "endpoint:chat_completions"]\n')
    extra = f"""
[auth]
key_store = "keys.json"
policies = "{policies}"

[orgs.a]
[orgs.b]

[models."b-private"]
provider = "mock"
org = "b"
"""
    s = Stack(extra)
    yield s
    s.stop()


def sdk(stack, key):
    return OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)


def wait_usable(stack, key):
    deadline = time.time() + 10
    while True:
        try:
            sdk(stack, key).models.list()
            return
        except openai.AuthenticationError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def test_sdk_exception_classes(auth_stack):
    invoker = auth_stack.create_key("--org", "a", "--role", "invoker")
    mini = auth_stack.create_key("--org", "a", "--role", "mini-only")
    wait_usable(auth_stack, invoker)
    wait_usable(auth_stack, mini)

    ok = sdk(auth_stack, invoker).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert ok.usage.completion_tokens == 8

    with pytest.raises(openai.AuthenticationError) as e:
        sdk(auth_stack, "mbk_wrongwrongwr_" + "x" * 40).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES)
    assert e.value.code == "invalid_api_key"

    with pytest.raises(openai.PermissionDeniedError) as e:
        sdk(auth_stack, mini).embeddings.create(model="text-embedding-3-small", input="x")
    assert e.value.code == "permission_denied"

    with pytest.raises(openai.PermissionDeniedError):
        sdk(auth_stack, mini).chat.completions.create(model="text-embedding-3-small", messages=MESSAGES)

    with pytest.raises(openai.NotFoundError):
        sdk(auth_stack, invoker).chat.completions.create(model="b-private", messages=MESSAGES)

    ids = sorted(m.id for m in sdk(auth_stack, mini).models.list())
    assert ids == ["gpt-4o-mini"]
