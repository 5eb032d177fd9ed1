"""Staircase streaming for Mixture-of-Agents (Wang et al., "Staircase Streaming for
Low-Latency Multi-Agent Inference", arXiv 2510.05059).

Vanilla MoA shows nothing until the slowest proposer has finished. Here the proposers stream
into a `ProposalBoard`; the aggregator starts once every proposer has sent its first chunk,
writes a bounded segment, and is re-prompted with the longer partial proposals plus its own
text so far (continued through `assistant_prefix`, so nothing the caller saw is taken back):

    wait until every proposer has first_chunk_tokens (or has finished)
    loop:
        shown = the board now, if the chunk schedule says enough arrived, else the last prompt
        stream up to segment_tokens (all that is left once `shown` is complete)
        end after a segment whose prompt held the complete proposals

Each call is an ordinary `ctx.stream(..., answer=True)`, so every re-prompt is in the ledger.
Prompts (moa.aggregator_messages) put the standing aggregation instruction first, then the
question, then the responses in a fixed order, then a short cue: the engine's prefix cache
serves the instruction to every call of every request, and a re-prompt the question and every
response up to the first one that grew. The first call, which decides the time to the first
answer token, prefills only the question, the first chunks and the cue.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Literal

from pydantic import BaseModel, Field, field_validator

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import CapabilityMissing
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.roles import Role
from reasonloom.orchestrator.types import Answer, Candidate, FrozenModel, Message, Usage
from reasonloom.verifiers.answers import extract_answer

MIN_FIRST_CHUNK = 16


class StaircaseSchedule(FrozenModel):
    """When the aggregator starts and how often it is re-prompted (paper: fixed-size chunks).

    Default schedule, and why: the aggregator writes segments of 32 tokens (`segment_tokens`)
    and, at each segment boundary, is re-prompted if some proposer grew by >= 16 tokens
    (`chunk_tokens`) or finished. When proposers and aggregator share one engine they decode
    at the same rate, so a 32-token segment brings ~32 new tokens per running proposer: every
    boundary re-prompts with about one fresh chunk, ~(proposal - first chunk) / 32 re-prompts
    per answer (5 for 192-token proposals). A re-prompt costs one prefill of the prompt from
    the first response that grew onwards (the standing instruction, the question and the
    responses before it are prefix-cache hits), which the caller sees as one longer gap
    between answer tokens (benchmarks/staircase.py reports it). Shorter segments pay that gap more often; longer
    ones let the aggregator write longer on stale partial proposals. A boundary with less than
    `chunk_tokens` new text continues the same prompt instead (a redundant re-prompt would
    buy a prefill for almost no new evidence).
    `first_chunk_tokens` (32; never below 16) sets the time to the first answer token: about
    the time the proposers need for that many tokens, plus one aggregator prefill (of the
    question, the first chunks and the cue: the instruction before them is cached).
    """

    first_chunk_tokens: int = 32   # every proposer's first chunk before the aggregator starts
    chunk_tokens: int = Field(16, ge=1)    # new proposal tokens that make a re-prompt due
    segment_tokens: int = Field(32, ge=1)  # aggregator tokens per call while proposals grow

    @field_validator("first_chunk_tokens")
    @classmethod
    def _first_chunk_is_meaningful(cls, value: int) -> int:
        if value < MIN_FIRST_CHUNK:
            raise ValueError(f"first_chunk_tokens must be at least {MIN_FIRST_CHUNK} (got "
                             f"{value}): shorter first chunks give the aggregator nothing to "
                             f"synthesize")
        return value


@dataclass(frozen=True)
class Snapshot:
    """The proposals as they stood at one moment (what one aggregator prompt shows)."""

    texts: tuple[str, ...]
    tokens: tuple[int, ...]
    done: tuple[bool, ...]

    @property
    def complete(self) -> bool:
        return all(self.done)

    def has_first_chunks(self, first_chunk_tokens: int) -> bool:
        return all(d or t >= first_chunk_tokens for d, t in zip(self.done, self.tokens))


def reprompt_due(shown: Snapshot, now: Snapshot, chunk_tokens: int) -> bool:
    """The chunk schedule: a proposer finished, or one grew by at least a chunk."""
    return any(d and not old for d, old in zip(now.done, shown.done)) or any(
        t - old >= chunk_tokens for t, old in zip(now.tokens, shown.tokens))


class ProposalBoard:
    """Partial proposals shared by the proposer tasks (writers) and the aggregator (reader).
    One event loop, so no locks: an asyncio.Event wakes the reader on every change."""

    def __init__(self, n: int, count_tokens: Callable[[str], int]):
        self._texts = [""] * n
        self._tokens = [0] * n
        self._done = [False] * n
        self._exact = [True] * n       # every piece so far came with its token count
        self._count = count_tokens
        self._changed = asyncio.Event()
        self.error: BaseException | None = None

    def extend(self, i: int, text: str, tokens: int | None = None) -> None:
        """Add a streamed piece; `tokens` is the engine's count of what it generated for it.
        Without that count the whole text is re-tokenized, which can count fewer tokens than
        were generated (a word split over two deltas) and so starts the aggregator late."""
        self._texts[i] += text
        if tokens is not None and self._exact[i]:
            self._tokens[i] += tokens
        else:
            self._exact[i] = False
            self._tokens[i] = self._count(self._texts[i])
        self._changed.set()

    def finish(self, i: int) -> None:
        self._done[i] = True
        self._changed.set()

    def fail(self, exc: BaseException) -> None:
        self.error = self.error or exc
        self._changed.set()

    def snapshot(self) -> Snapshot:
        if self.error is not None:
            raise self.error
        return Snapshot(tuple(self._texts), tuple(self._tokens), tuple(self._done))

    async def wait_for(self, ready: Callable[[Snapshot], bool]) -> Snapshot:
        while True:
            snap = self.snapshot()
            if ready(snap):
                return snap
            self._changed.clear()   # no await between the check and the clear: no lost wake-up
            await self._changed.wait()


async def stream_proposal(ctx: RunContext, board: ProposalBoard, i: int, role: Role,
                          req: GenerateRequest, call_key: str, details: dict) -> Candidate:
    """One proposer streaming into the board; its failure wakes (and fails) the aggregator."""
    text, usage = "", Usage(calls=1)
    try:
        async for delta in ctx.stream(role, req, call_key):
            if delta.text:
                text += delta.text
                board.extend(i, delta.text, delta.tokens)
            if delta.prompt_tokens is not None:   # the final delta carries the usage
                usage.prompt_tokens = delta.prompt_tokens
                usage.completion_tokens = delta.completion_tokens or 0
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        board.fail(exc)
        raise
    board.finish(i)
    return Candidate(text=text, answer=extract_answer(text), role=role.name, usage=usage,
                     details=details)


class Segment(BaseModel):
    """One aggregator call: what its prompt showed and what it wrote."""

    call_key: str
    kind: Literal["first", "reprompt", "continue"]
    proposal_tokens: list[int]
    complete: bool                 # the prompt held every proposal in full
    prefix_chars: int              # length of the continued text (= what the caller had seen)
    max_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None


class AggregationResult(BaseModel):
    """The aggregator's text and, in staircase mode, one record per call (vanilla: none)."""

    text: str
    segments: list[Segment] = Field(default_factory=list)
    started_s: float = 0.0         # seconds from the node's start to the aggregator's first call

    @property
    def reprompts(self) -> int:
        return sum(s.kind == "reprompt" for s in self.segments)

    @property
    def final_prompt_saw_full_proposals(self) -> bool:
        return bool(self.segments) and self.segments[-1].complete


