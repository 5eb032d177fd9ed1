"""Mixture-of-Agents (Wang et al., arXiv 2406.04692), with staircase streaming
(arXiv 2510.05059) as an option.

Layers of proposers answer the question; each later layer sees the previous layer's answers as
references; one aggregator synthesizes the last layer's answers critically into the final
answer, which streams to the caller token by token.

- `mode: vanilla` (the MoA paper): every layer waits for all of the previous layer's outputs,
  so the first answer token waits for the slowest proposer of the last layer.
- `mode: staircase`: earlier layers as above; the last layer streams, and the aggregator starts
  on its first chunks and is re-prompted as they grow (see `moa_staircase.py`).

Every proposer sample is its own call keyed `layer{l}/proposer{i}/sample{j}`, so both modes
draw the same seeds and (up to engine batching noise) the same proposals: a comparison of the
modes compares only the aggregation.

Example:
    >>> g = Graph()
    >>> g.add("moa", "moa", {"mode": "staircase", "first_chunk_tokens": 16,
    ...                      "layers": [[{"role": "cheap", "max_tokens": 64}] * 3],
    ...                      "aggregator": {"role": "strong", "max_tokens": 64}},
    ...       {"problem": "problem"})
    >>> g.set_output("moa")
    >>> result = await run(g, "Name three uses of copper.", roles)
    >>> result.answer.text, result.ttft_s, result.answer.details["reprompts"]
"""
from __future__ import annotations

import asyncio
from typing import Annotated, Literal, Sequence

from pydantic import Field

from reasonloom.backends.base import GenerateRequest
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.types import (Answer, Candidate, Candidates, FrozenModel, Message,
                                           Problem, Usage)
from reasonloom.strategies.moa_staircase import (AggregationResult, ProposalBoard, Snapshot,
                                                 StaircaseSchedule, staircase_aggregate,
                                                 stream_proposal)
from reasonloom.prompts import DEFAULT_SYSTEM, problem_messages, with_candidates
from reasonloom.verifiers.answers import extract_answer

# Our wording of the aggregate-and-synthesize idea: judge the responses, do not copy them.
# It is the same for every request and goes first, before the request (as the reference code
# puts it in the system message): the engine's prefix cache then serves it to every aggregator
# call of every request, and a re-prompt recomputes only the responses from the first one
# that grew, plus the short cue. It also covers drafts cut off mid-way, which both modes see
# (vanilla's proposals stop at max_tokens, the staircase's partial ones mid-sentence).
AGGREGATE_INSTRUCTION = (
    "Below are a user's request and responses that several assistants wrote to it. Treat the "
    "responses as drafts, not as authorities: some may be wrong, biased or incomplete, and a "
    "draft that stops mid-way is unfinished (use what it says, do not imitate its cut-off "
    "ending). Check each one, keep what is correct and useful, fix or leave out the rest, and "
    "write a single response of your own that is accurate, complete and clearly organised. "
    "Do not mention the drafts.")
AGGREGATE_CUE = "Now write your response to the request."   # last: recomputed by every call
REQUEST_TITLE = "Request"
REFINE_INSTRUCTION = (
    "Above are responses that other assistants wrote to this request. Use them as references: "
    "check them critically, then write your own best response to the request.")
RESPONSE_LABEL = "Response"


class ProposerSpec(FrozenModel):
    """One proposer agent: a role with its own sampling settings (reference code: 0.7, 512)."""

    role: str = "strongest"
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    samples: int = Field(1, ge=1)   # answers drawn from this agent, each its own seeded call


class AggregatorSpec(FrozenModel):
    """The aggregator agent (reference code: temperature 0.7, max_tokens 512)."""

    role: str = "strongest"
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)


Layer = Annotated[tuple[ProposerSpec, ...], Field(min_length=1)]


class MoAConfig(StaircaseSchedule):
    """Mixture-of-Agents (arXiv 2406.04692). Defaults follow the reference code: one proposer
    layer ("rounds" = 1, MoA-Lite's depth) of three agents, temperature 0.7, 512 tokens; the
    paper's six open models are a recipe's choice of roles. The staircase fields (arXiv
    2510.05059) are documented on `StaircaseSchedule` and used only in `mode: staircase`."""

    mode: Literal["vanilla", "staircase"] = "vanilla"
    layers: Annotated[tuple[Layer, ...], Field(min_length=1)] = (
        (ProposerSpec(), ProposerSpec(), ProposerSpec()),)
    aggregator: AggregatorSpec = AggregatorSpec()
    system: str | None = DEFAULT_SYSTEM   # keeps answers extractable when MoA feeds a selector


# -- prompts (shared prefix first: system, question, responses in a fixed order) ----------------
def proposer_messages(problem: Problem, references: Sequence[str],
                      system: str | None) -> tuple[Message, ...]:
    if not references:
        return problem_messages(problem, system)
    return with_candidates(problem, references, REFINE_INSTRUCTION, RESPONSE_LABEL, system)


def aggregator_messages(problem: Problem, proposals: Sequence[str], system: str | None
                        ) -> tuple[Message, ...]:
    """Standing instruction, request, responses, cue: the same layout for partial and complete
    responses and in both modes (the modes differ only in when the aggregator is called)."""
    return with_candidates(problem, proposals, AGGREGATE_CUE, RESPONSE_LABEL, system,
                           preamble=AGGREGATE_INSTRUCTION, question_title=REQUEST_TITLE)


