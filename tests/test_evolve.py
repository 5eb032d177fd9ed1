"""Squeeze Evolve's logic on the scripted backend (the real engine: test_evolve_engine.py)."""
from __future__ import annotations

import asyncio
import doctest
import math
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

import reasonloom.strategies.evolve as evolve_module
from reasonloom.backends.base import GenerateRequest, TokenLogprob
from reasonloom.backends.errors import CapabilityMissing
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.result import RunFailed
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Candidate, Message
from reasonloom.strategies.evolve import EvolveConfig, vote
from reasonloom.strategies.evolve_fitness import (Member, candidate_confidence,
                                                  distinct_answers, diversity_fitness,
                                                  form_groups, group_confidence,
                                                  route_by_percentile)

ROOT = Path(__file__).resolve().parents[1]
PROMPT = (Message(role="user", content="q"),)


def roles_of(names=("strong", "cheap"), backends=None) -> Roles:
    backends = backends or {}
    prices = {name: 8.0 / (i + 1) for i, name in enumerate(names)}
    return Roles({n: Role(RoleSpec(name=n, price_out_per_m=prices[n]),
                          backends.get(n) or ScriptedBackend()) for n in names},
                 order=list(names))


def run_evolve(params: dict, roles: Roles, question: str = "What is 2 + 3?", seed: int = 0):
    events = []
    g = Graph().add("evolve", "evolve", params).set_output("evolve")
    result = asyncio.run(run(g, question, roles, seed=seed, subscribers=[events.append]))
    calls = [e.data for e in events if e.kind == "call_finished"]
    return result, calls


# -- routing ---------------------------------------------------------------------------------
@st.composite
def routing_cases(draw):
    n_roles = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.floats(0, 100), min_size=n_roles - 1, max_size=n_roles - 1)))
    fitness = draw(st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=40))
    return fitness, list(range(n_roles)), cuts


@settings(max_examples=300, deadline=None)
@given(routing_cases())
def test_least_confident_groups_go_to_strongest_role(case):
    fitness, ranks, cuts = case   # rank 0 = strongest
    routes = route_by_percentile(fitness, ranks, cuts)
    # monotone: a less confident group never goes to a cheaper role than a more confident one
    for fi, ri in zip(fitness, routes):
        for fj, rj in zip(fitness, routes):
            if fi < fj:
                assert ri <= rj
            if fi == fj:
                assert ri == rj
    m = len(fitness)
    for band, p in enumerate(cuts):
        sent = sum(1 for r in routes if r <= band)   # groups sent to this role or stronger
        if p <= 0:
            assert sent == 0
        elif p >= 100:
            assert sent == m
        else:
            assert sent >= math.floor((m - 1) * p / 100) + 1   # at least the p% least confident
            assert min(routes) == 0 or cuts[0] <= 0             # the least confident of all
            if len(set(fitness)) == m:   # distinct fitness: numpy's linear percentile
                h = (m - 1) * p / 100
                assert math.floor(h) + 1 <= sent <= math.ceil(h) + 1


def test_cut_point_zero_sends_every_recombination_to_the_cheapest_role():
    assert route_by_percentile([3.0, 1.0, 2.0], ["strong", "cheap"], [0]) == ["cheap"] * 3
    assert route_by_percentile([3.0, 1.0, 2.0], ["strong", "cheap"], [100]) == ["strong"] * 3
    assert route_by_percentile([3.0, 1.0, 2.0, 0.5], ["s", "m", "c"], [25, 75]) == \
        ["c", "m", "m", "s"]


def test_cut_points_must_match_the_roles():
    with pytest.raises(ValueError, match="3 roles need 2 cut points"):
        route_by_percentile([1.0], ["s", "m", "c"], [10])
    with pytest.raises(RunFailed, match=r"3 roles \(s, m, c\) need 2 cut points"):
        run_evolve({"population": 2, "group_size": 2, "loops": 2, "cut_points": [10]},
                   roles_of(("s", "m", "c")))