async def staircase_aggregate(ctx: RunContext, board: ProposalBoard, role: Role,
                              schedule: StaircaseSchedule,
                              messages_for: Callable[[Snapshot], tuple[Message, ...]],
                              max_tokens: int, temperature: float, top_p: float = 1.0,
                              call_prefix: str = "aggregate") -> AggregationResult:
    """The aggregator's side of the staircase; returns its text and one record per call."""
    if not role.backend.capabilities.continue_final_message:
        raise CapabilityMissing(f"{ctx.node}: staircase mode continues the aggregator's own text "
                                f"(assistant_prefix), which role {role.name!r} cannot do; "
                                f"use mode: vanilla")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    shown = await board.wait_for(lambda s: s.has_first_chunks(schedule.first_chunk_tokens))
    result = AggregationResult(text="", started_s=loop.time() - t0)
    # The last tokens of the budget wait for the complete proposals, so that the final
    # prompt always holds them even when the aggregator outruns the proposers.
    reserve = max(1, min(schedule.segment_tokens, max_tokens // 2))
    used, kind = 0, "first"
    while True:
        remaining = max_tokens - used
        size = remaining if shown.complete else min(schedule.segment_tokens, remaining - reserve)
        if size <= 0:
            shown, kind = await board.wait_for(lambda s: s.complete), "reprompt"
            continue
        segment = Segment(call_key=f"{call_prefix}/{len(result.segments)}", kind=kind,
                          proposal_tokens=list(shown.tokens), complete=shown.complete,
                          prefix_chars=len(result.text), max_tokens=size)
        if ctx.state.events.active:
            ctx.emit("moa_segment", call_key=segment.call_key, segment=segment.kind,
                     proposal_tokens=segment.proposal_tokens, complete=segment.complete)
        req = GenerateRequest(messages=messages_for(shown), temperature=temperature,
                              top_p=top_p, max_tokens=size,
                              assistant_prefix=result.text or None)
        async for delta in ctx.stream(role, req, segment.call_key, answer=True):
            result.text += delta.text
            if delta.prompt_tokens is not None:
                segment.finish_reason = delta.finish_reason
                segment.completion_tokens = delta.completion_tokens or 0
        result.segments.append(segment)
        used += max(segment.completion_tokens, 1)   # never loop on a call that reports 0
        ctx.publish_best(Answer(text=result.text, answer=extract_answer(result.text),
                                details={"partial": not segment.complete}))
        if segment.complete or used >= max_tokens:
            return result
        stopped = segment.finish_reason == "stop" or (
            segment.finish_reason is None and segment.completion_tokens < size)
        if stopped:   # it ended on partial evidence: show it everything before it may end
            shown, kind = await board.wait_for(lambda s: s.complete), "reprompt"
            continue
        now = board.snapshot()
        if reprompt_due(shown, now, schedule.chunk_tokens):
            shown, kind = now, "reprompt"
        else:         # nothing worth a re-prompt: the same prompt, continued (all cached)
            kind = "continue"
