"""Every selector against majority voting on a model that can reason (issue 22).

Model: qwen05 (Qwen2.5-Coder-0.5B-Instruct served by vLLM, `../shared/models/strong_model.sh`),
as the generator and as every model verifier (V1's setting: the model judges its own samples).
Problems: gsm8k dev rows 20+ (rows 0-19 are the tuning split and never reported; nothing here
was tuned on the reported rows). Pool: the first N = 8 samples of the adaptive benchmark's
pool (the same request: T 0.7, max 384 tokens, top-5 confidences), read from the shared call
cache where they exist, so the samples are paid once and every method selects from the same 8.
Per problem, one graph: samples -> majority, pointwise judge (P(Yes) from prompt log-probs),
mean log-prob of the sample (prompt log-probs), V1 tournament at B = 3N (ratings only).
Across the problem set: naive average of the normalised scores, Weaver over the judge,
log-prob, V1 win rate and answer frequency (label model fitted without labels over the set,
as the paper does), and Weaver over the pointwise ones.
Reported per method: accuracy, paired difference against majority with a 95% bootstrap
interval, verifier calls / tokens / $ per problem (the generation is shared and listed once,
at what it cost). Diagnostics: the pairwise judge's accuracy on mixed pairs (one right, one
wrong), its position bias (the first-shown solution's win share; pairs shown both ways that
got opposite verdicts), unparsed verdicts, the pointwise judge's AUROC within problems, and
Weaver's fitted TPR/FPR beside the true rates of the same binarised votes.

Rows go to benchmarks/results/real_selection_rows.jsonl as problems finish; a rerun resumes.

    python benchmarks/real_selection.py --base-url http://127.0.0.1:8012/v1 --quick   # 40
    python benchmarks/real_selection.py --base-url URL --problems 150
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (RESULTS, add_pool_arguments, billed, machine,  # noqa: E402
                                print_table, read_rows, write_result)
from benchmarks.adaptive import COMMON, load_problems, paired_ci, pool_roles  # noqa: E402
from benchmarks.confidence_signal import auroc  # noqa: E402
from benchmarks.selection_real import _scores_in_sample_order  # noqa: E402
from reasonloom.bench.graders import grade  # noqa: E402
from reasonloom.orchestrator.cache import SharedCache  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.roles import Roles  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Problem  # noqa: E402
from reasonloom.strategies.tournament import Comparison, order_inconsistency  # noqa: E402
from reasonloom.verifiers.answers import canonical  # noqa: E402
from reasonloom.verifiers.rules import answer_frequencies  # noqa: E402
from reasonloom.verifiers.weaver import (WeaverParams, binarise, minmax, weaver_fit,  # noqa: E402
                                         weaver_select)

N = 8
JUDGE_TOKENS = 12      # V1 ratings only: "Rating A: 7\nRating B: 3" and no more
# V1's judge: "rating" (the shipped recipe's ratings-only judge) or "logprob" (P("A") vs
# P("B"), nothing generated). A smoke run of 2 report problems with "rating" got "Rating A: 1,
# Rating B: 1" for all 48 comparisons (real_selection_rows_smoke_rating_judge.jsonl): qwen05
# writes the same rating whatever it reads. On the tuning split (gsm8k 0-19,
# real_selection_tune_v1logprob.json) "logprob" gives verdicts, though at chance on mixed pairs;
# it is the setting the report split runs with (chosen before any report problem was judged).
SETTINGS = {"v1_judge_mode": "logprob"}
ROWS = RESULTS / "real_selection_rows.jsonl"
NODES = {"pointwise_judge": "judge", "mean_logprob": "logprob", "v1_tournament": "v1"}
SCORED = ("judge", "logprob", "v1")   # the scoring nodes, named as their scores
# which nodes' calls each method pays for, besides the shared samples
VERIFIER_NODES = {"first_sample": [], "majority": [], "pointwise_judge": ["judge"],
                  **{f"close_vote_{s}_{m}": [s] for s in SCORED for m in (0, 1, 2)},
                  "mean_logprob": ["logprob"], "v1_tournament": ["v1"], "v1_vote_fallback": ["v1"],
                  "naive_average": ["judge", "logprob", "v1"],
                  "weaver": ["judge", "logprob", "v1"], "weaver_pointwise": ["judge", "logprob"]}


# v1 with vote_fallback: the majority decides where the judge's verdicts follow the order
VOTE_FALLBACK = 0.5
# answer-aware variants (score, margin): evaluated on the tuning split, one kept for reports
CLOSE_VOTE = [(score, margin) for score in SCORED for margin in (0, 1, 2)]


def graph(settings: dict) -> Graph:
    g = Graph()
    g.add("samples", "best_of_n", {**COMMON, "n": N}, {"problem": "problem"})
    pick = {"problem": "problem", "candidates": "samples.candidates"}
    g.add("majority", "majority", {}, {"candidates": "samples.candidates"})
    g.add("judge", "pointwise_select", {"verifier": "judge", "judge": "strong"}, pick)
    g.add("logprob", "pointwise_select", {"verifier": "logprob", "scorer": "strong"}, pick)
    g.add("v1", "v1_tournament", {"judge": "strong", "reasoning": False,
                                  "max_tokens": JUDGE_TOKENS,
                                  "judge_mode": settings["v1_judge_mode"]}, pick)
    g.set_output("v1")
    return g


def usage_of(result, node: str) -> dict:
    u = result.usage.by_node.get(node)
    if u is None:
        return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    return billed(u)


async def solve(row: dict, roles: Roles, cache: SharedCache, split: str, settings: dict
                ) -> dict:
    problem = Problem.from_text(row["question"], id=row["id"], gold=row["answer"])
    t0 = time.monotonic()
    result = await run(graph(settings), problem, roles, seed=0, shared_cache=cache)
    out = result.outputs
    samples = out["samples"]["candidates"]
    right = [grade("numeric", c.text, c.answer, row["answer"]) for c in samples]

    def correct(answer) -> bool:
        return grade("numeric", answer.text, answer.answer, row["answer"])

    return {"split": split, "settings": settings, "id": row["id"], "gold": row["answer"],
            "answers": [c.answer for c in samples],
            "right": right,
            "scores": {n: _scores_in_sample_order(samples, out[n]["candidates"]) for n in SCORED},
            "picks": {"first_sample": right[0], "majority": correct(out["majority"]["answer"]),
                      **{m: correct(out[n]["answer"]) for m, n in NODES.items()}},
            "v1_log": out["v1"]["answer"].details["log"],
            "usage": {n: usage_of(result, n) for n in ("samples", *SCORED)},
            "wall_s": round(time.monotonic() - t0, 2)}


def done_rows(split: str) -> dict[str, dict]:
    return {r["id"]: r for r in read_rows(ROWS) if r["split"] == split}


async def run_problems(problems: list[dict], roles: Roles, cache: SharedCache, at_once: int,
                       split: str, settings: dict) -> None:
    finished = done_rows(split)
    gate = asyncio.Semaphore(at_once)

    async def one(row: dict) -> None:
        if row["id"] in finished:
            return
        async with gate:
            out = await solve(row, roles, cache, split, settings)
        with ROWS.open("a") as fh:
            fh.write(json.dumps(out) + "\n")
        print(f"  {row['id']}: majority {'right' if out['picks']['majority'] else 'wrong'}, "
              f"v1 {'right' if out['picks']['v1_tournament'] else 'wrong'} "
              f"({out['wall_s']} s)", flush=True)

    await asyncio.gather(*(one(p) for p in problems))


def pairwise_diagnostics(rows: list[dict]) -> dict:
    """The V1 judge on mixed pairs, its position bias and its unparsed verdicts."""
    mixed_right = mixed = first_wins = decided = unparsed = total = 0
    verdicts: dict[tuple, list[float]] = {}
    for r in rows:
        for a, b, ra, rb in r["v1_log"]:
            total += 1
            if ra is None or rb is None:
                unparsed += 1
                continue
            outcome_a = 0.5 if ra == rb else float(ra > rb)
            if ra != rb:
                decided += 1
                first_wins += ra > rb
            verdicts.setdefault((r["id"], min(a, b), max(a, b)), []).append(
                outcome_a if a < b else 1 - outcome_a)
            if r["right"][a] != r["right"][b]:
                mixed += 1
                mixed_right += outcome_a if r["right"][a] else 1 - outcome_a
    both = [v for v in verdicts.values() if len(v) >= 2]
    flipped = sum(1 for v in both if len(set(v[:2])) > 1)
    return {"judge_mixed_pair_accuracy": round(mixed_right / mixed, 4) if mixed else None,
            "mixed_pairs": mixed,
            "first_shown_win_share": round(first_wins / decided, 4) if decided else None,
            "pairs_shown_both_ways": len(both),
            "both_ways_inconsistent_share": round(flipped / len(both), 4) if both else None,
            "v1_unparsed_share": round(unparsed / total, 4) if total else None}


def close_vote_pick(row: dict, score: str, margin: int) -> bool:
    """Answer-aware selection: the majority answer, except where the vote is close (answers
    within `margin` votes of the leader); there the one whose samples have the highest mean
    `score` wins. The verifier only speaks where the vote is uncertain. Returns: right?"""
    groups: dict[str, list[int]] = {}
    for i, answer in enumerate(row["answers"]):
        if answer is not None:
            groups.setdefault(canonical(answer), []).append(i)
    if not groups:
        return bool(row["right"][0])
    lead = max(len(g) for g in groups.values())
    close = [g for g in groups.values() if len(g) >= lead - margin]
    values = np.array(row["scores"][score], float)

    def mean_score(g: list[int]) -> float:
        seen = values[g][~np.isnan(values[g])]
        return float(seen.mean()) if seen.size else -np.inf

    best = max(close, key=lambda g: (mean_score(g), len(g)))
    return bool(row["right"][best[0]])


def judge_flips(row: dict, threshold: float = VOTE_FALLBACK) -> bool:
    """v1_tournament's `vote_fallback` rule on this problem's comparisons (same function)."""
    nan = float("nan")
    flips = order_inconsistency([Comparison(a, b, nan if ra is None else ra,
                                            nan if rb is None else rb)
                                 for a, b, ra, rb in row["v1_log"]])
    return flips is not None and flips >= threshold


def selection(rows: list[dict]) -> tuple[dict[str, list[bool]], dict]:
    """Per-problem picks plus the set-level methods (naive average, Weaver)."""
    picks = {m: [r["picks"][m] for r in rows] for m in rows[0]["picks"]}
    picks["v1_vote_fallback"] = [r["picks"]["majority"] if judge_flips(r) else
                                 r["picks"]["v1_tournament"] for r in rows]
    for score, margin in CLOSE_VOTE:
        picks[f"close_vote_{score}_{margin}"] = [close_vote_pick(r, score, margin) for r in rows]
    index = [p for p, r in enumerate(rows) for _ in r["answers"]]
    answers = [a for r in rows for a in r["answers"]]
    labels = np.array([x for r in rows for x in r["right"]], bool)
    names = [*SCORED, "frequency"]
    matrix = np.column_stack([np.array([s for r in rows for s in r["scores"][n]], float)
                              for n in SCORED] + [answer_frequencies(answers, index)])
    params = WeaverParams()
    normalised = np.column_stack([minmax(matrix[:, j], np.array(index) if n in params.per_problem
                                         else None) for j, n in enumerate(names)])
    naive = weaver_select(np.nan_to_num(np.nanmean(normalised, axis=1)), index, answers)
    picks["naive_average"] = [bool(labels[naive[p]]) for p in range(len(rows))]
    votes = binarise(normalised, names, params)
    fits = {}
    for method, cols in (("weaver", names), ("weaver_pointwise", ["judge", "logprob",
                                                                  "frequency"])):
        keep = [names.index(c) for c in cols]
        fit = weaver_fit(matrix[:, keep], index, cols, params)
        chosen = weaver_select(fit.posterior, index, answers)
        picks[method] = [bool(labels[chosen[p]]) for p in range(len(rows))]
        true_rates = {}
        for c in fit.kept:
            v = votes[:, names.index(c)]
            seen = ~np.isnan(v)
            true_rates[c] = {"tpr": round(float(v[seen & labels].mean()), 4),
                             "fpr": round(float(v[seen & ~labels].mean()), 4)}
        fits[method] = {"kept": fit.kept, "yes_rate": fit.yes_rate,
                        "fitted": None if fit.model is None else {
                            "prior": round(fit.model.prior, 4),
                            **{c: {"tpr": round(t, 4), "fpr": round(f, 4)} for c, t, f in
                               zip(fit.model.names, fit.model.tpr, fit.model.fpr)}},
                        "true": {"prior": round(float(labels.mean()), 4), **true_rates}}
    return picks, fits


def summarise(rows: list[dict]) -> dict:
    picks, fits = selection(rows)
    majority = np.array(picks["majority"])
    out: dict = {"problems": len(rows),
                 "pass_at_n_acc": round(float(np.mean([any(r["right"]) for r in rows])), 4),
                 "sample_acc": round(float(np.mean([x for r in rows for x in r["right"]])), 4)}
    n = len(rows)
    generation = {k: round(sum(r["usage"]["samples"][k] for r in rows) / n, 6)
                  for k in ("calls", "prompt_tokens", "completion_tokens", "cost_usd")}
    table, methods = [], {}
    for method, hits in picks.items():
        acc = np.array(hits)
        cost = {k: round(sum(r["usage"][node][k] for r in rows
                             for node in VERIFIER_NODES[method]) / n, 6)
                for k in ("calls", "prompt_tokens", "completion_tokens", "cost_usd")}
        diff = round(float((acc.astype(float) - majority).mean()), 4)
        ci = paired_ci(acc, majority) if method != "majority" else None
        methods[method] = {"accuracy": round(float(acc.mean()), 4), "diff_vs_majority": diff,
                           "diff_vs_majority_ci95": ci, "verification_per_problem": cost}
        out[f"{method}_acc"] = methods[method]["accuracy"]
        table.append((method, f"{acc.mean():.3f}", diff if ci else "-", ci or "-",
                      cost["calls"], f"{cost['prompt_tokens']:.0f}", f"{cost['cost_usd']:.6f}"))
    print_table(table, ("method", "acc", "vs majority", "95% CI", "verifier calls/problem",
                        "prompt tok", "$"))
    out["majority_acc"] = methods["majority"]["accuracy"]
    judge_auc = [a for r in rows if (a := auroc(np.array(r["scores"]["judge"], float),
                                                np.array(r["right"]))) is not None]
    out.update({"methods": methods, "generation_per_problem": generation, "weaver": fits,
                "diagnostics": {**pairwise_diagnostics(rows),
                                "pointwise_judge_auroc_within": round(float(np.mean(judge_auc)), 4)
                                if judge_auc else None,
                                "no_answer_share": round(float(np.mean(
                                    [a is None for r in rows for a in r["answers"]])), 4)}})
    return out


async def main(args: argparse.Namespace) -> None:
    roles = pool_roles(args, concurrency=64)
    cache = SharedCache(Path(args.cache))
    settings = dict(SETTINGS, **json.loads(args.settings or "{}"))
    split = args.split + args.tag
    problems = load_problems(args.split, args.problems)
    t0 = time.monotonic()
    print(f"{len(problems)} gsm8k problems ({args.split} split), N = {N}, {settings}",
          flush=True)
    await run_problems(problems, roles, cache, args.at_once, split, settings)
    cache.close()
    ids = {p["id"] for p in problems}
    rows = [r for r in done_rows(split).values() if r["id"] in ids]
    summary = summarise(rows)
    summary.update({"split": split, "settings": settings, "quick": args.quick,
                    "model": args.model, "machine": machine(),
                    "sampling": {**COMMON, "n": N}, "v1": {"budget": f"3N = {3 * N}",
                                                          "reasoning": False,
                                                          "max_tokens": JUDGE_TOKENS},
                    "prices": "0.1 / 0.4 $ per M prompt / completion tokens",
                    "wall_s_this_invocation": round(time.monotonic() - t0, 1),
                    "data": "gsm8k.jsonl rows 20+ (rows 0-19: tuning, not reported)",
                    "targets": {"best_minus_majority": ">= 0.03 with the 95% CI above 0 "
                                "(>= 150 problems)",
                                "v1_and_weaver": ">= majority_acc - 0.01"}})
    name = "real_selection" if split == "report" else f"real_selection_{split}"
    print("wrote", write_result(name, summary, keep_previous=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_pool_arguments(parser, problems=150)
    parser.add_argument("--at-once", type=int, default=2, help="problems in flight")
    ns = parser.parse_args()
    if ns.quick:
        ns.problems = min(ns.problems, 40)
    asyncio.run(main(ns))
