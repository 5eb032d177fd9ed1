"""V1's tournament: pure pairing/scoring helpers, the budgeted plan, and the nodes on a
scripted judge (real-engine runs are in test_verifiers_engine.py)."""
from __future__ import annotations

import asyncio
import math
import random
import re

from hypothesis import given, settings, strategies as st

from reasonloom.backends.base import GenerateRequest, TokenLogprob
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.strategies.tournament import (Comparison, RoundRobinPlan, TournamentPlan,
                                              comparison_weight, coverage_pairs,
                                              order_inconsistency,
                                              round_robin_pairs, swiss_pairs, weighted_win_rates)
from reasonloom.verifiers.judges import parse_pair_ratings


def test_weight_is_the_rating_gap_over_nine_with_a_floor():
    assert comparison_weight(10, 1) == 1.0
    assert math.isclose(comparison_weight(7, 4), 3 / 9)
    assert comparison_weight(6, 6) == 0.1
    assert comparison_weight(6, 5.5, floor=0.2) == 0.2


def test_weighted_win_rate_counts_wins_ties_and_losses_by_weight():
    comps = [Comparison(0, 1, 10, 1),    # 0 beats 1, weight 1
             Comparison(2, 0, 5, 4),     # 2 beats 0, weight 1/9
             Comparison(1, 2, 5, 5)]     # tie, weight 0.1
    mu = weighted_win_rates(4, comps)
    assert math.isclose(mu[0], 1.0 / (1 + 1 / 9))
    assert math.isclose(mu[1], 0.05 / 1.1)
    assert math.isclose(mu[2], (1 / 9 + 0.05) / (1 / 9 + 0.1))
    assert mu[3] == 0.5    # never compared


def test_unparsed_verdicts_carry_no_weight():
    mu = weighted_win_rates(2, [Comparison(0, 1, float("nan"), float("nan"))])
    assert mu == [0.5, 0.5]


def test_coverage_cycle_shows_each_candidate_first_once_and_second_once():
    for n in (2, 3, 7, 16):
        pairs = coverage_pairs(n, 2, random.Random(n))
        assert len(pairs) == n
        assert sorted(i for i, _ in pairs) == list(range(n))
        assert sorted(j for _, j in pairs) == list(range(n))


def test_swiss_pairs_closest_unmet_neighbours_within_the_window():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]
    met = {frozenset((0, 1))}
    pairs = swiss_pairs(scores, met, window=8)
    assert pairs[0] == (0, 2)            # 1 already met 0: the next closest
    assert (1, 3) in pairs
    assert all(frozenset(p) not in met for p in pairs)
    assert swiss_pairs([1.0, 0.9, 0.0], set(), window=1) == [(0, 1)]   # 2 is out of reach


def test_round_robin_meets_every_pair_once_with_balanced_positions():
    n = 9
    pairs = round_robin_pairs(n)
    assert len(pairs) == n * (n - 1) // 2
    assert len({frozenset(p) for p in pairs}) == len(pairs)
    firsts = [sum(i == c for i, _ in pairs) for c in range(n)]
    assert max(firsts) - min(firsts) <= 2


def _play(plan: TournamentPlan, judge) -> TournamentPlan:
    while batch := plan.next_round():
        plan.record([Comparison(i, j, *judge(i, j)) for i, j in batch])
    return plan


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 20), extra=st.integers(-25, 40), seed=st.integers(0, 10 ** 6),
       per_round=st.sampled_from([None, 1, 2, 3]), both=st.booleans(),
       nan_rate=st.sampled_from([0.0, 0.3]))
def test_tournament_never_exceeds_its_budget_and_covers_every_candidate(
        n, extra, seed, per_round, both, nan_rate):
    budget = max(0, n + extra)
    rng = random.Random(seed)

    def judge(i, j):
        if rng.random() < nan_rate:
            return float("nan"), float("nan")
        return float(rng.randint(1, 10)), float(rng.randint(1, 10))

    plan = _play(TournamentPlan(n, budget, rng=random.Random(seed), pairs_per_round=per_round,
                                both_orders=both), judge)
    assert plan.issued == len(plan.comparisons) <= budget
    assert all(c.first != c.second for c in plan.comparisons)
    if budget >= n >= 2:
        assert min(plan.degree()) >= 2
    if n >= 1:
        assert 0 <= plan.winner() < n


