"""The Backend contract, checked once for every backend that serves the embedded model: the
in-process vLLM engine, vLLM's OpenAI-compatible server through OpenAIBackend, and the same
server through litellm (provider `hosted_vllm`). What only one backend does stays in its own
test_<backend>_backend.py."""
from __future__ import annotations

import asyncio
import socket

import pytest

from reasonloom.backends.base import Backend, GenerateRequest
from reasonloom.backends.errors import (BadRequest, ContextTooLong, RateLimited, StreamCut,
                                        Timeout, Unreachable)
from reasonloom.backends.litellm import LiteLLMBackend
from reasonloom.backends.openai import OpenAIBackend
from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model
from reasonloom.orchestrator.types import Message
from tests.support.fault_proxy import FaultProxy, free_port

QUESTION = (Message(role="user", content="Name three colours of the rainbow."),)
SCORED_TEXT = "Red, orange and yellow are three colours of the rainbow."
# The two backends that talk to a server: how each is built, what it calls the embedded
# model, and how its "cannot reach" error names what it tried.
SERVED = {
    "openai": (OpenAIBackend, "", "POST"),
    "litellm": (LiteLLMBackend, "hosted_vllm/", "litellm.acompletion"),
}
# The prompt-over-the-window error: the in-process engine checks before it queues the request
# (its own words); a server answers with vLLM's.
TOO_LONG = {"vllm": "does not fit the context of 4096", "openai": "maximum context length is 4096",
            "litellm": "maximum context length is 4096"}


def served(kind: str, base_url: str, model: str = MODEL_NAME, **options) -> Backend:
    make, prefix, _ = SERVED[kind]
    return make(prefix + model, base_url=base_url, **options)


