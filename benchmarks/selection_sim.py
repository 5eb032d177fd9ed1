"""Selection methods on simulated problems: V1's tournament, round-robin, Weaver, baselines.

Every method runs the REAL selection code (TournamentPlan, RoundRobinPlan, weaver_fit,
weaver_select, majority_answer) on one shared simulated world: the same candidate pools,
the same pointwise verifier scores and the same pairwise judge verdict for each ordered pair
(a method that asks for (i shown first, j second) gets the one pre-drawn verdict for it).

The world (written to the JSON as `setting`):
- N = 16 samples per problem; each is correct with the problem's rate p ~ Beta(2, 2).
- Wrong samples give one of 3 distractor answers per problem, with weights ~ Dirichlet(1,1,1),
  so wrong answers cluster as they do in practice and majority vote can be fooled.
- Pairwise judge, verdict on (first, second): in a mixed pair it favours the correct one with
  probability 0.70 + 0.10 if the correct one is shown first, 0.70 - 0.10 if second (position
  bias 0.10); in a same-class pair it ties with probability 0.3, else favours the first with
  0.5 + 0.10. Ratings 1-10: the favoured one leads by 1 + Binomial(8, 0.45) points when the
  verdict is right and 1 + Binomial(8, 0.2) otherwise (judges are surer when right).
- Five pointwise verifiers with (TPR, FPR) = (0.9, 0.3), (0.8, 0.2), (0.7, 0.4), (0.6, 0.5),
  (0.95, 0.6): vote ~ Bernoulli(TPR or FPR), score = 0.5 * vote + 0.5 * U(0, 1). The first
  is "the pointwise judge" of the pointwise baseline.
Methods: first sample; majority; pointwise judge (argmax of verifier 1); round-robin (all
120 pairs, one order); V1 at B = N, 2N, 3N (the node's defaults: one Swiss pair per round)
and at 3N with the paper's whole-table Swiss rounds (`v1_3n_full_rounds`); naive average of the normalised scores of the 5
verifiers + answer frequency; Weaver unsupervised; Weaver with a 20-problem labelled dev set;
oracle-weighted (naive Bayes with the TRUE rates and prior: the label model's ceiling).

    python benchmarks/selection_sim.py --quick     # 2,000 problems, ~1 min
    python benchmarks/selection_sim.py             # 10,000 problems
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, print_table, python_version, write_result  # noqa: E402
from reasonloom.orchestrator.types import Candidate  # noqa: E402
from reasonloom.strategies.tournament import (Comparison, RoundRobinPlan,  # noqa: E402
                                              TournamentPlan)
from reasonloom.verifiers.answers import majority_answer  # noqa: E402
from reasonloom.verifiers.rules import answer_frequencies  # noqa: E402
from reasonloom.verifiers.weaver import (LabelModel, WeaverParams, minmax,  # noqa: E402
                                         weaver_fit, weaver_select)

SETTING = {
    "samples_per_problem": 16,
    "correct_rate": "Beta(2, 2) per problem",
    "distractors": {"count": 3, "weights": "Dirichlet(1, 1, 1) per problem"},
    "pairwise_judge": {"accuracy": 0.70, "position_bias": 0.10, "same_class_tie": 0.3,
                       "gap_when_right": "1 + Binomial(8, 0.45)",
                       "gap_when_wrong_or_same_class": "1 + Binomial(8, 0.2)"},
    "pointwise_verifiers": [[0.9, 0.3], [0.8, 0.2], [0.7, 0.4], [0.6, 0.5], [0.95, 0.6]],
    "verifier_score": "0.5 * vote + 0.5 * U(0, 1)",
    "pointwise_judge": "verifier 1 (TPR 0.9, FPR 0.3)",
    "weaver": "threshold 0.5, drop yes-rate <0.1 or >0.9, EM, answer frequency added",
    "dev_set_problems": 20,
}


class World:
    """One simulated problem set: pools, verdicts and verifier scores, drawn once."""

    def __init__(self, problems: int, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.problems, self.n = problems, n
        rate = rng.beta(2, 2, problems)
        self.correct = rng.random((problems, n)) < rate[:, None]
        weights = rng.dirichlet(np.ones(3), problems)
        wrong = np.array([rng.choice(3, n, p=w) for w in weights])
        self.answers = np.where(self.correct, "42", np.char.add("d", wrong.astype(str)))
        self._draw_judge(rng)
        tpr_fpr = np.array(SETTING["pointwise_verifiers"])
        rates = np.where(self.correct[..., None], tpr_fpr[:, 0], tpr_fpr[:, 1])
        votes = rng.random(rates.shape) < rates
        self.scores = 0.5 * votes + 0.5 * rng.random(rates.shape)   # (problems, n, 5)

    def _draw_judge(self, rng: np.random.Generator) -> None:
        """ratings[p, i, j] = (rating of i, rating of j) when i is shown first, j second."""
        p, n = self.problems, self.n
        ci, cj = self.correct[:, :, None], self.correct[:, None, :]
        mixed = ci != cj
        favour_first = np.where(mixed, rng.random((p, n, n)) < np.where(ci, 0.80, 0.40),
                                rng.random((p, n, n)) < 0.60)
        tie = ~mixed & (rng.random((p, n, n)) < 0.3)
        right = mixed & (favour_first == ci)
        gap = 1 + np.where(right, rng.binomial(8, 0.45, (p, n, n)), rng.binomial(8, 0.2, (p, n, n)))
        gap = np.where(tie, 0, gap)
        low = 1 + np.floor(rng.random((p, n, n)) * (10 - gap))   # loser's rating in 1..10-gap
        high = low + gap
        self.ratings = np.stack([np.where(favour_first, high, low),
                                 np.where(favour_first, low, high)], axis=-1)

    def judge(self, problem: int, first: int, second: int) -> Comparison:
        r = self.ratings[problem, first, second]
        return Comparison(first, second, float(r[0]), float(r[1]))


def play(world: World, problem: int, plan: TournamentPlan) -> TournamentPlan:
    while batch := plan.next_round():
        plan.record([world.judge(problem, i, j) for i, j in batch])
    return plan


def pairwise_accuracy(world: World, make_plan) -> tuple[float, list[int]]:
    hits, used = 0, []
    for p in range(world.problems):
        plan = play(world, p, make_plan(random.Random(p)))
        hits += world.correct[p, plan.winner()]
        used.append(plan.issued)
    return hits / world.problems, used


def majority_accuracy(world: World) -> float:
    hits = 0
    for p in range(world.problems):
        cands = [Candidate(text="", answer=str(a)) for a in world.answers[p]]
        answer, _ = majority_answer(cands)
        hits += answer == "42"
    return hits / world.problems


def flat(world: World) -> tuple[np.ndarray, list[int], list[str], np.ndarray]:
    """Items as rows: scores (items x 6, answer frequency last), problem index, answers."""
    index = np.repeat(np.arange(world.problems), world.n)
    answers = world.answers.reshape(-1).tolist()
    freq = np.asarray(answer_frequencies(answers, index))
    scores = np.column_stack([world.scores.reshape(-1, 5), freq])
    return scores, index.tolist(), answers, world.correct.reshape(-1)


NAMES = ["v1", "v2", "v3", "v4", "v5", "frequency"]


def selection_accuracy(world: World, chosen: dict[int, int]) -> float:
    labels = world.correct.reshape(-1)
    return float(np.mean([labels[chosen[p]] for p in range(world.problems)]))


def oracle_model(labels: np.ndarray, votes_freq: np.ndarray) -> LabelModel:
    """True rates for the planted verifiers; the frequency verifier's measured with labels."""
    planted = np.array(SETTING["pointwise_verifiers"])
    f_tpr = float(votes_freq[labels].mean())
    f_fpr = float(votes_freq[~labels].mean())
    return LabelModel(names=tuple(NAMES), prior=0.5, tpr=(*planted[:, 0], f_tpr),
                      fpr=(*planted[:, 1], f_fpr))