# -- selection -------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.data(), st.integers(0, 10_000))
def test_groups_have_k_distinct_members(n, data, seed):
    k = data.draw(st.integers(1, n))
    groups = form_groups(n, k, n, random.Random(seed))
    assert len(groups) == n
    for g in groups:
        assert len(g) == k and len(set(g)) == k and all(0 <= i < n for i in g)
    assert groups == form_groups(n, k, n, random.Random(seed))   # seeded


def test_groups_are_independent_draws_so_members_repeat_across_groups():
    groups = form_groups(8, 4, 200, random.Random(1))
    counts = [sum(i in g for g in groups) for i in range(8)]
    assert all(80 <= c <= 120 for c in counts)   # uniform: each member in ~k/N = half the groups
    assert len(set(groups)) > 50


# -- fitness ---------------------------------------------------------------------------------
def test_confidence_is_negated_mean_top_k_logprob_averaged_over_tokens():
    tokens = [TokenLogprob(token="a", logprob=-0.1, top=(-0.1, -2.0, -3.9)),   # conf 2.0
              TokenLogprob(token="b", logprob=-1.0, top=(-1.0, -1.0, -1.0))]   # conf 1.0
    assert candidate_confidence(tokens) == pytest.approx(1.5)
    assert candidate_confidence([]) == 0.0
    assert group_confidence([1.5, 2.5, 4.0]) == pytest.approx(8.0 / 3)


def test_diversity_fallback_sends_disagreeing_groups_to_the_strongest_role():
    split, consensus = ["1", "2", "3", "4"], ["5", "5.0", "5", "5"]
    assert distinct_answers(split) == 4 and distinct_answers(consensus) == 1
    assert distinct_answers(["7", None, None]) == 3   # no answer agrees with nobody
    fitness = [diversity_fitness(consensus), diversity_fitness(split)]
    assert route_by_percentile(fitness, ["strong", "cheap"], [50]) == ["cheap", "strong"]


def test_scorer_without_logprobs_falls_back_to_diversity_end_to_end():
    answers = iter(range(10_000))

    def varied(req: GenerateRequest, i: int) -> str:
        # the initial samples alternate between two answers, later ones copy the first parent
        if "### Solution" not in req.messages[-1].content:
            return f"Step. The answer is {next(answers) % 3}."
        return req.messages[-1].content.split("### Solution 1\n")[1].split("\n")[0]

    cheap = ScriptedBackend(varied, logprobs=False)
    roles = roles_of(backends={"strong": ScriptedBackend(varied), "cheap": cheap})
    result, calls = run_evolve({"population": 8, "group_size": 3, "loops": 2,
                                "cut_points": [50]}, roles)
    loop2 = result.answer.details["loops"][1]
    assert loop2["fitness_kind"] == "diversity" and result.answer.details["fitness"] == "diversity"
    assert not [c for c in calls if c["call_kind"] == "score"]
    for fit, role in zip(loop2["fitness"], loop2["routes"]):
        for fit2, role2 in zip(loop2["fitness"], loop2["routes"]):
            if fit < fit2:   # more distinct answers -> never a cheaper role
                assert (role, role2) != ("cheap", "strong")
    assert "strong" in loop2["routes"] and "cheap" in loop2["routes"]


class _NoScoring(ScriptedBackend):
    async def prompt_logprobs(self, messages, text, top_k=0):
        raise CapabilityMissing("this server returns no prompt log-probs")


def test_capability_missing_at_call_time_switches_to_diversity():
    roles = roles_of(backends={"cheap": _NoScoring()})
    result, calls = run_evolve({"population": 4, "group_size": 2, "loops": 3,
                                "cut_points": [50]}, roles)
    assert [rec["fitness_kind"] for rec in result.answer.details["loops"][1:]] == \
        ["diversity", "diversity"]


