"""The DAG runtime on the scripted backend: scheduling logic only (real engines elsewhere)."""
from __future__ import annotations

import asyncio
import gc
import random

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

import tests.support.nodes  # noqa: F401  (registers the test node types)
from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import ServerError
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.budget import BudgetExceeded, BudgetSpec
from reasonloom.orchestrator.cache import cache_key
from reasonloom.orchestrator.gc_tuning import RUN_YOUNG_THRESHOLD
from reasonloom.orchestrator.graph import Graph, GraphError
from reasonloom.orchestrator.result import RunFailed
from reasonloom.orchestrator.roles import RetryPolicy, Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.types import Message
from tests.support.nodes import TIMELINE


def roles_of(backend: ScriptedBackend, **spec) -> Roles:
    return Roles({"strong": Role(RoleSpec(name="strong", **spec), backend)})


@st.composite
def random_dags(draw):
    n = draw(st.integers(2, 14))
    edges = []
    for child in range(1, n):
        parents = draw(st.lists(st.integers(0, child - 1), max_size=3, unique=True))
        edges += [(p, child) for p in parents]
    return n, edges


@settings(max_examples=25, deadline=None)
@given(random_dags(), st.integers(0, 1000))
def test_nodes_start_only_after_all_their_inputs_finished(dag, delay_seed):
    n, edges = dag
    rng = random.Random(delay_seed)
    backend = ScriptedBackend(delay_s=0.0)
    parents = {i: [p for p, c in edges if c == i] for i in range(n)}
    g = Graph()
    for i in range(n):
        ins = parents[i]
        if not ins:
            g.add(f"n{i}", "test_call", {"calls": rng.randint(0, 2)}, {"problem": "problem"})
        else:
            g.add(f"n{i}", "test_join", {},
                  {port: f"n{p}.candidates" for port, p in zip("abc", ins)})
    sinks = [i for i in range(n) if not any(p == i for p, _ in edges)]
    g.add("sink", "test_join", {}, {port: f"n{i}.candidates" for port, i in zip("abc", sinks[:3])})
    if len(sinks) > 3:
        return  # the join has three ports; such a draw would leave sinks dangling
    TIMELINE.clear()
    result = asyncio.run(run(g, "q", roles_of(backend)))
    assert set(result.outputs) == {f"n{i}" for i in range(n)} | {"sink"}
    for parent, child in edges:
        assert TIMELINE[f"n{parent}"][1] <= TIMELINE[f"n{child}"][0]


def test_role_concurrency_limit_is_never_exceeded():
    backend = ScriptedBackend(delay_s=0.01)
    g = Graph()
    for i in range(12):
        g.add(f"n{i}", "test_call", {"calls": 3})
    g.add("sink", "test_join", {}, {"a": "n0.candidates"})
    g.set_output("sink")
    asyncio.run(run(g, "q", roles_of(backend, concurrency=3)))
    assert backend.max_in_flight == 3   # limited, and the limit was actually reached


def test_failing_node_cancels_only_its_dependants():
    backend = ScriptedBackend()
    g = Graph()
    g.add("bad", "test_call", {"fail": True})
    g.add("after_bad", "test_join", {}, {"a": "bad.candidates"})
    g.add("good", "test_call", {"calls": 2})
    g.add("sink", "test_join", {}, {"a": "after_bad.candidates", "b": "good.candidates"})
    with pytest.raises(RunFailed) as info:
        asyncio.run(run(g, "q", roles_of(backend)))
    result = info.value.result
    assert "good" in result.outputs and len(result.outputs["good"]["candidates"]) == 2
    failed = {f.node: f for f in result.failures}
    assert failed["bad"].cancelled_because is None and "told to fail" in failed["bad"].error
    assert failed["after_bad"].cancelled_because == "bad"
    assert "bad" in str(info.value)


def test_ledger_totals_equal_the_sum_of_records():
    backend = ScriptedBackend()
    g = Graph()
    for i in range(5):
        g.add(f"n{i}", "test_call", {"calls": i + 1})
    g.add("sink", "test_join", {}, {"a": "n0.candidates", "b": "n4.candidates"})
    g.set_output("sink")
    spec = dict(price_in_per_m=3.0, price_out_per_m=15.0)
    result = asyncio.run(run(g, "q", roles_of(backend, **spec)))
    usage = result.usage
    assert usage.total.calls == 15 == backend.calls
    assert sum(u.prompt_tokens for u in usage.by_node.values()) == usage.total.prompt_tokens
    assert sum(u.cost_usd for u in usage.by_model.values()) == pytest.approx(usage.total.cost_usd)
    assert usage.by_node["n4"].calls == 5
    expected = (usage.total.prompt_tokens * 3 + usage.total.completion_tokens * 15) / 1e6
    assert usage.total.cost_usd == pytest.approx(expected)


def test_budget_stops_before_the_call_that_would_exceed_it_and_keeps_partials():
    backend = ScriptedBackend()
    g = Graph()
    g.add("first", "test_call", {"calls": 1, "max_tokens": 50})
    g.add("second", "test_call", {"calls": 10, "max_tokens": 50}, {"upstream": "first.candidates"})
    g.set_output("second")
    with pytest.raises(BudgetExceeded) as info:
        asyncio.run(run(g, "q", roles_of(backend), budget=BudgetSpec(tokens=100)))
    partial = info.value.partial
    assert partial is not None and "first" in partial.outputs
    spent = partial.usage.total.total_tokens
    # each call reserves its max_tokens (50) up front: the run stopped exactly when the next
    # reservation no longer fit, and never went over
    next_reservation = 50 + backend.estimate_tokens("second") + 8   # max_tokens + prompt
    assert spent <= 100 < spent + next_reservation
    assert backend.calls == partial.usage.total.calls < 11


