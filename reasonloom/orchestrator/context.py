"""RunContext: what a node sees. Every model call goes through it, so the ledger, budget,
cache, throttles, retries and events come for free; strategies never retry or sleep."""
from __future__ import annotations

import asyncio
import random
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

from reasonloom.backends.base import Delta, Generation, GenerateRequest, Sample, TokenLogprob
from reasonloom.backends.errors import BackendError, StreamCut
from reasonloom.orchestrator.budget import Budget
from reasonloom.orchestrator.cache import CacheMiss, RunStore, TieredStore, cache_key
from reasonloom.orchestrator.events import EventBus
from reasonloom.orchestrator.ledger import CallRecord, Ledger
from reasonloom.orchestrator.pipeline import Outcome, Progress, call_pipeline, paced
from reasonloom.orchestrator.roles import Role, Roles
from reasonloom.orchestrator.seeds import derive_seed
from reasonloom.orchestrator.types import Answer, Message
from reasonloom.orchestrator.watched import StopRule, generate_until

# The run's prompt-shaping switch for prompt helpers that have no ctx (strategies/prompts.py);
# set by scheduler.run for the run's tasks, on outside any run.
SHAPING: ContextVar[bool] = ContextVar("reasonloom_shaping", default=True)


def shaping_enabled() -> bool:
    return SHAPING.get()


@dataclass
class RunState:
    """Shared by every node of one run."""

    run_id: str
    seed: int
    roles: Roles
    ledger: Ledger = field(default_factory=Ledger)
    budget: Budget = field(default_factory=Budget)
    events: EventBus = field(default_factory=EventBus)
    store: RunStore | TieredStore | None = None   # None = cache off
    best: Answer | None = None             # the best answer any strategy has published
    dropped: list[dict[str, Any]] = field(default_factory=list)   # calls a node let fail
    retry_rng: random.Random = field(default_factory=lambda: random.Random(0))
    shaping: bool = True                   # prefix-aware prompt layout and n-sampling


