"""A scripted in-process backend for unit tests of scheduling logic and for benchmarks of the
runtime itself (recipes: `backend: scripted`). It never stands in for a real model in a test
of a feature: every feature also has a real-engine test."""
from __future__ import annotations

import asyncio
import hashlib
import random
from typing import AsyncIterator, Callable, Sequence

from reasonloom.backends.base import (Backend, Capabilities, Delta, Generation, GenerateRequest,
                                      Sample, TokenLogprob)
from reasonloom.backends.errors import BackendError, CapabilityMissing
from reasonloom.types import Message

Responder = Callable[[GenerateRequest, int], str]
# (request, sample index, token position) -> that token's confidence; a token is a word here
ConfidenceScript = Callable[[GenerateRequest, int, int], float]


def hashed_confidence(req: GenerateRequest, index: int, position: int) -> float:
    """Default confidence script: a seeded value in [0.5, 3.0) per token."""
    return random.Random(f"{req.seed}/{index}/{position}").uniform(0.5, 3.0)


def seeded_answer(req: GenerateRequest, index: int) -> str:
    """Default script: a short reasoning text whose final number depends on seed and sample."""
    rng = random.Random(f"{req.seed}/{index}/{req.messages[-1].content}")
    return f"Let me think step by step. The answer is {rng.randint(0, 9)}."


def echo_answer(req: GenerateRequest, index: int) -> str:
    """Repeats the last message inside a seeded answer: every request's text is its own, so a
    load test can tell one stream's chunks from another's."""
    rng = random.Random(f"{req.seed}/{index}/{req.messages[-1].content}")
    return f"You said: {req.messages[-1].content} The answer is {rng.randint(0, 9)}."


# Responders a recipe can name (`options: {responder: echo}`); code may pass any callable.
RESPONDERS: dict[str, Responder] = {"seeded": seeded_answer, "echo": echo_answer}


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, responder: Responder | str | None = None, *, model: str = "scripted",
                 delay_s: float = 0.0, chunk_chars: int = 4, chunk_delay_s: float = 0.0,
                 logprobs: bool = True, supports_n: bool = True, faults: Callable[[GenerateRequest], BackendError | None]
                 | None = None, confidence: ConfidenceScript = hashed_confidence):
        if isinstance(responder, str):
            if responder not in RESPONDERS:
                raise ValueError(f"unknown scripted responder {responder!r} (known: "
                                 f"{', '.join(RESPONDERS)})")
            responder = RESPONDERS[responder]
        self.responder = responder or seeded_answer
        self.model = model
        self.delay_s = delay_s
        self.chunk_chars = chunk_chars
        self.chunk_delay_s = chunk_delay_s
        self._logprobs = logprobs
        self._supports_n = supports_n
        self.faults = faults
        self.confidence = confidence
        self.streamed_tokens = 0   # tokens a stream produced before it ended or was closed
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(n=self._supports_n, logprobs=self._logprobs,
                            prompt_logprobs=self._logprobs,
                            # its ids are word hashes with no way back to text: nothing to cut
                            # a document by (chunked falls back to characters)
                            context_length=1_000_000, tokenize=False)

    def _count(self, text: str) -> int:
        return max(1, len(text.split()))

    async def generate(self, req: GenerateRequest) -> Generation:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.faults is not None and (err := self.faults(req)) is not None:
                raise err
            texts = [self.responder(req, i) for i in range(req.n)]
        finally:
            self.in_flight -= 1
        prompt = sum(self._count(m.content) for m in req.messages)
        return Generation(samples=[Sample(text=t, completion_tokens=self._count(t),
                                          finish_reason="stop",
                                          confidences=self._confidences(req, i, t))
                                   for i, t in enumerate(texts)],
                          prompt_tokens=prompt, model=self.model, served_by="scripted")

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Delta]:
        self.calls += 1
        self.in_flight += 1   # streams count too: a cancelled run must leave none behind
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.faults is not None and (err := self.faults(req)) is not None:
                raise err
            text = self.responder(req, 0)
            if req.confidence_k:   # one word a piece, each with its token confidence
                words = text.split(" ")
                for position, word in enumerate(words):
                    if self.chunk_delay_s:
                        await asyncio.sleep(self.chunk_delay_s)
                    self.streamed_tokens += 1
                    yield Delta(text=word if position == 0 else " " + word, tokens=1,
                                confidences=[self.confidence(req, 0, position)])
            else:
                for start in range(0, len(text), self.chunk_chars):
                    if self.chunk_delay_s:
                        await asyncio.sleep(self.chunk_delay_s)
                    yield Delta(text=text[start:start + self.chunk_chars])
            yield Delta(finish_reason="stop",
                        prompt_tokens=sum(self._count(m.content) for m in req.messages),
                        completion_tokens=self._count(text))
        finally:
            self.in_flight -= 1

    def _confidences(self, req: GenerateRequest, index: int, text: str) -> list[float] | None:
        if not req.confidence_k:
            return None
        return [self.confidence(req, index, p) for p in range(self._count(text))]

    async def prompt_logprobs(self, messages: Sequence[Message], text: str,
                              top_k: int = 0) -> list[TokenLogprob]:
        if not self._logprobs:
            raise CapabilityMissing("scripted backend configured without log-probs")
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        out = []
        for word in text.split():
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
            lp = -(h % 1000) / 250.0
            top = tuple(sorted((lp - j * 0.5 for j in range(top_k)), reverse=True))
            out.append(TokenLogprob(token=word, logprob=lp, top=top))
        return out

    async def tokenize(self, text: str) -> list[int]:
        return [hash(w) & 0xFFFF for w in text.split()]
