"""VLLMBackend against the real embedded engine (one per test session)."""
from __future__ import annotations

import time

import pytest

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import ContextTooLong
from reasonloom.orchestrator.types import Message

pytestmark = pytest.mark.engine

QUESTION = (Message(role="user", content="Name three colours of the rainbow."),)


def test_n_samples_are_distinct_and_reproducible_for_one_seed(embedded, arun):
    req = GenerateRequest(messages=QUESTION, n=4, temperature=1.0, max_tokens=24, seed=11)
    first = arun(embedded.generate(req))
    again = arun(embedded.generate(req))
    assert len(first.samples) == 4
    assert len(set(first.texts)) > 1
    assert first.texts == again.texts
    other = arun(embedded.generate(req.model_copy(update={"seed": 12})))
    assert other.texts != first.texts


def test_stream_deltas_join_to_the_generated_text(embedded, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=40, temperature=0.0)

    async def collect():
        parts, final = [], None
        async for delta in embedded.stream(req):
            parts.append(delta.text)
            if delta.prompt_tokens is not None:
                final = delta
        return parts, final

    parts, final = arun(collect())
    full = arun(embedded.generate(req))
    assert len([p for p in parts if p]) > 3
    assert "".join(parts) == full.texts[0]
    assert final.completion_tokens == full.completion_tokens
    assert final.prompt_tokens == full.prompt_tokens


def test_usage_equals_the_tokenizers_counts(embedded, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=32, temperature=0.0)
    gen = arun(embedded.generate(req))
    chat = [{"role": m.role, "content": m.content} for m in QUESTION]
    prompt_ids = embedded.tokenizer.apply_chat_template(chat, tokenize=True,
                                                        add_generation_prompt=True)
    if not isinstance(prompt_ids, list):
        prompt_ids = prompt_ids["input_ids"]
    assert gen.prompt_tokens == len(prompt_ids)
    text_ids = embedded.tokenizer.encode(gen.texts[0], add_special_tokens=False)
    # the EOS token that ended the sample is counted by the engine but not part of the text
    eos = 1 if gen.samples[0].finish_reason == "stop" else 0
    assert gen.completion_tokens == len(text_ids) + eos


def test_prompt_logprobs_equal_the_logprobs_of_greedy_generation(embedded, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=16, temperature=0.0, logprobs=0)
    gen = arun(embedded.generate(req))
    sample = gen.samples[0]
    scored = arun(embedded.prompt_logprobs(QUESTION, sample.text, top_k=0))
    n = min(len(scored), len(sample.logprobs))
    assert n >= 8
    for got, want in zip(scored[:n], sample.logprobs[:n]):
        assert got.token == want.token
        assert got.logprob == pytest.approx(want.logprob, abs=1e-3)


def test_prompt_logprobs_top_k_are_sorted_and_include_the_best(embedded, arun):
    scored = arun(embedded.prompt_logprobs(QUESTION, "Red, green and blue.", top_k=20))
    for tok in scored:
        assert len(tok.top) == 20
        assert list(tok.top) == sorted(tok.top, reverse=True)
        assert tok.top[0] >= tok.logprob - 1e-6


def test_assistant_prefix_continues_a_partial_answer(embedded, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=40, temperature=0.0)
    full = arun(embedded.generate(req)).texts[0]
    words = full.split(" ")
    prefix = " ".join(words[: max(2, len(words) // 2)])
    cont = arun(embedded.generate(req.model_copy(update={"assistant_prefix": prefix})))
    assert (prefix + cont.texts[0]).strip()[:60] == full.strip()[:60]


def test_prompt_longer_than_the_context_fails_before_the_engine(embedded, arun):
    long = (Message(role="user", content="word " * 5000),)
    t0 = time.perf_counter()
    with pytest.raises(ContextTooLong, match="does not fit the context of 4096"):
        arun(embedded.generate(GenerateRequest(messages=long, max_tokens=8)))
    with pytest.raises(ContextTooLong):
        arun(embedded.prompt_logprobs(QUESTION, "word " * 5000))
    assert time.perf_counter() - t0 < 2.0