# -- the loop --------------------------------------------------------------------------------
class Recording(ScriptedBackend):
    def __init__(self):
        super().__init__()
        self.scored: list[tuple[str, str]] = []

    async def prompt_logprobs(self, messages, text, top_k=0):
        self.scored.append((messages[-1].content, text))
        return await super().prompt_logprobs(messages, text, top_k)


def test_loops_replace_the_population_and_route_each_group_to_one_role():
    scorer = Recording()
    roles = roles_of(backends={"cheap": scorer})
    n, k, t = 6, 3, 4
    result, calls = run_evolve({"population": n, "group_size": k, "loops": t,
                                "cut_points": [30]}, roles)
    details = result.answer.details
    gens = [c for c in calls if c["call_kind"] == "generate"]
    assert len(gens) == 1 + n * (t - 1)   # one n-sampling request, then one call per group
    assert len(details["loops"]) == t
    for rec in details["loops"][1:]:
        assert len(rec["groups"]) == n and len(rec["routes"]) == n
        assert all(len(set(g)) == k for g in rec["groups"])
    assert sum(details["routing"].values()) == n * (t - 1)
    assert details["routing"]["strong"] > 0 and details["routing"]["cheap"] > 0
    population = result.outputs["evolve"]["candidates"]
    assert len(population) == n and all(c.details["loop"] == t for c in population)
    assert [c.role for c in population] == details["loops"][-1]["routes"]
    # each score call reads a candidate conditioned on the prompt that produced it
    assert all(scored for scored in scorer.scored)
    first_loop_scores = [p for p, _ in scorer.scored if "### Solution" not in p]
    assert first_loop_scores and all(p == "What is 2 + 3?" for p in first_loop_scores)
    assert any("### Solution 3" in p for p, _ in scorer.scored)
    assert all(c["call_kind"] == "score" and c["completion_tokens"] == 0 and c["role"] == "cheap"
               for c in calls if c["call_kind"] == "score")


def scored_during_the_loops(calls: list[dict]) -> int:
    """Score calls before the last generation (after it, only the final vote's tie-break)."""
    last = max(i for i, c in enumerate(calls) if c["call_kind"] == "generate")
    return sum(1 for c in calls[:last] if c["call_kind"] == "score")


@pytest.mark.parametrize("seed", range(3))
def test_cut_point_zero_uses_the_strong_role_only_for_the_first_loop_and_scores_nothing(seed):
    result, calls = run_evolve({"population": 4, "group_size": 2, "loops": 3,
                                "cut_points": [0]}, roles_of(), seed=seed)
    assert result.answer.details["routing"] == {"strong": 0, "cheap": 8}
    assert [c["role"] for c in calls if c["call_kind"] == "generate"].count("strong") == 1
    assert scored_during_the_loops(calls) == 0
    assert all(rec["fitness"] is None for rec in result.answer.details["loops"])


@pytest.mark.parametrize("seed", range(3))
def test_single_model_baseline_is_one_role_and_never_scores_to_route(seed):
    result, calls = run_evolve({"population": 4, "group_size": 2, "loops": 3,
                                "roles": ["cheap"]}, roles_of(), seed=seed)
    assert result.answer.details["routing"] == {"cheap": 8}
    assert {c["role"] for c in calls} == {"cheap"}   # "strongest" = the top of THIS ranking
    assert scored_during_the_loops(calls) == 0


def test_three_roles_split_by_two_cut_points():
    result, _ = run_evolve({"population": 10, "group_size": 2, "loops": 3,
                            "cut_points": [20, 60]}, roles_of(("strong", "mid", "cheap")))
    routing = result.answer.details["routing"]
    assert set(routing) == {"strong", "mid", "cheap"} and all(routing.values())
    for rec in result.answer.details["loops"][1:]:
        rank = {"strong": 0, "mid": 1, "cheap": 2}
        pairs = sorted(zip(rec["fitness"], (rank[r] for r in rec["routes"])))
        assert [r for _, r in pairs] == sorted(r for _, r in pairs)


