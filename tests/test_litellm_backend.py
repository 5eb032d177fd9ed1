"""LiteLLMBackend (provider `hosted_vllm`) against the session's real vLLM server: what only it
does, beyond the contract every backend keeps (test_backend_contract.py), and its one-line
errors for what a user can get wrong."""
from __future__ import annotations

import pytest

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import MissingApiKey
from reasonloom.backends.factory import BackendSpec, build_backend
from reasonloom.backends.litellm import LiteLLMBackend
from reasonloom.backends.openai import OpenAIBackend
from reasonloom.backends.vllm.embedded import MODEL_NAME
from reasonloom.orchestrator.types import Message

engine = pytest.mark.engine
QUESTION = (Message(role="user", content="Name three colours of the rainbow."),)
HOSTED = f"hosted_vllm/{MODEL_NAME}"


@pytest.fixture(scope="module")
def backend(vllm_server):
    return build_backend(BackendSpec(backend="litellm", model=HOSTED, base_url=vllm_server))


@engine
def test_seeded_samples_and_logprobs_match_the_openai_backend(backend, vllm_server, arun):
    assert isinstance(backend, LiteLLMBackend)
    req = GenerateRequest(messages=QUESTION, n=3, temperature=1.0, max_tokens=12, seed=21,
                          logprobs=2)
    via_litellm = arun(backend.generate(req))
    via_openai = arun(OpenAIBackend(MODEL_NAME, base_url=vllm_server).generate(req))
    assert len(set(via_litellm.texts)) > 1
    assert via_litellm.texts == via_openai.texts
    assert (via_litellm.prompt_tokens, via_litellm.completion_tokens) == (
        via_openai.prompt_tokens, via_openai.completion_tokens)
    for sample in via_litellm.samples:
        assert "".join(t.token for t in sample.logprobs) == sample.text
        assert all(len(t.top) == 2 and t.top[0] >= t.top[1] for t in sample.logprobs)


def test_missing_api_key_names_the_providers_environment_variable(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingApiKey, match="environment variable ANTHROPIC_API_KEY is not set"):
        LiteLLMBackend("anthropic/claude-3-5-sonnet-20241022")


def test_provider_capabilities_come_from_litellm():
    monkey_key = "sk-test-not-used"
    claude = LiteLLMBackend("anthropic/claude-3-5-sonnet-20241022", api_key=monkey_key)
    caps = claude.capabilities
    assert not caps.n and not caps.prompt_logprobs and not caps.tokenize
    with pytest.raises(ValueError, match="no provider for model 'made-up-model'"):
        LiteLLMBackend("made-up-model")
