"""Adaptive test-time compute on the scripted backend: DeepConf's confidence measures and its
offline/online nodes, Adaptive-Consistency's stopping rule, and the stoppable generation they
rest on (billing, cancellation, timeout, budget)."""
from __future__ import annotations

import asyncio
import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import Timeout
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.budget import BudgetExceeded, BudgetSpec
from reasonloom.orchestrator.cache import RunStore
from reasonloom.orchestrator.context import RunContext, RunState
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import RetryPolicy, Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.seeds import derive_seed
from reasonloom.orchestrator.types import Message
from reasonloom.strategies.adaptive_consistency import beta_win_probability
from reasonloom.strategies.trace_confidence import (WindowWatch, group_confidences,
                                                    keep_threshold, most_confident,
                                                    weighted_vote)

LONG = " ".join(f"step{i}" for i in range(40))   # 40 scripted tokens before the answer


def roles_of(backend, **spec) -> Roles:
    return Roles({"strong": Role(RoleSpec(name="strong", price_out_per_m=1.0, **spec), backend)})


POOL_INDEX = {derive_seed(0, "pool:p", "samples", i): i for i in range(16)}


def answer_by_sample(answers: dict[int, str], default: str = "9"):
    """Responder: sample i of pool "p" (run seed 0) answers answers[i]."""
    def respond(req: GenerateRequest, index: int) -> str:
        return f"{LONG} The answer is {answers.get(POOL_INDEX.get(req.seed, -1), default)}."
    return respond


# -- confidence measures ----------------------------------------------------------------------
@given(st.lists(st.floats(0, 10), min_size=1, max_size=60), st.integers(1, 20))
def test_group_confidences_are_the_sliding_window_means(conf, window):
    groups = group_confidences(conf, window)
    if len(conf) <= window:
        assert np.allclose(groups, [np.mean(conf)])
    else:
        brute = [np.mean(conf[i:i + window]) for i in range(len(conf) - window + 1)]
        assert np.allclose(groups, brute)


@settings(max_examples=50)
@given(st.lists(st.floats(0, 10), min_size=1, max_size=60), st.integers(1, 20),
       st.floats(0, 10))
def test_window_watch_stops_exactly_when_a_full_window_falls_below_threshold(conf, window, s):
    watch = WindowWatch(s, window)
    for n in range(1, len(conf) + 1):   # fed one token at a time, as a stream is
        expect = n >= window and np.mean(conf[n - window:n]) < s - 1e-9
        got = watch(conf[:n], "")
        if abs(np.mean(conf[max(0, n - window):n]) - s) > 1e-6:
            assert got == expect


def test_keep_threshold_keeps_the_top_share():
    scores = list(range(10))
    assert keep_threshold(scores, 0.1) == pytest.approx(8.1)
    assert most_confident(scores, 0.3) == [7, 8, 9]
    assert most_confident([5.0, 1.0, 3.0], 0.5) == [0, 2]   # ceil(1.5) = 2, original order


def test_weighted_vote_lets_confident_minority_win():
    leader, share = weighted_vote(["a", "a", "b", None], [1.0, 1.0, 5.0, 100.0])
    assert leader == "b" and share == pytest.approx(5 / 7)
    assert weighted_vote([None], [1.0]) == (None, 0.0)


def test_beta_win_probability_matches_known_values():
    assert beta_win_probability(4, 0) == pytest.approx(31 / 32)
    assert beta_win_probability(3, 3) == pytest.approx(0.5)
    assert beta_win_probability(0, 0) == pytest.approx(0.5)
    # more votes for the leader, or fewer for the runner-up, can only make it surer
    for a in range(8):
        for b in range(a):
            assert beta_win_probability(a + 1, b) > beta_win_probability(a, b)
            assert beta_win_probability(a, b) > beta_win_probability(a, b + 1)


# -- Adaptive-Consistency ---------------------------------------------------------------------
def run_node(node: str, params: dict, backend, seed: int = 0, **kw):
    graph = Graph().add("x", node, params)
    return asyncio.run(run(graph, "What is 2 + 2?", roles_of(backend), seed=seed, **kw))


def test_adaptive_consistency_stops_after_one_wave_when_all_agree():
    backend = ScriptedBackend(lambda req, i: "The answer is 4.")
    result = run_node("adaptive_consistency", {"n": 16, "wave": 4}, backend)
    assert result.answer.answer == "4"
    assert result.answer.details["samples"] == 4 and backend.calls == 4
    assert result.answer.details["stopped_early"] is True


