"""VLLMBackend against the real embedded engine (one per test session): what only the
in-process engine does, beyond the contract every backend keeps (test_backend_contract.py)."""
from __future__ import annotations

import time

import pytest

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import ContextTooLong
from reasonloom.orchestrator.types import Message

pytestmark = pytest.mark.engine

QUESTION = (Message(role="user", content="Name three colours of the rainbow."),)


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


def test_prompt_longer_than_the_context_fails_before_the_engine(embedded, arun):
    long = (Message(role="user", content="word " * 5000),)
    t0 = time.perf_counter()
    with pytest.raises(ContextTooLong, match="does not fit the context of 4096"):
        arun(embedded.generate(GenerateRequest(messages=long, max_tokens=8)))
    with pytest.raises(ContextTooLong):
        arun(embedded.prompt_logprobs(QUESTION, "word " * 5000))
    assert time.perf_counter() - t0 < 2.0
