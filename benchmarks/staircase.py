"""Staircase streaming vs vanilla Mixture-of-Agents (arXiv 2510.05059 vs 2406.04692) on
MT-Bench first turns, with the embedded model: time to the first answer token, wall time,
tokens, calls, re-prompts, and a blind judge's P(correct) for both final answers.

    python benchmarks/staircase.py --quick     # 8 questions, under 15 minutes on 2 CPU cores
    python benchmarks/staircase.py             # 20 questions

Both modes run the same graph (3 proposers + 1 aggregator, max_tokens 192) with the same
seeds, one run at a time, alternating which mode goes first per question. Writes
benchmarks/results/staircase.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pydantic import Field  # noqa: E402

from reasonloom.orchestrator.context import RunContext  # noqa: E402
from reasonloom.orchestrator.registry import register_node  # noqa: E402
from reasonloom.orchestrator.types import Candidate, FrozenModel, Problem  # noqa: E402

TEMPERATURES = (0.6, 0.8, 1.0)   # three proposers = three samplings of the one embedded model
# Block size 32 (CPU default 128): the prefix cache reuses whole blocks only, and the shared
# prefix of a re-prompt (standing instruction + question + first response) is a few hundred
# tokens; the standing instruction alone (~130 tokens with the chat header) is 4 blocks.
# Eager: torch.compile of the CPU engine takes 5-10 minutes on a busy 2-core machine.
ENGINE = {"max_model_len": 4096, "block_size": 32, "enforce_eager": True}
# The verifiers' pointwise judge asks "Is the proposed solution correct?"; this system message
# says what "correct" means for open-ended chat requests.
JUDGE_SYSTEM = ("You grade answers that AI assistants wrote to users' requests. An answer is "
                "correct when it does what the request asks, accurately, relevantly and "
                "clearly; off-topic, wrong, repetitive or unfinished answers are not.")
# two-sided 95% Student t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
       17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


class JudgeConfig(FrozenModel):
    """The verifiers' PointwiseJudge in log-prob mode: P(yes) that one answer is correct, from
    two prefill-only calls. It sees the question and the answer, never which mode wrote it."""

    role: str = "judge"
    answer: str


@register_node("bench_judge", JudgeConfig, inputs={"problem": "problem"},
               outputs={"text": "text"})
async def bench_judge(inputs: dict, cfg: JudgeConfig, ctx: RunContext) -> dict:
    from reasonloom.verifiers.judges import PointwiseJudge

    judge = PointwiseJudge(role=cfg.role, mode="logprob", system=JUDGE_SYSTEM)
    [p_yes] = await judge.score(inputs["problem"], [Candidate(text=cfg.answer)], ctx, "judge")
    return {"text": repr(p_yes)}


def data_dir() -> Path:
    path = Path(os.environ.get("REASONLOOM_DATA", "../shared/data")).expanduser()
    return path if path.is_absolute() else (ROOT / path).resolve()


def load_questions(n: int) -> list[dict[str, Any]]:
    """n first-turn questions, round-robin over MT-Bench's categories (file order)."""
    path = data_dir() / "mt_bench_questions.jsonl"
    if not path.exists():
        sys.exit(f"staircase benchmark: {path} not found (set REASONLOOM_DATA)")
    by_category: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_category.setdefault(row["category"], []).append(row)
    picked: list[dict] = []
    while len(picked) < n and any(by_category.values()):
        for rows in by_category.values():
            if rows and len(picked) < n:
                picked.append(rows.pop(0))
    return [{"id": r["question_id"], "category": r["category"], "question": r["turns"][0]}
            for r in picked]


def moa_graph(mode: str, args: argparse.Namespace):
    from reasonloom.orchestrator.graph import Graph

    g = Graph()
    g.add("moa", "moa", {
        "mode": mode, "system": None, "first_chunk_tokens": args.first_chunk,
        "segment_tokens": args.segment, "chunk_tokens": args.chunk,
        "layers": [[{"role": "proposer", "temperature": t, "max_tokens": args.max_tokens}
                    for t in TEMPERATURES]],
        "aggregator": {"role": "aggregator", "temperature": 0.3, "max_tokens": args.max_tokens}},
        {"problem": "problem"})
    g.set_output("moa")
    return g


