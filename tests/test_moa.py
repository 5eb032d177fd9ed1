"""Mixture-of-Agents and staircase streaming: the logic, on a scripted backend whose streams
are paced word by word (one word = one token). The real engine is in test_moa_engine.py."""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import pytest
from pydantic import ValidationError

from reasonloom.backends.base import Capabilities, Delta, Generation, GenerateRequest, Sample
from reasonloom.backends.errors import BadRequest
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.result import RunFailed
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.strategies.moa import AGGREGATE_INSTRUCTION, MoAConfig, RESPONSE_LABEL
from reasonloom.strategies.moa_staircase import ProposalBoard, Snapshot, reprompt_due

MARK = AGGREGATE_INSTRUCTION[:40]


def is_aggregator(req: GenerateRequest) -> bool:
    return MARK in req.messages[-1].content


class PacedBackend(ScriptedBackend):
    """Proposers write `proposal_words` words, one per `word_delay_s`; the aggregator writes
    `answer_words` words in total over its calls, honouring max_tokens (finish "length") and
    continuing from its assistant_prefix. Every request is recorded with what had been
    streamed so far."""

    def __init__(self, proposal_words: int = 120, answer_words: int = 60,
                 word_delay_s: float = 0.002, stall_after: int | None = None,
                 aggregator_stops_at: int | None = None, fail_proposer: int | None = None,
                 continue_ok: bool = True):
        super().__init__()
        self.proposal_words = proposal_words
        self.answer_words = answer_words
        self.word_delay_s = word_delay_s
        self.stall_after = stall_after            # proposers pause here for a while
        self.aggregator_stops_at = aggregator_stops_at   # an early EOS, once
        self.fail_proposer = fail_proposer
        self.continue_ok = continue_ok
        self.requests: list[tuple[float, GenerateRequest, dict[int, int], str]] = []
        self.generated: list[GenerateRequest] = []
        self.progress: dict[int, int] = {}        # proposer seed -> words streamed
        self.finished: dict[int, float] = {}      # proposer seed -> time it finished
        self.caller_view: list[str] = []        # answer deltas the caller has received

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(context_length=1_000_000, continue_final_message=self.continue_ok)

    def estimate_tokens(self, text: str) -> int:
        return len(text.split())

    def proposal(self, seed: int) -> list[str]:
        return [f"p{seed % 1000}w{k}" for k in range(self.proposal_words)]

    async def generate(self, req: GenerateRequest) -> Generation:
        self.generated.append(req)
        self.requests.append((time.monotonic(), req, dict(self.progress),
                              "".join(self.caller_view)))
        words = self.proposal(req.seed or 0)[:req.max_tokens]
        await asyncio.sleep(self.word_delay_s * len(words))
        self.finished[req.seed or 0] = time.monotonic()
        return Generation(samples=[Sample(text=" ".join(words), completion_tokens=len(words),
                                          finish_reason="stop")], prompt_tokens=10)

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Delta]:
        self.requests.append((time.monotonic(), req, dict(self.progress),
                              "".join(self.caller_view)))
        if is_aggregator(req):
            async for delta in self._aggregate(req):
                yield delta
            return
        seed = req.seed or 0
        if self.fail_proposer is not None and len(self.progress) == self.fail_proposer:
            await asyncio.sleep(self.word_delay_s * 5)
            raise BadRequest("scripted proposer failure")
        self.progress[seed] = 0
        words = self.proposal(seed)[:req.max_tokens]
        for k, word in enumerate(words):
            await asyncio.sleep(self.word_delay_s * (40 if k == self.stall_after else 1))
            self.progress[seed] = k + 1
            yield Delta(text=("" if k == 0 else " ") + word)
        self.finished[seed] = time.monotonic()
        yield Delta(finish_reason="stop", prompt_tokens=10, completion_tokens=len(words))

    async def _aggregate(self, req: GenerateRequest) -> AsyncIterator[Delta]:
        done = len((req.assistant_prefix or "").split())
        goal = self.answer_words
        if self.aggregator_stops_at is not None and done < self.aggregator_stops_at:
            goal = self.aggregator_stops_at
        n = min(req.max_tokens, goal - done)
        for k in range(n):
            await asyncio.sleep(self.word_delay_s)
            yield Delta(text=("" if done + k == 0 else " ") + f"a{done + k}")
        if goal == self.aggregator_stops_at and done + n >= goal:
            self.aggregator_stops_at = None        # an early stop happens once
        finish = "length" if n == req.max_tokens and done + n < goal else "stop"
        yield Delta(finish_reason=finish, prompt_tokens=20, completion_tokens=n)