def test_adaptive_consistency_runs_to_n_max_when_the_vote_stays_split():
    calls = itertools.count()
    flip = ScriptedBackend(lambda req, i: f"The answer is {next(calls) % 2}.")
    result = run_node("adaptive_consistency", {"n": 12, "wave": 4}, flip)
    assert result.answer.details["samples"] == 12
    assert result.answer.details["p_win"] < 0.95


def test_pool_samples_are_shared_by_every_node_that_names_the_pool():
    texts = {}
    for node, params in [("self_consistency", {"n": 8}), ("adaptive_consistency", {"n": 8})]:
        backend = ScriptedBackend()
        result = run_node(node, {**params, "pool": "p", "role": "strong"}, backend)
        texts[node] = [c.text for c in result.answer.candidates]
    k = len(texts["adaptive_consistency"])
    assert texts["adaptive_consistency"] == texts["self_consistency"][:k]


def test_adaptive_consistency_feeds_a_tournament_its_distinct_answers():
    graph = (Graph().add("ac", "adaptive_consistency", {"n": 8, "wave": 4})
             .add("v1", "v1_tournament", {"judge": "strong", "max_tokens": 32},
                  inputs={"problem": "problem", "candidates": "ac.representatives"}))
    result = asyncio.run(run(graph, "What is 2 + 2?", roles_of(ScriptedBackend()), seed=0))
    reps = result.outputs["ac"]["representatives"]
    assert len({c.answer for c in reps}) == len(reps)
    assert sum(c.details["votes"] for c in reps) == result.outputs["ac"]["answer"].details[
        "samples"]
    assert result.answer.answer in {c.answer for c in reps}


# -- DeepConf ---------------------------------------------------------------------------------
ANSWERS = {i: ("7" if i % 4 == 0 else "5") for i in range(16)}   # 7 is a confident minority


def planted_confidence(sure: set[str], answers: dict[int, str] = ANSWERS):
    """Tokens of traces answering a `sure` answer are confident (3.0), others are not (0.5)."""
    def confidence(req, index, position):
        text = answer_by_sample(answers)(req, index)
        return 3.0 if any(text.endswith(f"is {a}.") for a in sure) else 0.5
    return confidence


def test_deepconf_offline_follows_the_confident_minority():
    backend = ScriptedBackend(answer_by_sample(ANSWERS), confidence=planted_confidence({"7"}))
    sc = run_node("self_consistency", {"n": 16, "pool": "p"}, ScriptedBackend(
        answer_by_sample(ANSWERS)))
    dc = run_node("deepconf", {"mode": "offline", "n": 16, "pool": "p", "keep_share": 0.25,
                               "window": 8}, backend)
    assert sc.answer.answer == "5"
    assert dc.answer.answer == "7" and dc.answer.details["kept"] == 4


def test_deepconf_online_stops_unconfident_traces_and_bills_only_what_they_wrote():
    # confident warm-up traces (pool 0-3: 7, 7, 7, 3) set the threshold at 3.0; every later
    # trace answers 5 unsurely and is stopped when its first window of 8 tokens is read
    answers = {0: "7", 1: "7", 2: "7", 3: "3"}
    backend = ScriptedBackend(answer_by_sample(answers, default="5"),
                              confidence=planted_confidence({"7", "3"}, answers))
    result = run_node("deepconf", {"mode": "online", "n": 16, "pool": "p", "warmup": 4,
                                   "window": 8, "keep_share": 0.9}, backend)
    assert result.answer.answer == "7"
    assert result.answer.details["stopped"] == 12
    stopped = [c for c in result.answer.candidates if c.details.get("stopped")]
    assert len(stopped) == 12 and all(c.usage.completion_tokens == 8 for c in stopped)
    full = len(answer_by_sample(answers)(REQ, 0).split())
    assert result.usage.total.completion_tokens == 4 * full + 12 * 8
    assert backend.streamed_tokens == 12 * 8 and backend.in_flight == 0


def test_deepconf_online_stops_sampling_once_the_vote_is_decided():
    backend = ScriptedBackend(lambda req, i: f"{LONG} The answer is 4.")
    result = run_node("deepconf", {"mode": "online", "n": 16, "warmup": 4}, backend)
    assert result.answer.answer == "4"
    assert result.answer.details["traces"] == 4 and backend.calls == 4


# -- the stoppable generation -----------------------------------------------------------------
def context(backend, **spec) -> RunContext:
    return RunContext(RunState(run_id="t", seed=0, roles=roles_of(backend, **spec)), "node")