def run(problems: int, seed: int) -> dict:
    t0 = time.time()
    world = World(problems, SETTING["samples_per_problem"], seed)
    n = world.n
    acc: dict[str, float] = {}
    acc["first_sample"] = float(world.correct[:, 0].mean())
    acc["pass_at_n"] = float(world.correct.any(axis=1).mean())
    acc["majority"] = majority_accuracy(world)
    acc["pointwise_judge"] = float(np.mean(
        world.correct[np.arange(problems), world.scores[:, :, 0].argmax(axis=1)]))
    acc["round_robin"], rr_used = pairwise_accuracy(world, lambda r: RoundRobinPlan(n, rng=r))
    used = {}
    for mult in (1, 2, 3):
        acc[f"v1_{mult}n"], used[mult] = pairwise_accuracy(
            world, lambda r, m=mult: TournamentPlan(n, m * n, rng=r))
    acc["v1_3n_full_rounds"], _ = pairwise_accuracy(
        world, lambda r: TournamentPlan(n, 3 * n, rng=r, pairs_per_round=None))
    scores, index, answers, labels = flat(world)
    params = WeaverParams()
    normalised = np.column_stack([minmax(scores[:, j], np.array(index) if name == "frequency"
                                         else None) for j, name in enumerate(NAMES)])
    naive = normalised.mean(axis=1)
    acc["naive_average"] = selection_accuracy(world, weaver_select(naive, index, answers))
    fit = weaver_fit(scores, index, NAMES, params)
    acc["weaver"] = selection_accuracy(world, weaver_select(fit.posterior, index, answers))
    dev = np.full(len(labels), np.nan)
    dev_rows = np.array(index) < SETTING["dev_set_problems"]
    dev[dev_rows] = labels[dev_rows]
    fit_dev = weaver_fit(scores, index, NAMES, params, labels=dev)
    acc["weaver_dev20"] = selection_accuracy(world, weaver_select(fit_dev.posterior, index,
                                                                  answers))
    freq_votes = (normalised[:, -1] >= params.threshold).astype(float)
    oracle = oracle_model(labels, freq_votes)
    fit_oracle = weaver_fit(scores, index, NAMES, params, model=oracle)
    acc["oracle_weighted"] = selection_accuracy(world, weaver_select(fit_oracle.posterior,
                                                                     index, answers))
    planted = np.array(SETTING["pointwise_verifiers"])
    estimated = {name: (round(fit.model.tpr[i], 3), round(fit.model.fpr[i], 3))
                 for i, name in enumerate(fit.model.names)} if fit.model else {}
    return {
        "problems": problems, "seed": seed, "setting": SETTING,
        **{f"{k}_acc": round(v, 4) for k, v in acc.items()},
        "v1_1n_comparisons": max(used[1]), "v1_2n_comparisons": max(used[2]),
        "v1_3n_comparisons": max(used[3]), "v1_3n_mean_comparisons": float(np.mean(used[3])),
        "round_robin_comparisons": max(rr_used),
        "weaver_kept": fit.kept, "weaver_yes_rate": fit.yes_rate,
        "weaver_estimated_tpr_fpr": estimated,
        "weaver_max_rate_error_planted": round(float(max(
            max(abs(fit.model.tpr[i] - planted[i, 0]), abs(fit.model.fpr[i] - planted[i, 1]))
            for i in range(5) if f"v{i + 1}" in fit.model.names)), 4) if fit.model else None,
        "wall_s": round(time.time() - t0, 1), "machine": machine(), "python": python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 problems (default 10,000)")
    parser.add_argument("--problems", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    problems = args.problems or (2000 if args.quick else 10000)
    result = run(problems, args.seed)
    rows = [(name.removesuffix("_acc"), f"{value:.3f}") for name, value in result.items()
            if name.endswith("_acc")]
    print_table(rows, ("method", "accuracy"))
    print(f"\nV1 3N comparisons (max per problem): {result['v1_3n_comparisons']}; "
          f"round-robin: {result['round_robin_comparisons']}")
    checks = {
        "v1_3n >= round_robin - 0.01": result["v1_3n_acc"] >= result["round_robin_acc"] - 0.01,
        "v1_3n comparisons <= 48": result["v1_3n_comparisons"] <= 48,
        "weaver > max(majority, naive_average)": result["weaver_acc"] > max(
            result["majority_acc"], result["naive_average_acc"]),
    }
    result["checks"] = checks
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    print(f"wrote {write_result('selection_sim', result)}")


if __name__ == "__main__":
    main()