def roles_for(backend) -> Roles:
    return Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=1.0,
                                          price_out_per_m=2.0), backend),
                  "cheap": Role(RoleSpec(name="cheap"), backend)}, order=["strong", "cheap"])


def moa_graph(mode: str = "staircase", proposers: int = 3, layers: int = 1,
              proposal_tokens: int = 500, answer_tokens: int = 200, **extra) -> Graph:
    layer = [{"role": "cheap", "max_tokens": proposal_tokens, "temperature": 0.5 + i / 10}
             for i in range(proposers)]
    g = Graph()
    g.add("moa", "moa", {"mode": mode, "layers": [layer] * layers, "system": None,
                         "aggregator": {"role": "strong", "max_tokens": answer_tokens}, **extra},
          {"problem": "problem"})
    g.set_output("moa")
    return g


def run_collecting(graph: Graph, backend: PacedBackend) -> tuple:
    events = []

    def collect(event) -> None:
        events.append(event)
        if event.kind == "token_delta" and event.data.get("answer"):
            backend.caller_view.append(event.data["text"])

    result = asyncio.run(run(graph, "Describe copper.", roles_for(backend), seed=3,
                             subscribers=[collect]))
    return result, events


def answer_deltas(events) -> list[str]:
    return [e.data["text"] for e in events if e.kind == "token_delta" and e.data.get("answer")]


def aggregator_requests(backend: PacedBackend):
    return [entry for entry in backend.requests if is_aggregator(entry[1])]


# -- configuration ------------------------------------------------------------------------------
def test_first_chunk_below_16_tokens_is_rejected_with_the_reason():
    with pytest.raises(ValidationError, match="at least 16"):
        MoAConfig(first_chunk_tokens=15)
    assert MoAConfig(first_chunk_tokens=16).first_chunk_tokens == 16
    assert MoAConfig().first_chunk_tokens == 32


def test_empty_layers_are_rejected():
    with pytest.raises(ValidationError):
        MoAConfig(layers=())
    with pytest.raises(ValidationError):
        MoAConfig(layers=((),))


def test_reprompt_is_due_after_a_chunk_of_growth_or_a_finished_proposer():
    old = Snapshot(("a", "b"), (20, 20), (False, False))
    assert not reprompt_due(old, Snapshot(("a", "b"), (35, 30), (False, False)), 16)
    assert reprompt_due(old, Snapshot(("a", "b"), (36, 20), (False, False)), 16)
    assert reprompt_due(old, Snapshot(("a", "b"), (20, 21), (False, True)), 16)


def test_the_board_counts_the_engines_tokens_and_recounts_text_when_a_piece_lacks_them():
    board = ProposalBoard(2, lambda text: len(text.split()))
    board.extend(0, "unfini", tokens=2)        # half a word: re-tokenizing would count 1
    board.extend(0, "shed word", tokens=2)
    board.extend(1, "one two", tokens=2)
    board.extend(1, " three")                   # a backend without counts: recount the text
    board.extend(1, " four", tokens=1)
    assert board.snapshot().tokens == (4, 4)


def test_aggregator_prompts_share_the_standing_instruction_across_requests_and_calls():
    """The prefix cache serves what prompts have in common, from their start: the standing
    instruction (every request), then the request and the responses before the first that
    grew (the re-prompts of one request). Only the short cue follows the responses."""
    from reasonloom.orchestrator.types import Problem
    from reasonloom.strategies.moa import AGGREGATE_CUE, aggregator_messages

    def body(question: str, proposals: list[str]) -> str:
        return aggregator_messages(Problem.from_text(question), proposals, None)[-1].content

    one, two = body("Name a metal.", ["Copper", "Iron"]), body("Why is the sky blue?", ["Air"])
    assert one.startswith(AGGREGATE_INSTRUCTION) and two.startswith(AGGREGATE_INSTRUCTION)
    first, later = body("Name a metal.", ["Cop", "Ir"]), body("Name a metal.", ["Copper", "Ir"])
    before_growth = first[:first.index("Cop")]   # instruction, request, response header
    assert later.startswith(before_growth + "Cop")
    assert first.index("Name a metal.") < first.index(f"{RESPONSE_LABEL} 1")
    assert first.endswith(AGGREGATE_CUE) and one.endswith(AGGREGATE_CUE)