# -- proposers ---------------------------------------------------------------------------------
def _jobs(layer: Sequence[ProposerSpec], index: int) -> list[tuple[str, ProposerSpec, dict]]:
    return [(f"layer{index}/proposer{i}/sample{j}", spec,
             {"layer": index, "proposer": i, "sample": j})
            for i, spec in enumerate(layer) for j in range(spec.samples)]


def _request(messages: tuple[Message, ...], spec: ProposerSpec) -> GenerateRequest:
    return GenerateRequest(messages=messages, temperature=spec.temperature, top_p=spec.top_p,
                           max_tokens=spec.max_tokens)


async def propose_layer(problem: Problem, index: int, layer: Sequence[ProposerSpec],
                        references: Sequence[str], cfg: MoAConfig, ctx: RunContext
                        ) -> Candidates:
    """One layer, wait-for-all: every agent answers (with the previous layer as references)."""
    messages = proposer_messages(problem, references, cfg.system)

    async def one(call_key: str, spec: ProposerSpec, details: dict) -> Candidate:
        role = ctx.roles.pick(spec.role)
        gen = await ctx.generate(role, _request(messages, spec), call_key)
        text = gen.texts[0]
        return Candidate(text=text, answer=extract_answer(text), role=role.name,
                         usage=Usage(calls=1, prompt_tokens=gen.prompt_tokens,
                                     completion_tokens=gen.completion_tokens,
                                     cached_prompt_tokens=gen.cached_prompt_tokens or 0),
                         details=details)

    return Candidates(await asyncio.gather(*(one(*job) for job in _jobs(layer, index))))


# -- aggregation ---------------------------------------------------------------------------------
async def aggregate_vanilla(problem: Problem, proposals: Candidates, cfg: MoAConfig,
                            ctx: RunContext) -> AggregationResult:
    """The MoA paper's aggregator: one streamed call that sees every proposal in full."""
    spec = cfg.aggregator
    req = GenerateRequest(messages=aggregator_messages(problem, proposals.texts(), cfg.system),
                          temperature=spec.temperature, top_p=spec.top_p,
                          max_tokens=spec.max_tokens)
    result = AggregationResult(text="")
    async for delta in ctx.stream(ctx.roles.pick(spec.role), req, "aggregate", answer=True):
        result.text += delta.text
    return result


async def aggregate_staircase(problem: Problem, references: Sequence[str], cfg: MoAConfig,
                              ctx: RunContext) -> tuple[AggregationResult, Candidates]:
    """The last layer streams into a board while the aggregator climbs the staircase."""
    index = len(cfg.layers) - 1
    jobs = _jobs(cfg.layers[index], index)
    messages = proposer_messages(problem, references, cfg.system)
    agg_role = ctx.roles.pick(cfg.aggregator.role)
    # Chunks are counted in the aggregator's tokens: they are what its prompt is made of.
    board = ProposalBoard(len(jobs), agg_role.backend.estimate_tokens)
    tasks = [asyncio.ensure_future(stream_proposal(ctx, board, i, ctx.roles.pick(spec.role),
                                                   _request(messages, spec), key, details))
             for i, (key, spec, details) in enumerate(jobs)]

    def messages_for(shown: Snapshot) -> tuple[Message, ...]:
        return aggregator_messages(problem, shown.texts, cfg.system)

    try:
        result = await staircase_aggregate(
            ctx, board, agg_role, cfg, messages_for, cfg.aggregator.max_tokens,
            cfg.aggregator.temperature, cfg.aggregator.top_p)
        proposals = Candidates(await asyncio.gather(*tasks))
    finally:   # a failure anywhere stops the other streams instead of leaking them
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return result, proposals


async def mixture_of_agents(problem: Problem, cfg: MoAConfig, ctx: RunContext
                            ) -> tuple[Answer, Candidates]:
    """The MoA loop: proposer layers, then the aggregator (vanilla or staircase)."""
    references: list[str] = []
    last = len(cfg.layers) - 1
    proposals = Candidates()
    for index, layer in enumerate(cfg.layers):
        if index == last and cfg.mode == "staircase":
            break
        proposals = await propose_layer(problem, index, layer, references, cfg, ctx)
        references = proposals.texts()
    if cfg.mode == "staircase":
        result, proposals = await aggregate_staircase(problem, references, cfg, ctx)
    else:
        ctx.publish("candidates", proposals)
        result = await aggregate_vanilla(problem, proposals, cfg, ctx)
    details = {"mode": cfg.mode, "layers": len(cfg.layers), "proposals": len(proposals),
               "aggregator_calls": max(1, len(result.segments)),
               "reprompts": result.reprompts,
               "final_prompt_saw_full_proposals": (cfg.mode == "vanilla"
                                                   or result.final_prompt_saw_full_proposals)}
    if cfg.mode == "staircase":
        details.update(first_chunk_tokens=cfg.first_chunk_tokens,
                       aggregator_started_s=result.started_s,
                       segments=[s.model_dump() for s in result.segments])
    answer = Answer(text=result.text, answer=extract_answer(result.text),
                    candidates=list(proposals), details=details)
    return answer, proposals


@register_node("moa", MoAConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def moa(inputs: dict, cfg: MoAConfig, ctx: RunContext) -> dict:
    answer, proposals = await mixture_of_agents(inputs["problem"], cfg, ctx)
    ctx.publish_best(answer)
    return {"answer": answer, "candidates": proposals}