def test_swiss_rounds_show_pairs_in_both_orders_when_the_budget_allows():
    plan = _play(TournamentPlan(8, 24, rng=random.Random(0)), lambda i, j: (float(i), float(j)))
    swiss = plan.comparisons[8:]
    assert swiss and all(Comparison(c.second, c.first, c.rating_second, c.rating_first) in swiss
                         for c in swiss)


def test_a_reliable_judge_crowns_the_best_candidate():
    quality = [3, 9, 1, 5, 7, 2, 8, 4, 6, 0, 5, 3]
    judge = lambda i, j: (float(1 + quality[i]), float(1 + quality[j]))  # noqa: E731
    for seed in range(5):
        plan = _play(TournamentPlan(len(quality), 3 * len(quality), rng=random.Random(seed)), judge)
        assert plan.winner() == 1
    assert _play(RoundRobinPlan(len(quality), rng=random.Random(0)), judge).winner() == 1


def test_next_round_refuses_to_run_ahead_of_recorded_verdicts():
    plan = TournamentPlan(4, 12, rng=random.Random(0))
    plan.next_round()
    try:
        plan.next_round()
    except RuntimeError:
        return
    raise AssertionError("a second round was handed out before the first was recorded")


# -- nodes on a scripted judge -------------------------------------------------------------------

def _judge_text(req: GenerateRequest, index: int) -> str:
    """A judge that rates a solution 9 if it says 'answer is 7', else 2; writes samples too."""
    body = req.messages[-1].content
    if "### Solution A" not in body:
        return f"The answer is {[7, 3, 5, 7][index % 4]}."
    a, b = re.split(r"### Solution B", body.split("### Solution A", 1)[1])[:2]
    rate = lambda s: 9 if "answer is 7" in s else 2  # noqa: E731
    return f" {rate(a)}\nRating B: {rate(b)}"


def _roles(backend) -> Roles:
    return Roles({"strong": Role(RoleSpec(name="strong"), backend)})