def test_seeds_follow_call_keys_not_completion_order():
    def outputs(delay_seed: int) -> dict:
        rng = random.Random(delay_seed)

        class Jittery(ScriptedBackend):
            async def generate(self, req):
                await asyncio.sleep(rng.random() * 0.01)
                return await super().generate(req)

        g = Graph()
        for i in range(6):
            g.add(f"n{i}", "test_call", {"calls": 3})
        g.add("sink", "test_join", {}, {"a": "n0.candidates", "b": "n5.candidates"})
        g.set_output("sink")
        result = asyncio.run(run(g, "q", roles_of(Jittery()), seed=7))
        return {n: [c.text for c in out["candidates"]] for n, out in result.outputs.items()}

    first = outputs(1)
    assert first == outputs(2)
    assert len({t for texts in first.values() for t in texts}) > 3   # seeds differ by key


def test_cache_replay_makes_zero_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path))
    g = Graph()
    g.add("a", "test_call", {"calls": 4})
    first_backend = ScriptedBackend()
    first = asyncio.run(run(g, "q", roles_of(first_backend), run_id="r1", cache="read_write"))
    replay_backend = ScriptedBackend()
    again = asyncio.run(run(g, "q", roles_of(replay_backend), run_id="r1", cache="replay"))
    assert first_backend.calls == 4 and replay_backend.calls == 0
    assert again.answer.text == first.answer.text
    assert again.usage.total.completion_tokens == 0 and again.usage.total.prompt_tokens == 0


def test_cache_keys_differ_by_sample_index_seed_and_engine():
    body = {"messages": [{"role": "user", "content": "q"}]}
    keys = {cache_key("m", "cfg", body, 0, 1), cache_key("m", "cfg", body, 1, 1),
            cache_key("m", "cfg", body, 0, 2), cache_key("m", "cfg2", body, 0, 1)}
    assert len(keys) == 4


def test_partial_outputs_reach_a_subscriber_before_the_producer_finishes():
    backend = ScriptedBackend(delay_s=0.05)
    g = Graph()
    g.add("producer", "test_call", {"publish_partials": 3, "partial_delay_s": 0.02, "calls": 1})
    g.add("watcher", "test_watch", {}, {"candidates": "producer.candidates"})
    TIMELINE.clear()
    result = asyncio.run(run(g, "q", roles_of(backend)))
    seen = result.answer.details["seen"]
    producer_end = TIMELINE["producer"][1]
    assert [text for _, _, text in seen[:3]] == ["partial 0", "partial 1", "partial 2"]
    assert seen[0][0] < producer_end
    assert seen[-1][2].startswith("Let me think")   # the final value arrives last


def test_port_type_mismatch_is_caught_at_build_time():
    g = Graph()
    g.add("a", "test_call", {})
    g.add("w", "test_watch", {}, {"candidates": "problem"})
    with pytest.raises(GraphError) as info:
        g.validate()
    assert "mismatch" in str(info.value) and info.value.path == ("nodes", "w", "inputs",
                                                                "candidates")


def test_graph_errors_name_node_and_port():
    g = Graph()
    g.add("a", "test_join", {}, {"a": "missing.candidates"})
    with pytest.raises(GraphError, match="missing node 'missing'"):
        g.validate()
    g = Graph()
    g.add("a", "test_join", {}, {"a": "b.candidates"})
    g.add("b", "test_join", {}, {"a": "a.candidates"})
    with pytest.raises(GraphError, match="cycle"):
        g.validate()
    with pytest.raises(GraphError, match="unknown node type"):
        Graph().add("x", "no_such_type")


def test_retries_follow_the_policy_and_every_attempt_is_in_the_ledger():
    failures = iter([ServerError("boom"), ServerError("boom"), None] + [None] * 10)
    backend = ScriptedBackend(faults=lambda req: next(failures))
    g = Graph()
    g.add("a", "test_call", {"calls": 1})
    roles = roles_of(backend, retry=RetryPolicy(base_delay_s=0.001))
    result = asyncio.run(run(g, "q", roles))
    assert result.usage.total.calls == 3
    assert result.answer is not None


def test_a_run_raises_the_young_gc_threshold_only_while_it_is_active():
    before = gc.get_threshold()
    during = []
    g = Graph()
    g.add("a", "test_call", {"calls": 1})
    asyncio.run(run(g, "q", roles_of(ScriptedBackend()),
                    subscribers=[lambda e: during.append(gc.get_threshold())]))
    assert during and all(t == (RUN_YOUNG_THRESHOLD, *before[1:]) for t in during)
    assert gc.get_threshold() == before


def test_with_seed_is_model_copy_with_the_seed():
    req = GenerateRequest(messages=(Message(role="user", content="q"),), max_tokens=4, n=2)
    seeded, copied = req.with_seed(7), req.model_copy(update={"seed": 7})
    assert seeded == copied and repr(seeded) == repr(copied) and req.seed is None
    assert seeded.model_fields_set == copied.model_fields_set
    assert seeded.model_dump() == copied.model_dump() and hash(seeded) == hash(copied)
    with pytest.raises(ValidationError):   # still frozen
        seeded.seed = 8