REQ = GenerateRequest(messages=(Message(role="user", content="q"),), max_tokens=64,
                      confidence_k=5, seed=3)


def test_a_stopped_generation_closes_the_stream_and_bills_the_tokens_it_read():
    backend = ScriptedBackend(lambda req, i: LONG)
    ctx = context(backend)
    sample = asyncio.run(ctx.generate_until("strong", REQ, "k", lambda conf, text: len(conf) >= 5))
    assert sample.finish_reason == "cancelled" and sample.completion_tokens == 5
    assert backend.streamed_tokens == 5 and backend.in_flight == 0
    assert ctx.state.ledger.report().total.completion_tokens == 5
    assert sample.confidences is not None and len(sample.confidences) == 5


def test_cancelling_the_awaiting_task_bills_what_was_generated():
    backend = ScriptedBackend(lambda req, i: LONG, chunk_delay_s=0.01)
    ctx = context(backend)

    async def go():
        task = asyncio.ensure_future(ctx.generate_until("strong", REQ, "k", lambda c, t: False))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    billed = ctx.state.ledger.report().total.completion_tokens
    assert backend.in_flight == 0
    assert 0 < billed == backend.streamed_tokens < 40


def test_a_stalled_stoppable_generation_times_out_under_the_role_timeout():
    backend = ScriptedBackend(lambda req, i: LONG, chunk_delay_s=0.2)
    ctx = context(backend, timeout_s=0.3,
                  retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    with pytest.raises(Timeout):
        asyncio.run(ctx.generate_until("strong", REQ, "k", lambda c, t: False))
    attempts = [r for r in ctx.state.ledger.records if not r.ok]
    assert len(attempts) == 2 and backend.in_flight == 0


def test_a_token_budget_stops_a_deepconf_run():
    backend = ScriptedBackend(lambda req, i: f"{LONG} The answer is {req.seed % 3}.")
    with pytest.raises(BudgetExceeded):
        run_node("deepconf", {"mode": "online", "n": 16, "max_tokens": 64},
                 backend, budget=BudgetSpec(tokens=1000))


def test_stopped_generations_replay_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path))
    params = {"mode": "online", "n": 8, "warmup": 2, "window": 4, "consensus": 1.0}
    first = run_node("deepconf", params, ScriptedBackend(answer_by_sample(ANSWERS)),
                     run_id="r", cache="read_write")
    replay_backend = ScriptedBackend(answer_by_sample(ANSWERS))
    again = run_node("deepconf", params, replay_backend, run_id="r", cache="replay")
    assert replay_backend.calls == 0
    assert [c.text for c in again.answer.candidates] == [c.text for c in first.answer.candidates]
    assert re.search(r"\d", again.answer.answer or "")


# -- step-level search ------------------------------------------------------------------------
def stepwise(steps_before_answer: int):
    """Responder writing one step per call, then the answer once enough steps are written."""
    def respond(req: GenerateRequest, index: int) -> str:
        done = (req.assistant_prefix or "").count("\n\n")
        return "The answer is 4." if done >= steps_before_answer else f"Step {done + 1}: add."
    return respond


def test_resampling_weights_favour_higher_scores_and_sharpen_when_cold():
    from reasonloom.strategies.particle_filter import resampling_weights

    warm = resampling_weights([0.2, 0.5, 0.8], 1.0)
    cold = resampling_weights([0.2, 0.5, 0.8], 0.25)
    assert warm.sum() == pytest.approx(1.0) and list(warm) == sorted(warm)
    assert cold[2] > warm[2] and cold[0] < warm[0]


def test_keep_best_keeps_the_top_beams_and_the_population_size():
    from reasonloom.strategies.beam_search import keep_best
    from reasonloom.strategies.step_search import Partial

    beams = [Partial(text=str(i), score=s) for i, s in enumerate([0.1, 0.9, 0.5, 0.7])]
    kept = keep_best(beams, 4, 2)
    assert [b.text for b in kept] == ["1", "1", "3", "3"]


@pytest.mark.parametrize("node", ["particle_filter", "beam_search"])
def test_step_search_extends_step_by_step_until_the_answer(node):
    backend = ScriptedBackend(stepwise(2))
    result = run_node(node, {"particles": 4, "max_steps": 6}, backend)
    assert result.answer.answer == "4"
    assert result.answer.details["steps"] == 3
    assert result.answer.text.count("Step") == 2
    assert backend.calls >= 3 * 4   # 4 extensions a step (plus the judge's scoring calls)