# -- the answer ------------------------------------------------------------------------------
def member(text: str, score: float | None = None) -> Member:
    return Member(Candidate(text=text, score=score), PROMPT)


def test_majority_counts_different_texts_with_the_same_extracted_answer_together():
    population = [member("3 + 4 = 7. The answer is 7."),
                  member("Adding gives seven, so the answer is 7.0."),
                  member("I think it is 12. The answer is 12."),
                  member("Maybe 5? The answer is 5.")]
    answer = vote(population)
    assert answer.answer in ("7", "7.0") and answer.details["votes"] == 2


def test_majority_ties_go_to_the_higher_mean_confidence():
    population = [member("The answer is 4.", 1.0), member("The answer is 9.", 3.0),
                  member("The answer is 4.", 2.0), member("The answer is 9.", 2.5)]
    assert vote(population).answer == "9"
    population[0].candidate.score = 9.0
    assert vote(population).answer == "4"


def test_best_answer_is_published_after_every_loop():
    published = []

    async def go():
        from reasonloom.orchestrator.context import RunContext, RunState

        state = RunState(run_id="t", seed=0, roles=roles_of())
        ctx = RunContext(state, "evolve")
        ctx.publish_best = published.append
        from reasonloom.orchestrator.types import Problem
        return await evolve_module.evolve(Problem.from_text("What is 1 + 1?"),
                                          EvolveConfig(population=4, group_size=2, loops=3,
                                                       cut_points=(50,)), ctx)

    result = asyncio.run(go())
    assert len(published) == 3 and published[-1].answer == result.answer.answer


def test_docstring_example_runs():
    assert doctest.testmod(evolve_module).failed == 0


def test_shipped_recipes_are_valid_evolve_configs():
    for name, roles in (("squeeze_evolve", 3), ("evolve_single_model", 1)):
        recipe = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
        node = next(n for n in recipe["nodes"].values() if n["type"] == "evolve")
        cfg = EvolveConfig.model_validate(node["params"])
        ranked = cfg.roles or tuple(recipe.get("order") or recipe["models"])
        assert len(ranked) == roles and all(r in recipe["models"] for r in ranked)
        assert roles == 1 or len(cfg.cut_points) == roles - 1
        assert cfg.scorer in recipe["models"] or cfg.scorer in ("cheapest", "strongest")


def test_final_tie_is_broken_by_scoring_only_the_tied_leaders():
    from reasonloom.orchestrator.context import RunContext, RunState
    from reasonloom.strategies.evolve import score_tied_leaders

    scorer = Recording()
    roles = roles_of(backends={"cheap": scorer})
    ctx = RunContext(RunState(run_id="t", seed=0, roles=roles), "evolve")
    cfg = EvolveConfig(population=4)
    clear = [member("The answer is 4."), member("So 4. The answer is 4."),
             member("The answer is 9.")]
    asyncio.run(score_tied_leaders(clear, roles["cheap"], cfg, ctx))
    assert scorer.scored == [] and all(m.candidate.score is None for m in clear)
    tied = [member("The answer is 4."), member("Then 9. The answer is 9."),
            member("So 4. The answer is 4."), member("The answer is 9."), member("no idea")]
    asyncio.run(score_tied_leaders(tied, roles["cheap"], cfg, ctx))
    assert len(scorer.scored) == 4 and tied[4].candidate.score is None
    means = {a: sum(m.candidate.score for m in tied[:4] if a in m.candidate.text) / 2
             for a in ("4", "9")}
    assert vote(tied).answer == max(means, key=means.get)


def test_a_group_larger_than_the_population_is_a_config_error():
    with pytest.raises(ValueError, match="group_size 5 exceeds population 4"):
        EvolveConfig(population=4, group_size=5)
    with pytest.raises(ValueError, match="non-decreasing"):
        EvolveConfig(cut_points=(30.0, 10.0))