@pytest.fixture(params=["vllm", "openai", "litellm"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def backend(kind, request) -> Backend:
    """The backend under test; the vLLM server starts only for the kinds that need it."""
    if kind == "vllm":
        return request.getfixturevalue("embedded")
    return served(kind, request.getfixturevalue("vllm_server"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_embedded_model())


async def collect(stream):
    deltas = [d async for d in stream]
    return deltas, next(d for d in deltas if d.prompt_tokens is not None)


@pytest.mark.engine
def test_n_samples_are_distinct_and_reproducible_for_one_seed(backend, arun):
    req = GenerateRequest(messages=QUESTION, n=4, temperature=1.0, max_tokens=16, seed=11)
    first = arun(backend.generate(req))
    assert len(first.samples) == 4 and len(set(first.texts)) > 1
    assert arun(backend.generate(req)).texts == first.texts
    assert arun(backend.generate(req.model_copy(update={"seed": 12}))).texts != first.texts
    assert sum(s.completion_tokens for s in first.samples) == first.completion_tokens > 0


@pytest.mark.engine
def test_logprobs_cover_every_generated_token_with_sorted_top_k(backend, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=16, temperature=0.8, seed=3, logprobs=3)
    sample = arun(backend.generate(req)).samples[0]
    assert "".join(t.token for t in sample.logprobs) == sample.text
    for tok in sample.logprobs:
        assert len(tok.top) == 3 and list(tok.top) == sorted(tok.top, reverse=True)
        assert tok.top[0] >= tok.logprob - 1e-6 and tok.logprob <= 0


@pytest.mark.engine
def test_stream_deltas_join_to_the_generated_text_with_the_same_usage(backend, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=24, temperature=0.0)
    deltas, final = arun(collect(backend.stream(req)))
    full = arun(backend.generate(req))
    assert len([d for d in deltas if d.text]) > 3
    assert "".join(d.text for d in deltas) == full.texts[0]
    assert (final.prompt_tokens, final.completion_tokens) == (full.prompt_tokens,
                                                              full.completion_tokens)


@pytest.mark.engine
def test_usage_counts_match_the_models_tokenizer(backend, tokenizer, arun):
    gen = arun(backend.generate(GenerateRequest(messages=QUESTION, max_tokens=16)))
    prompt_ids = tokenizer.apply_chat_template([m.model_dump() for m in QUESTION],
                                               tokenize=True, add_generation_prompt=True)
    if not isinstance(prompt_ids, list):
        prompt_ids = prompt_ids["input_ids"]
    assert gen.prompt_tokens == len(prompt_ids)
    eos = 1 if gen.samples[0].finish_reason == "stop" else 0   # counted, not in the text
    assert gen.completion_tokens == len(tokenizer.encode(gen.texts[0],
                                                         add_special_tokens=False)) + eos


@pytest.mark.engine
def test_assistant_prefix_continues_a_partial_answer(backend, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=24, temperature=0.0)
    full = arun(backend.generate(req)).texts[0]
    words = full.split(" ")
    prefix = " ".join(words[: max(2, len(words) // 2)])
    cont = arun(backend.generate(req.model_copy(update={"assistant_prefix": prefix})))
    assert (prefix + cont.texts[0]).strip()[:60] == full.strip()[:60]


@pytest.mark.engine
def test_prompt_over_the_context_window_is_context_too_long(backend, kind, arun):
    long = (Message(role="user", content="word " * 5000),)
    with pytest.raises(ContextTooLong, match=TOO_LONG[kind]):
        arun(backend.generate(GenerateRequest(messages=long, max_tokens=4)))


@pytest.mark.engine
@pytest.mark.parametrize("kind", list(SERVED))
def test_prompt_logprobs_equal_the_in_process_engines(backend, embedded, arun):
    greedy = arun(backend.generate(GenerateRequest(messages=QUESTION, max_tokens=16))).texts[0]
    for text in (SCORED_TEXT, greedy):
        scored = arun(backend.prompt_logprobs(QUESTION, text, top_k=5))
        local = arun(embedded.prompt_logprobs(QUESTION, text, top_k=5))
        assert len(scored) == len(local) >= 8
        assert scored.prompt_tokens == local.prompt_tokens
        for got, want in zip(scored, local):
            assert got.token == want.token
            assert got.logprob == pytest.approx(want.logprob, abs=1e-3)
            assert got.top == pytest.approx(want.top, abs=1e-3)


@pytest.mark.engine
@pytest.mark.parametrize("kind", list(SERVED))
def test_unknown_model_is_a_one_line_bad_request(kind, vllm_server, arun):
    name = SERVED[kind][1] + "no-such-model"
    with pytest.raises(BadRequest, match=rf"unknown model '{name}' at http://127") as err:
        arun(served(kind, vllm_server, "no-such-model").generate(
            GenerateRequest(messages=QUESTION, max_tokens=4)))
    assert "\n" not in str(err.value) and not err.value.retryable


@pytest.mark.engine
@pytest.mark.parametrize("kind", list(SERVED))
def test_rate_limits_and_cut_streams_map_to_typed_retryable_errors(kind, vllm_server, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=20, temperature=0.0)
    with FaultProxy(vllm_server.removesuffix("/v1"), retry_after=0.75) as proxy:
        faulty = served(kind, proxy.url + "/v1")
        proxy.faults = {"429": 1.0}
        with pytest.raises(RateLimited) as limited:
            arun(faulty.generate(req))
        assert limited.value.retry_after == pytest.approx(0.75)
        proxy.faults = {"cut": 1.0}
        with pytest.raises(StreamCut) as cut:
            arun(collect(faulty.stream(req)))
        proxy.faults = {}
        full = arun(faulty.generate(req)).texts[0]
    assert full.startswith(cut.value.partial) and len(cut.value.partial) < len(full)
    assert all(e.retryable for e in (limited.value, cut.value))


@pytest.mark.parametrize("kind", list(SERVED))
def test_unreachable_server_names_the_url_and_what_was_tried(kind):
    url = f"http://127.0.0.1:{free_port()}/v1"   # nothing listens there
    with pytest.raises(Unreachable) as err:
        asyncio.run(served(kind, url).generate(GenerateRequest(messages=QUESTION, max_tokens=4)))
    assert f"cannot reach {url}" in str(err.value) and SERVED[kind][2] in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", list(SERVED))
def test_a_server_that_never_answers_times_out(kind):
    with socket.socket() as silent:   # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(Timeout, match="no answer"):
            asyncio.run(served(kind, url, timeout_s=0.3).generate(
                GenerateRequest(messages=QUESTION, max_tokens=4)))