# -- vanilla ------------------------------------------------------------------------------------
def test_vanilla_aggregator_starts_after_all_proposers_and_sees_them_complete():
    backend = PacedBackend(proposal_words=40)
    result, events = run_collecting(moa_graph("vanilla", proposal_tokens=40), backend)
    aggs = aggregator_requests(backend)
    assert len(aggs) == 1
    t_agg, req, _, _ = aggs[0]
    assert all(t_done <= t_agg for t_done in backend.finished.values())
    content = req.messages[-1].content
    for cand in result.answer.candidates:
        assert cand.text in content
    assert content.count(f"### {RESPONSE_LABEL} ") == 3
    assert "".join(answer_deltas(events)) == result.answer.text
    assert result.answer.details["final_prompt_saw_full_proposals"] is True


def test_later_layers_see_the_previous_layers_answers_as_references():
    backend = PacedBackend(proposal_words=12)
    result, _ = run_collecting(moa_graph("vanilla", proposers=2, layers=2, proposal_tokens=12),
                               backend)
    first = [r for r in backend.generated if "### Response" not in r.messages[-1].content]
    second = [r for r in backend.generated if "### Response" in r.messages[-1].content]
    assert len(first) == 2 and len(second) == 2
    for req in second:
        for earlier in first:
            assert " ".join(backend.proposal(earlier.seed)) in req.messages[-1].content
    assert [c.details["layer"] for c in result.answer.candidates] == [1, 1]
    assert result.usage.total.calls == 2 + 2 + 1


def test_several_samples_per_role_are_separate_seeded_calls():
    backend = ScriptedBackend(lambda req, i: f"seed {req.seed}")
    g = Graph()
    g.add("moa", "moa", {"layers": [[{"role": "cheap", "samples": 3}, {"role": "strong"}]]},
          {"problem": "problem"})
    g.set_output("moa")
    result = asyncio.run(run(g, "q", roles_for(backend)))
    cands = result.outputs["moa"]["candidates"]
    assert [c.role for c in cands] == ["cheap"] * 3 + ["strong"]
    assert len({c.text for c in cands}) == 4   # four different seeds


# -- staircase ----------------------------------------------------------------------------------
def test_staircase_aggregator_starts_once_every_proposer_sent_its_first_chunk():
    backend = PacedBackend()
    result, events = run_collecting(moa_graph(first_chunk_tokens=16), backend)
    t_first, _, progress, _ = aggregator_requests(backend)[0]
    assert len(progress) == 3 and all(words >= 16 for words in progress.values())
    assert t_first < min(backend.finished.values())   # long before any proposer is done
    assert result.answer.details["reprompts"] >= 2


def test_staircase_answer_deltas_join_to_the_answer_and_are_never_taken_back():
    backend = PacedBackend()
    result, events = run_collecting(moa_graph(), backend)
    assert "".join(answer_deltas(events)) == result.answer.text
    assert result.answer.text.split() == [f"a{k}" for k in range(60)]
    aggs = aggregator_requests(backend)
    assert len(aggs) >= 3
    # every aggregator call continued exactly the text the caller had seen when it was sent
    for _, req, _, seen in aggs:
        assert (req.assistant_prefix or "") == seen
    assert aggs[0][1].assistant_prefix is None


def test_each_reprompt_shows_longer_proposals_and_the_last_shows_them_complete():
    backend = PacedBackend()
    result, _ = run_collecting(moa_graph(), backend)
    aggs = aggregator_requests(backend)
    segments = result.answer.details["segments"]
    assert len(aggs) == len(segments) >= 3
    totals = [sum(s["proposal_tokens"]) for s in segments]
    assert totals == sorted(totals) and totals[-1] > totals[0]
    last = aggs[-1][1].messages[-1].content
    for cand in result.answer.candidates:
        assert len(cand.text.split()) == 120
        assert cand.text in last
    assert segments[-1]["complete"] and result.answer.details["final_prompt_saw_full_proposals"]
    assert all(not s["complete"] for s in segments[:-1]) or segments[0]["complete"]