def test_v1_node_picks_the_candidate_the_judge_prefers_within_budget():
    backend = ScriptedBackend(_judge_text)
    g = Graph()
    g.add("samples", "best_of_n", {"n": 4, "max_tokens": 16}, {"problem": "problem"})
    g.add("v1", "v1_tournament", {"budget_multiplier": 2, "reasoning": False, "top_k": 2},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.set_output("v1")
    result = asyncio.run(run(g, "What is 3 + 4?", _roles(backend)))
    assert result.answer.answer == "7"
    details = result.answer.details
    assert details["comparisons"] <= details["budget"] == 8
    assert result.usage.by_node["v1"].calls == details["comparisons"]
    assert len(details["log"]) == details["comparisons"]   # who met whom, with the ratings
    assert all(a != b and {a, b} <= set(range(4)) for a, b, _, _ in details["log"])
    top = result.outputs["v1"]["candidates"]
    assert len(top) == 2 and top[0].score >= top[1].score


class _LetterJudge(ScriptedBackend):
    """Prompt log-probs of a letter judge: the letter of the solution saying 'answer is 7'
    is likely (-0.1), the other unlikely (-2.5); generation writes the samples."""

    async def prompt_logprobs(self, messages, text, top_k=0):
        self.scored = getattr(self, "scored", 0) + 1
        body = messages[-1].content
        a = body.split("### Solution A", 1)[1].split("### Solution B")[0]
        right = "A" if "answer is 7" in a else "B"
        return [TokenLogprob(token=text, logprob=-0.1 if text == right else -2.5)]


def test_logprob_judge_mode_rates_by_letter_probability_and_generates_nothing():
    backend = _LetterJudge(_judge_text)
    g = Graph()
    g.add("samples", "best_of_n", {"n": 4, "max_tokens": 16}, {"problem": "problem"})
    g.add("v1", "v1_tournament", {"budget_multiplier": 2, "judge_mode": "logprob"},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.set_output("v1")
    result = asyncio.run(run(g, "What is 3 + 4?", _roles(backend)))
    assert result.answer.answer == "7"
    log = result.answer.details["log"]
    assert log and all(abs(ra + rb - 11) < 1e-9 for _, _, ra, rb in log)   # 1 + 9p, 1 + 9(1-p)
    assert backend.scored == 2 * len(log)                         # P("A") and P("B") each
    assert result.usage.by_node["v1"].completion_tokens == 0


def test_order_inconsistency_tells_a_position_biased_judge_from_a_reliable_one():
    quality = [3, 9, 1, 5, 7, 2, 8, 4]
    reliable = _play(TournamentPlan(8, 24, rng=random.Random(0)),
                     lambda i, j: (float(1 + quality[i]), float(1 + quality[j])))
    first_wins = _play(TournamentPlan(8, 24, rng=random.Random(0)), lambda i, j: (9.0, 2.0))
    assert order_inconsistency(reliable.comparisons) == 0.0
    assert order_inconsistency(first_wins.comparisons) == 1.0
    assert order_inconsistency([Comparison(0, 1, 9.0, 2.0)]) is None   # no pair seen both ways


def _first_shown_wins(req: GenerateRequest, index: int) -> str:
    if "### Solution A" not in req.messages[-1].content:
        return f"The answer is {[3, 7, 5, 7][index % 4]}."
    return " 9\nRating B: 2"


def test_v1_falls_back_to_the_vote_when_its_judge_only_follows_the_order():
    def tournament(params: dict):
        g = Graph()
        g.add("samples", "best_of_n", {"n": 4, "max_tokens": 16}, {"problem": "problem"})
        g.add("v1", "v1_tournament", {"reasoning": False, **params},
              {"problem": "problem", "candidates": "samples.candidates"})
        g.set_output("v1")
        return asyncio.run(run(g, "What is 3 + 4?", _roles(ScriptedBackend(_first_shown_wins))))

    plain, guarded = tournament({}), tournament({"vote_fallback": 0.5})
    assert plain.answer.details["order_inconsistency"] == 1.0
    assert "fell_back_to_vote" not in plain.answer.details
    assert guarded.answer.answer == "7" and guarded.answer.details["fell_back_to_vote"]
    assert guarded.usage.total.calls == plain.usage.total.calls   # the judge still ran


def test_round_robin_and_pointwise_nodes_select_and_rank():
    backend = ScriptedBackend(_judge_text)
    g = Graph()
    g.add("samples", "best_of_n", {"n": 4, "max_tokens": 16}, {"problem": "problem"})
    g.add("rr", "round_robin", {"reasoning": False},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.add("freq", "pointwise_select", {"verifier": "frequency", "top_k": 1},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.set_output("rr")
    result = asyncio.run(run(g, "What is 3 + 4?", _roles(backend)))
    assert result.answer.answer == "7"
    assert result.usage.by_node["rr"].calls == 6
    assert result.outputs["freq"]["answer"].answer == "7"
    assert len(result.outputs["freq"]["candidates"]) == 1


def test_pair_rating_parser_reads_the_formats_judges_write():
    assert parse_pair_ratings("Rating A: 8\nRating B: 3") == (8.0, 3.0)
    assert parse_pair_ratings("**Rating A:** 7/10\n**Rating B:** 2/10") == (7.0, 2.0)
    assert parse_pair_ratings("rating_A = 15, rating_B = 0") == (10.0, 1.0)
    assert parse_pair_ratings("Solution A: 4 + 5 = 9.\nRating A: 9\nRating B: 2") == (9.0, 2.0)
    a, b = parse_pair_ratings("A looks better")
    assert math.isnan(a) and math.isnan(b)