def judge_graph(answer: str):
    from reasonloom.orchestrator.graph import Graph

    g = Graph()
    g.add("judge", "bench_judge", {"answer": answer}, {"problem": "problem"})
    g.set_output("judge")
    return g


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def paired_ci95(diffs: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    df = len(diffs) - 1
    t = T95.get(df) or T95[max(k for k in T95 if k <= df)]
    half = t * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


async def run_one(mode: str, question: dict, seed: int, roles, args) -> dict[str, Any]:
    from reasonloom.orchestrator.scheduler import run

    problem = Problem.from_text(question["question"], id=question["id"])
    timeline: list[tuple[str, float]] = []   # answer deltas and aggregator segment starts
    first_agg: dict[str, int] = {}   # the aggregator's first call: prompt and cached tokens

    def watch(event) -> None:
        if event.kind == "moa_segment" or (event.kind == "token_delta"
                                           and event.data.get("answer")):
            timeline.append((event.kind, event.t))
        elif (event.kind == "call_finished" and event.data.get("role") == "aggregator"
              and not first_agg):
            first_agg.update(prompt=event.data["prompt_tokens"],
                             cached=event.data.get("cached_prompt_tokens") or 0)

    result = await run(moa_graph(mode, args), problem, roles, seed=seed, subscribers=[watch])
    total = result.usage.total
    details = result.answer.details
    return {"mode": mode, "id": question["id"], "ttft_s": result.ttft_s, "wall_s": result.wall_s,
            "tokens": total.total_tokens, "prompt_tokens": total.prompt_tokens,
            "cached_prompt_tokens": total.cached_prompt_tokens,
            "completion_tokens": total.completion_tokens, "calls": total.calls,
            "reprompts": details["reprompts"], "aggregator_calls": details["aggregator_calls"],
            "final_prompt_saw_full_proposals": details["final_prompt_saw_full_proposals"],
            "aggregator_started_s": details.get("aggregator_started_s"),
            "first_aggregator_prompt_tokens": first_agg.get("prompt"),
            "first_aggregator_cached_tokens": first_agg.get("cached"),
            **answer_gaps(timeline),
            "answer": result.answer.text,
            "proposal_tokens": [c.usage.completion_tokens for c in result.answer.candidates],
            "proposals": [c.text for c in result.answer.candidates]}


def answer_gaps(timeline: list[tuple[str, float]]) -> dict[str, float | None]:
    """What the caller sees: the median gap between answer tokens inside a segment, and the
    mean gap across a segment boundary (the re-prompt's prefill: the staircase's step)."""
    inside, across, last, boundary = [], [], None, False
    for kind, t in timeline:
        if kind == "moa_segment":
            boundary = last is not None
            continue
        if last is not None:
            (across if boundary else inside).append(t - last)
        last, boundary = t, False
    return {"token_gap_s": statistics.median(inside) if inside else None,
            "reprompt_gap_s": statistics.fmean(across) if across else None}


async def judge(question: dict, answer: str, roles) -> float | None:
    from reasonloom.orchestrator.scheduler import run

    problem = Problem.from_text(question["question"], id=question["id"])
    result = await run(judge_graph(answer), problem, roles, seed=0)
    p_yes = float(result.outputs["judge"]["text"])
    return None if math.isnan(p_yes) else p_yes


def summarize(rows: list[dict]) -> dict[str, Any]:
    ttft = [r["ttft_s"] for r in rows]
    return {"answers": len(rows), "ttft_median_s": statistics.median(ttft),
            "ttft_p90_s": percentile(ttft, 0.9),
            "wall_median_s": statistics.median(r["wall_s"] for r in rows),
            "wall_p90_s": percentile([r["wall_s"] for r in rows], 0.9),
            "tokens_mean": statistics.fmean(r["tokens"] for r in rows),
            "completion_tokens_mean": statistics.fmean(r["completion_tokens"] for r in rows),
            "prompt_cache_hit": (sum(r["cached_prompt_tokens"] for r in rows)
                                 / max(1, sum(r["prompt_tokens"] for r in rows))),
            "calls_mean": statistics.fmean(r["calls"] for r in rows),
            "reprompts_per_answer": statistics.fmean(r["reprompts"] for r in rows),
            "final_prompt_saw_full_proposals": statistics.fmean(
                float(r["final_prompt_saw_full_proposals"]) for r in rows),
            "token_gap_median_s": _median_of(rows, "token_gap_s"),
            "reprompt_gap_mean_s": _mean_of(rows, "reprompt_gap_s")}


def _median_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.fmean(values) if values else None


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from reasonloom.backends.factory import BackendSpec, build_backend
    from reasonloom.orchestrator.roles import Role, Roles, RoleSpec

    questions = load_questions(args.limit or (8 if args.quick else 20))
    backend = build_backend(BackendSpec(backend="embedded", engine=json.loads(args.engine)))
    t0 = time.time()
    await backend.engine()
    engine_start_s = time.time() - t0
    roles = Roles({name: Role(RoleSpec(name=name), backend)
                   for name in ("aggregator", "proposer", "judge")},
                  order=["aggregator", "proposer", "judge"])
    warm = argparse.Namespace(**{**vars(args), "max_tokens": 16})
    await run_one("staircase", {"id": "warmup", "question": "Say hello."}, 0, roles, warm)
    load_before = os.getloadavg()[0]
    rows: dict[str, list[dict]] = {"vanilla": [], "staircase": []}
    for i, q in enumerate(questions):
        order = ("vanilla", "staircase") if i % 2 == 0 else ("staircase", "vanilla")
        for mode in order:
            row = await run_one(mode, q, seed=i, roles=roles, args=args)
            rows[mode].append(row)
            print(f"  q{q['id']:<4} {mode:<10} ttft {row['ttft_s']:6.2f}s  wall "
                  f"{row['wall_s']:6.2f}s  calls {row['calls']:2d}  re-prompts "
                  f"{row['reprompts']}", flush=True)
    # The judge sees (question, answer) only, in a shuffled order (prefill-only scoring: no
    # sampling noise, the same answer always gets the same score).
    jobs = [(i, mode) for i in range(len(questions)) for mode in rows]
    random.Random(0).shuffle(jobs)
    scores: dict[str, list[float | None]] = {m: [None] * len(questions) for m in rows}
    for i, mode in jobs:
        scores[mode][i] = await judge(questions[i], rows[mode][i]["answer"], roles)
    pairs = [(v, s) for v, s in zip(scores["vanilla"], scores["staircase"])
             if v is not None and s is not None]
    diff, lo, hi = paired_ci95([s - v for v, s in pairs]) if pairs else (float("nan"),) * 3
    summary = {mode: summarize(rs) for mode, rs in rows.items()}
    v, s = summary["vanilla"], summary["staircase"]
    same = sum(a["proposals"] == b["proposals"] for a, b in zip(rows["vanilla"],
                                                               rows["staircase"]))
    # The ratio staircase can reach at best: its first token needs the first chunk (+ about
    # one step for the aggregator's prefill), vanilla's the longest proposal (+ one step).
    # In decode steps, as a ratio of medians like ttft_ratio.
    floor = (args.first_chunk + 1) / statistics.median(max(r["proposal_tokens"]) + 1
                                                       for r in rows["vanilla"])
    return {
        "benchmark": "staircase", "quick": args.quick, "questions": len(questions),
        "model": "SmolLM2-135M-Instruct (embedded vLLM, CPU)", "engine": json.loads(args.engine),
        "proposers": len(TEMPERATURES), "max_tokens": args.max_tokens,
        "first_chunk_tokens": args.first_chunk, "segment_tokens": args.segment,
        "chunk_tokens": args.chunk,
        "ttft_ratio": s["ttft_median_s"] / v["ttft_median_s"],
        "wall_ratio": s["wall_median_s"] / v["wall_median_s"],
        "ttft_ratio_floor": floor,
        "proposal_tokens_mean": {m: statistics.fmean(t for r in rs for t in r["proposal_tokens"])
                                 for m, rs in rows.items()},
        "reprompts_per_answer": s["reprompts_per_answer"],
        "final_prompt_saw_full_proposals": s["final_prompt_saw_full_proposals"],
        "judge": "verifiers.judges.PointwiseJudge, log-prob mode: mean P(yes) that the answer "
                 "is correct (0-1), the embedded model as judge",
        "judge_score_vanilla": statistics.fmean(a for a, _ in pairs) if pairs else None,
        "judge_score_staircase": statistics.fmean(b for _, b in pairs) if pairs else None,
        "judge_diff": diff, "judge_diff_ci95": [lo, hi], "judge_pairs": len(pairs),
        "proposals_identical_across_modes": same / len(questions),
        "ttft_breakdown": ttft_breakdown(rows),
        "notes": [
            "Both modes use one aggregator prompt layout (moa.aggregator_messages): the "
            "standing aggregation instruction first, then the request, the responses and a "
            "short cue. The instruction is the same for every request, so after the warm-up "
            "run (and on any server after its first request) it is a prefix-cache hit; the "
            "warm-up question is not one of the measured questions.",
            "Each question runs in both modes one after the other (order alternates), so the "
            "second mode's proposers find their prompt cached and its aggregator finds the "
            "request's blocks cached; ttft_breakdown splits the staircase's TTFT by order.",
        ],
        "modes": summary, "engine_start_s": engine_start_s,
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(),
        "per_question": [{"id": q["id"], "category": q["category"],
                          **{f"{m}_{k}": rows[m][i][k] for m in rows
                             for k in ("ttft_s", "wall_s", "tokens", "reprompts",
                                       "proposal_tokens", "reprompt_gap_s")},
                          "staircase_aggregator_started_s":
                              rows["staircase"][i]["aggregator_started_s"],
                          "first_mode": "vanilla" if i % 2 == 0 else "staircase",
                          **{f"{m}_first_aggregator_{k}_tokens":
                             rows[m][i][f"first_aggregator_{k}_tokens"]
                             for m in rows for k in ("prompt", "cached")},
                          "judge_vanilla": scores["vanilla"][i],
                          "judge_staircase": scores["staircase"][i]}
                         for i, q in enumerate(questions)],
    }


def ttft_breakdown(rows: dict[str, list[dict]]) -> dict[str, Any]:
    """Where the staircase's first answer token waits: for every proposer's first chunk
    (node start to the aggregator's first call), then for the aggregator's first call (its
    prefill, behind the engine step in flight, plus the run's start-up). With the prompts'
    first-call sizes. The same question runs in both modes one after the other (which mode
    first alternates), so the second mode's aggregator finds the question's blocks in the
    prefix cache: the staircase's TTFT is split by which mode ran first to show that effect."""
    s = rows["staircase"]
    med = statistics.median
    return {
        "staircase_first_chunks_median_s": med(r["aggregator_started_s"] for r in s),
        "staircase_aggregator_to_first_token_median_s": med(r["ttft_s"] - r["aggregator_started_s"]
                                                            for r in s),
        **{f"{m}_first_aggregator_{k}_tokens_median":
           med(r[f"first_aggregator_{k}_tokens"] or 0 for r in rs)
           for m, rs in rows.items() for k in ("prompt", "cached")},
        "staircase_ttft_median_s_when_run_first": med(r["ttft_s"] for r in s[1::2]),
        "staircase_ttft_median_s_when_run_second": med(r["ttft_s"] for r in s[0::2]),
    }


def print_table(out: dict[str, Any]) -> None:
    v, s = out["modes"]["vanilla"], out["modes"]["staircase"]
    print(f"\nMoA vanilla vs staircase, {out['questions']} MT-Bench questions, "
          f"{out['proposers']} proposers + aggregator, max_tokens {out['max_tokens']}, "
          f"first chunk {out['first_chunk_tokens']}, segment {out['segment_tokens']}")
    print(f"{'':28}{'vanilla':>12}{'staircase':>12}")
    for label, key, fmt in [("TTFT median (s)", "ttft_median_s", "{:12.2f}"),
                            ("TTFT p90 (s)", "ttft_p90_s", "{:12.2f}"),
                            ("wall median (s)", "wall_median_s", "{:12.2f}"),
                            ("tokens / answer", "tokens_mean", "{:12.0f}"),
                            ("completion tokens / answer", "completion_tokens_mean", "{:12.0f}"),
                            ("prompt prefix-cache hits", "prompt_cache_hit", "{:12.2f}"),
                            ("calls / answer", "calls_mean", "{:12.1f}"),
                            ("re-prompts / answer", "reprompts_per_answer", "{:12.1f}"),
                            ("last prompt saw full", "final_prompt_saw_full_proposals",
                             "{:12.2f}")]:
        print(f"{label:28}" + fmt.format(v[key]) + fmt.format(s[key]))
    gaps = [s["token_gap_median_s"], s["reprompt_gap_mean_s"]]
    if None not in gaps:
        print(f"staircase: answer tokens every {gaps[0]:.3f}s inside a segment, a "
              f"{gaps[1]:.3f}s gap at each re-prompt")
    b = out["ttft_breakdown"]
    print(f"staircase TTFT: {b['staircase_first_chunks_median_s']:.3f}s to every first chunk + "
          f"{b['staircase_aggregator_to_first_token_median_s']:.3f}s to the aggregator's first "
          f"token (its first prompt {b['staircase_first_aggregator_prompt_tokens_median']:.0f} "
          f"tokens, {b['staircase_first_aggregator_cached_tokens_median']:.0f} cached); median "
          f"{b['staircase_ttft_median_s_when_run_first']:.3f}s when it ran first on a question, "
          f"{b['staircase_ttft_median_s_when_run_second']:.3f}s when second")
    judge_v, judge_s = out["judge_score_vanilla"], out["judge_score_staircase"]
    if judge_v is not None:
        print(f"{'judge P(correct) (mean)':28}{judge_v:12.3f}{judge_s:12.3f}")
    lo, hi = out["judge_diff_ci95"]
    print(f"\nttft_ratio {out['ttft_ratio']:.3f} (floor from the proposals' lengths "
          f"{out['ttft_ratio_floor']:.3f})   wall_ratio {out['wall_ratio']:.3f}   "
          f"judge diff (staircase - vanilla) {out['judge_diff']:+.3f} "
          f"[95% CI {lo:+.3f}, {hi:+.3f}] over {out['judge_pairs']} pairs   "
          f"proposals identical across modes {out['proposals_identical_across_modes']:.2f}   "
          f"load avg {out['load_average_1m']['before']:.1f} -> "
          f"{out['load_average_1m']['after']:.1f} on {out['cpu_count']} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 questions instead of 20")
    parser.add_argument("--limit", type=int, default=0, help="fewer questions (smoke runs)")
    parser.add_argument("--max-tokens", type=int, default=192)
    # 16, the smallest first chunk the node accepts: TTFT scales with it (see the docstring
    # of StaircaseSchedule); the node's own default is 32.
    parser.add_argument("--first-chunk", type=int, default=16)
    parser.add_argument("--segment", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--engine", default=json.dumps(ENGINE), help="vLLM engine args (JSON)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/staircase.json"))
    args = parser.parse_args()
    # a killed benchmark must still shut its engine down (atexit runs on SystemExit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.time()
    out = asyncio.run(bench(args))
    out["benchmark_wall_s"] = time.time() - t0
    print_table(out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out} ({out['benchmark_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