class PartialStream:
    """Partial values a producer publishes on one port, then its final value."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.done = False
        self._changed = asyncio.Event()

    def publish(self, value: Any, final: bool = False) -> None:
        self.values.append(value)
        self.done = self.done or final
        self._changed.set()

    def close(self) -> None:
        self.done = True
        self._changed.set()

    async def __aiter__(self) -> AsyncIterator[Any]:
        seen = 0
        while True:
            while seen < len(self.values):
                seen += 1
                yield self.values[seen - 1]
            if self.done:
                return
            self._changed.clear()
            await self._changed.wait()


class RunContext:
    """A node's view of the run: roles, seeded RNG, model calls, publishing."""

    def __init__(self, state: RunState, node: str, partials: dict[str, PartialStream] | None = None,
                 upstream: dict[str, PartialStream] | None = None):
        self.state = state
        self.node = node
        self.roles = state.roles
        self._rng: random.Random | None = None
        self._partials = partials if partials is not None else {}
        self._upstream = upstream or {}

    @property
    def shaping(self) -> bool:
        """Prefix-aware request shaping (issue 12): on unless the run turned it off."""
        return self.state.shaping

    @property
    def rng(self) -> random.Random:
        """A random source seeded by (run seed, node): the same run draws the same groups."""
        if self._rng is None:
            self._rng = random.Random(derive_seed(self.state.seed, self.node, "rng"))
        return self._rng

    # -- publishing -----------------------------------------------------------------------
    def publish(self, port: str, value: Any) -> None:
        """Publish a partial output that downstream nodes may consume before this node ends."""
        self._partials.setdefault(port, PartialStream()).publish(value)
        if self.state.events.active:
            self.state.events.emit("partial_output", self.node, port=port)

    def partial_inputs(self, port: str) -> PartialStream:
        """The partial values the producer of input `port` publishes (streaming inputs)."""
        return self._upstream[port]

    def publish_best(self, answer: Answer) -> None:
        """The best answer so far: returned inside BudgetExceeded if the run stops early."""
        self.state.best = answer

    def stream_answer(self, text: str) -> None:
        """A token delta of the run's final answer (drives TTFT, chat and the server)."""
        self.state.events.emit("token_delta", self.node, text=text, answer=True)

    def emit(self, kind: str, **data: Any) -> None:
        self.state.events.emit(kind, self.node, **data)

    def seed(self, call_key: str, sample_index: int = 0) -> int:
        return derive_seed(self.state.seed, self.node, call_key, sample_index)

    # -- model calls ----------------------------------------------------------------------
    def _reserve(self, role: Role, prompt_tokens: int, max_out: int, what: str):
        return self.state.budget.reserve(prompt_tokens + max_out,
                                         role.spec.cost(prompt_tokens, max_out), what)

    def _record(self, role: Role, kind: str, key: str, attempt: int, t0: float,
                **fields: Any) -> CallRecord:
        rec = CallRecord(self.node, role.name, role.model_id, kind, key, attempt,
                         latency_s=time.monotonic() - t0, **fields)
        state = self.state
        state.ledger.record(rec)
        if state.events.active:
            state.events.emit("call_finished", self.node, role=role.name, call_kind=kind,
                                   ok=rec.ok, prompt_tokens=rec.prompt_tokens,
                                   cached_prompt_tokens=rec.cached_prompt_tokens,
                                   completion_tokens=rec.completion_tokens,
                                   cost_usd=rec.cost_usd, cache_hit=rec.cache_hit,
                                   served_by=rec.served_by)
        return rec

    def _record_hit(self, role: Role, kind: str, key: str, prompt_tokens: int,
                    completion_tokens: int, seed: int | None, n: int = 1) -> None:
        """A call answered from the cache: recorded with what it would have cost (a pool of
        samples shared by several strategies is never free in their cost figures)."""
        self._record(role, kind, key, 1, time.monotonic(), cache_hit=True, seed=seed, n=n,
                     replayed_prompt_tokens=prompt_tokens,
                     replayed_completion_tokens=completion_tokens,
                     replayed_cost_usd=role.spec.cost(prompt_tokens, completion_tokens))

    async def _wait_retry(self, role: Role, attempt: int, exc: BackendError) -> None:
        retry_after = getattr(exc, "retry_after", None)
        await asyncio.sleep(role.spec.retry.delay(attempt, retry_after, self.state.retry_rng))

    def _prompt_estimate(self, role: Role, req: GenerateRequest) -> int:
        text = "".join([m.content for m in req.messages]) + (req.assistant_prefix or "")
        return role.backend.estimate_tokens(text) + 8 * len(req.messages)

    async def generate(self, role: Role | str, req: GenerateRequest, call_key: str,
                       ) -> Generation:
        """One logical call (n samples): cached, budgeted, throttled, retried, recorded."""
        role = self.roles.pick(role) if isinstance(role, str) else role
        if req.seed is None:
            req = req.with_seed(self.seed(call_key))
        store = self.state.store
        keys: list[str] = []
        if store is not None:
            body = {"kind": "generate", **req.model_dump(mode="json")}
            keys = [cache_key(role.model_id, role.backend.config_hash(), body, i, req.seed)
                    for i in range(req.n)]
            hits = [store.get(k) for k in keys]
            if all(h is not None for h in hits):
                samples = [Sample.model_validate(h["sample"]) for h in hits]
                self._record_hit(role, "generate", call_key, hits[0]["prompt_tokens"],
                                 sum(s.completion_tokens for s in samples), req.seed, req.n)
                return Generation(samples=samples, prompt_tokens=hits[0]["prompt_tokens"],
                                  model=role.model_id, served_by="cache")
            self._check_replay(call_key)

        async def attempt(progress: Progress) -> tuple[Generation, Outcome]:
            gen = await role.backend.generate(req)
            return gen, Outcome(gen.prompt_tokens, gen.completion_tokens,
                                gen.cached_prompt_tokens or 0, gen.served_by)

        gen = await call_pipeline(self, role, "generate", call_key, attempt,
                                  prompt_estimate=self._prompt_estimate(role, req),
                                  max_out=req.max_tokens * req.n,
                                  record={"seed": req.seed, "n": req.n})
        if store is not None:
            for key, sample in zip(keys, gen.samples):
                store.put(key, {"sample": sample.model_dump(mode="json"),
                                "prompt_tokens": gen.prompt_tokens, "model": role.model_id})
        return gen

    async def generate_until(self, role: Role | str, req: GenerateRequest, call_key: str,
                             stop: StopRule, stop_key: str = "") -> Sample:
        """One sample that `stop(confidences, text)` may end early; the engine request is
        aborted and the ledger bills what was generated (orchestrator/watched.py)."""
        role = self.roles.pick(role) if isinstance(role, str) else role
        return await generate_until(self, role, req, call_key, stop, stop_key)

    def _check_replay(self, call_key: str) -> None:
        store = self.state.store
        if store is not None and store.mode == "replay":
            raise CacheMiss(f"{self.node}: no cached result for call {call_key!r} in replay")

    def _cached(self, role: Role, body: dict, seed: int | None) -> tuple[str | None, Any]:
        store = self.state.store
        if store is None:
            return None, None
        key = cache_key(role.model_id, role.backend.config_hash(), body, 0, seed)
        return key, store.get(key)

    def _retry_or_raise(self, role: Role, key: str, attempt: int, t0: float,
                        exc: BackendError, seed: int | None, kind: str = "generate",
                        wasted: int = 0) -> bool:
        """Record the failed attempt; True if the policy allows another."""
        self._record(role, kind, key, attempt, t0, ok=False, seed=seed,
                     error=f"{type(exc).__name__}: {exc}", wasted_completion_tokens=wasted,
                     served_by=getattr(exc, "served_by", None))
        return exc.retryable and attempt < role.spec.retry.max_attempts

    async def stream(self, role: Role | str, req: GenerateRequest, call_key: str,
                     answer: bool = False) -> AsyncIterator[Delta]:
        """Stream one sample's deltas. A cut stream is retried from scratch with the same seed;
        text already yielded is not yielded twice (and must match, or the call fails)."""
        role = self.roles.pick(role) if isinstance(role, str) else role
        if req.seed is None:
            req = req.with_seed(self.seed(call_key))
        key, hit = self._cached(role, {"kind": "stream", **req.model_dump(mode="json")},
                                req.seed)
        if hit is not None:
            self._record(role, "stream", call_key, 1, time.monotonic(), cache_hit=True,
                         seed=req.seed)
            if answer:
                self.stream_answer(hit["text"])
            yield Delta(text=hit["text"])
            yield Delta(finish_reason=hit["finish_reason"], prompt_tokens=0, completion_tokens=0)
            return
        self._check_replay(call_key)
        shown = ""   # text the caller has; a retry must reproduce it before adding to it
        # The pipeline runs as a task that hands pieces over as they come; the caller closing
        # the stream (or being cancelled) cancels it, and the ledger bills what was generated.
        pieces: asyncio.Queue[Delta | None] = asyncio.Queue()

        async def attempt(progress: Progress) -> tuple[tuple[str, Delta | None], Outcome]:
            nonlocal shown
            text, final, t0 = "", None, time.monotonic()
            try:
                async for delta in paced(role.backend.stream(req), role.spec.timeout_s):
                    if delta.prompt_tokens is not None:
                        final = delta
                    if not delta.text:
                        continue
                    if progress.ttft_s is None:
                        progress.ttft_s = time.monotonic() - t0
                    text += delta.text
                    if len(text) <= len(shown):
                        continue   # a retry re-producing what the caller already has
                    if not text.startswith(shown):
                        raise StreamCut("retried stream diverged from what was shown",
                                        partial=text)
                    fresh, shown = text[len(shown):], text
                    # A retry's first delta may overlap what was shown: its token count no
                    # longer matches the fresh text, so it is not passed on.
                    pieces.put_nowait(Delta(index=delta.index, text=fresh,
                                            tokens=delta.tokens if fresh == delta.text else None))
            finally:   # what a cut or cancelled attempt generated, for the ledger
                progress.tokens = role.backend.estimate_tokens(text) if text else 0
            return (text, final), Outcome(
                (final.prompt_tokens or 0) if final else 0,
                (final.completion_tokens or 0) if final else 0,
                (final.cached_prompt_tokens or 0) if final else 0,
                final.served_by if final else None, progress.ttft_s)

        async def produce() -> tuple[str, Delta | None]:
            try:
                return await call_pipeline(
                    self, role, "stream", call_key, attempt, whole_call_timeout=False,
                    prompt_estimate=self._prompt_estimate(role, req),
                    max_out=req.max_tokens * req.n, record={"seed": req.seed, "n": req.n})
            finally:
                pieces.put_nowait(None)

        producer = asyncio.get_running_loop().create_task(produce())
        try:
            while (piece := await pieces.get()) is not None:
                if answer:
                    self.stream_answer(piece.text)
                yield piece
            text, final = await producer
        finally:
            if not producer.done():
                producer.cancel()
                try:
                    await producer
                except (asyncio.CancelledError, BackendError):
                    pass
        if key is not None:
            self.state.store.put(key, {"text": text, "model": role.model_id,
                                       "finish_reason": final.finish_reason if final else None})
        yield Delta(index=0, text="", finish_reason=final.finish_reason if final else None,
                    prompt_tokens=(final.prompt_tokens or 0) if final else 0,
                    completion_tokens=(final.completion_tokens or 0) if final else 0)

    async def prompt_logprobs(self, role: Role | str, messages: Sequence[Message], text: str,
                              call_key: str, top_k: int = 0) -> list[TokenLogprob]:
        """Prefill-only scoring: recorded as kind `score` with 0 completion tokens."""
        role = self.roles.pick(role) if isinstance(role, str) else role
        body = {"kind": "score", "messages": [m.model_dump() for m in messages], "text": text,
                "top_k": top_k}
        key, hit = self._cached(role, body, None)
        if hit is not None:
            self._record_hit(role, "score", call_key, hit.get("prompt_tokens", 0), 0, None)
            return [TokenLogprob.model_validate(t) for t in hit["tokens"]]
        self._check_replay(call_key)

        async def attempt(progress: Progress) -> tuple[list[TokenLogprob], Outcome]:
            scored = await role.backend.prompt_logprobs(messages, text, top_k)
            return list(scored), Outcome(
                getattr(scored, "prompt_tokens", None) or len(scored), 0,
                getattr(scored, "cached_prompt_tokens", 0) or 0,
                getattr(scored, "served_by", None))

        estimate = role.backend.estimate_tokens(text + "".join(m.content for m in messages))
        scored = await call_pipeline(self, role, "score", call_key, attempt, max_out=0,
                                     prompt_estimate=estimate)
        if key is not None:
            self.state.store.put(key, {"tokens": [t.model_dump(mode="json") for t in scored],
                                       "prompt_tokens": estimate, "model": role.model_id})
        return scored

    async def tokenize(self, role: Role | str, text: str, call_key: str) -> list[int]:
        """The role's token ids of `text` (no special tokens): recorded as kind `tokenize`
        with 0 model tokens, retried like any call (a served tokenizer is a request)."""
        role = self.roles.pick(role) if isinstance(role, str) else role

        async def attempt(progress: Progress) -> tuple[list[int], Outcome]:
            return list(await role.backend.tokenize(text)), Outcome(0)

        return await call_pipeline(self, role, "tokenize", call_key, attempt, prompt_estimate=0,
                                   max_out=0)

    async def detokenize(self, role: Role | str, pieces: Sequence[Sequence[int]],
                         call_key: str) -> list[str]:
        """Each id sequence back to its text with the role's tokenizer: one recorded call
        (kind `tokenize`) for all the pieces, retried as a whole."""
        role = self.roles.pick(role) if isinstance(role, str) else role

        async def attempt(progress: Progress) -> tuple[list[str], Outcome]:
            texts = await asyncio.gather(*(role.backend.detokenize(ids) for ids in pieces))
            return list(texts), Outcome(0)

        return await call_pipeline(self, role, "tokenize", call_key, attempt, prompt_estimate=0,
                                   max_out=0)