def test_step_search_stops_at_its_token_budget_with_a_partial_answer():
    backend = ScriptedBackend(stepwise(50))
    with pytest.raises(BudgetExceeded) as stop:
        run_node("particle_filter", {"particles": 4, "max_steps": 40}, backend,
                 budget=BudgetSpec(tokens=3000))
    assert stop.value.best is not None


def test_a_stopped_generation_is_cached_under_its_own_stop_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path))
    backend = ScriptedBackend(lambda req, i: LONG)
    state = RunState(run_id="t", seed=0, roles=roles_of(backend),
                     store=RunStore(tmp_path / "c.sqlite", "read_write"))
    ctx = RunContext(state, "node")
    early = asyncio.run(ctx.generate_until("strong", REQ, "k", lambda c, t: len(c) >= 3, "3"))
    later = asyncio.run(ctx.generate_until("strong", REQ, "k", lambda c, t: len(c) >= 9, "9"))
    again = asyncio.run(ctx.generate_until("strong", REQ, "k", lambda c, t: len(c) >= 9, "9"))
    assert (early.completion_tokens, later.completion_tokens) == (3, 9)
    assert again == later and backend.calls == 2


def test_timeout_retry_and_budget_behave_the_same_for_every_call_kind():
    """One parametrized check over generate, stream, scoring and the stoppable generation."""
    from reasonloom.backends.errors import ServerError

    async def call(ctx, kind):
        if kind == "generate":
            return await ctx.generate("strong", REQ, "k")
        if kind == "stream":
            return [d async for d in ctx.stream("strong", REQ, "k")]
        if kind == "score":
            return await ctx.prompt_logprobs("strong", REQ.messages, "some text", "k")
        return await ctx.generate_until("strong", REQ, "k", lambda c, t: False)

    for kind in ("generate", "stream", "score", "until"):
        # a stall: every attempt times out, each is recorded, then Timeout is raised
        slow = ScriptedBackend(lambda req, i: LONG, delay_s=0.3)
        ctx = context(slow, timeout_s=0.1, retry=RetryPolicy(max_attempts=2, base_delay_s=0))
        with pytest.raises(Timeout):
            asyncio.run(call(ctx, kind))
        assert [r.ok for r in ctx.state.ledger.records] == [False, False], kind
        # one transient fault is retried and the call succeeds on the second attempt
        faults = iter([ServerError("boom")])
        flaky = ScriptedBackend(lambda req, i: LONG, faults=lambda req: next(faults, None))
        if kind == "score":
            flaky.prompt_logprobs = _failing_once(flaky.prompt_logprobs)
        ctx = context(flaky, retry=RetryPolicy(max_attempts=3, base_delay_s=0))
        asyncio.run(call(ctx, kind))
        assert [r.ok for r in ctx.state.ledger.records] == [False, True], kind
        # a budget too small for the call stops it before anything is sent
        ctx = context(ScriptedBackend(lambda req, i: LONG))
        ctx.state.budget = type(ctx.state.budget)(BudgetSpec(tokens=2))
        with pytest.raises(BudgetExceeded):
            asyncio.run(call(ctx, kind))
        assert ctx.state.ledger.records == [], kind


def test_a_stream_its_caller_stops_reading_is_cancelled_and_billed_for_what_it_read():
    backend = ScriptedBackend(lambda req, i: LONG, chunk_chars=6, chunk_delay_s=0.01)
    ctx = context(backend)

    async def read_two_pieces():
        pieces = ctx.stream("strong", REQ, "k")
        got = [await anext(pieces), await anext(pieces)]
        await pieces.aclose()
        await asyncio.sleep(0.05)   # a producer left running would stream on meanwhile
        return got

    got = asyncio.run(read_two_pieces())
    [record] = ctx.state.ledger.records
    assert record.error == "cancelled" and record.kind == "stream"
    assert 0 < record.completion_tokens < len(LONG.split())
    assert backend.in_flight == 0 and backend.streamed_tokens < len(LONG.split())
    assert "".join(p.text for p in got) == LONG[:len("".join(p.text for p in got))]
    assert ctx.state.budget.spent_tokens == record.prompt_tokens + record.completion_tokens


def _failing_once(fn):
    from reasonloom.backends.errors import ServerError

    calls = itertools.count()

    async def wrapped(*args, **kwargs):
        if next(calls) == 0:
            raise ServerError("boom")
        return await fn(*args, **kwargs)
    return wrapped