def test_a_boundary_with_nothing_new_continues_the_same_prompt_instead_of_reprompting():
    # the proposers stall after 20 words: the aggregator's next boundaries see nothing new
    backend = PacedBackend(stall_after=20, word_delay_s=0.002)
    result, _ = run_collecting(moa_graph(first_chunk_tokens=16, segment_tokens=4), backend)
    aggs = aggregator_requests(backend)
    kinds = [s["kind"] for s in result.answer.details["segments"]]
    assert "continue" in kinds
    for (_, req, _, _), kind, prev in zip(aggs[1:], kinds[1:], aggs):
        if kind == "continue":   # same prompt, longer assistant prefix
            assert req.messages == prev[1].messages
            assert len(req.assistant_prefix) > len(prev[1].assistant_prefix or "")
        else:
            assert req.messages != prev[1].messages
    assert result.answer.details["reprompts"] == kinds.count("reprompt")


def test_an_aggregator_that_stops_early_is_shown_the_complete_proposals_before_it_may_end():
    backend = PacedBackend(aggregator_stops_at=10)
    result, _ = run_collecting(moa_graph(), backend)
    segments = result.answer.details["segments"]
    assert segments[0]["finish_reason"] == "stop" and not segments[0]["complete"]
    assert segments[-1]["complete"]
    assert len(result.answer.text.split()) == 60   # it went on once it saw everything


def test_the_reserve_holds_back_the_last_tokens_until_the_proposals_are_complete():
    # the aggregator's whole budget is smaller than the proposals: it must still end on them
    backend = PacedBackend(answer_words=500)
    result, _ = run_collecting(moa_graph(answer_tokens=64, segment_tokens=16), backend)
    segments = result.answer.details["segments"]
    assert sum(s["completion_tokens"] for s in segments) == 64
    assert segments[-1]["complete"] and not any(s["complete"] for s in segments[:-1])


def test_ledger_holds_every_proposer_call_and_every_aggregator_call():
    backend = PacedBackend()
    result, events = run_collecting(moa_graph(), backend)
    calls = [e for e in events if e.kind == "call_finished"]
    n_agg = result.answer.details["aggregator_calls"]
    assert result.usage.total.calls == len(calls) == 3 + n_agg == len(backend.requests)
    assert result.usage.by_model["strong"].calls == n_agg
    assert result.usage.by_model["cheap"].calls == 3
    assert result.usage.total.completion_tokens == sum(e.data["completion_tokens"] for e in calls)
    assert result.usage.total.completion_tokens == 3 * 120 + 60


def test_both_modes_draw_the_same_proposals_from_the_same_seeds():
    stair, _ = run_collecting(moa_graph(first_chunk_tokens=16), PacedBackend())
    vanilla, _ = run_collecting(moa_graph("vanilla"), PacedBackend())
    assert len({c.text for c in stair.answer.candidates}) == 3
    assert [c.text for c in stair.answer.candidates] == [c.text for c in vanilla.answer.candidates]


def test_a_failing_proposer_fails_the_node_and_stops_the_other_streams():
    backend = PacedBackend(fail_proposer=1)
    with pytest.raises(RunFailed, match="scripted proposer failure"):
        asyncio.run(run(moa_graph(), "q", roles_for(backend)))
    assert not backend.finished   # the healthy proposers were cancelled, not left running


def test_staircase_on_a_backend_that_cannot_continue_text_says_so():
    with pytest.raises(RunFailed, match="assistant_prefix.*vanilla"):
        asyncio.run(run(moa_graph(), "q", roles_for(PacedBackend(continue_ok=False))))


def test_docstring_example_graph_runs_and_reports_its_reprompts():
    g = Graph()
    g.add("moa", "moa", {"mode": "staircase", "first_chunk_tokens": 16,
                         "layers": [[{"role": "cheap", "max_tokens": 64}] * 3],
                         "aggregator": {"role": "strong", "max_tokens": 64}},
          {"problem": "problem"})
    g.set_output("moa")
    result = asyncio.run(run(g, "Name three uses of copper.", roles_for(PacedBackend())))
    assert result.answer.text and result.ttft_s is not None
    assert result.answer.details["reprompts"] >= 1


def test_shipped_recipes_build_a_moa_node_in_each_mode():
    from pathlib import Path

    from reasonloom.recipe import load_recipe

    root = Path(__file__).resolve().parents[1] / "recipes"
    for name, mode in (("moa", "vanilla"), ("moa_staircase", "staircase")):
        recipe = load_recipe(root / f"{name}.yaml")
        node = recipe.graph.nodes["moa"]
        assert node.type.name == "moa" and node.config.mode == mode
        assert len(node.config.layers[0]) == 3
