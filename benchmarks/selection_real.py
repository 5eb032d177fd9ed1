"""Selection methods on the embedded model: which of 8 samples does each method pick?

Problems: one-digit additions generated with reasoning-gym (20 quick, 40 full; negative
terms skipped) plus the first 20 MAWPS single-op word problems from
`${REASONLOOM_DATA:-../shared/data}/mawps_singleop.jsonl`. SmolLM2-135M-Instruct writes 8
samples per problem (max 64 tokens, T = 0.8), then serves as every model verifier:
- pointwise judge: P("Yes") to "Is the proposed solution correct?" (prompt log-probs);
- pairwise judge: V1's tournament, ratings only (B = 3N = 24 comparisons), and in full runs
  round-robin (all 28 pairs, one order: it does not fit --quick's 10 minutes on 2 cores);
- answer frequency (no calls); mean token log-prob of the sample (prompt log-probs).
Every method selects from the SAME 8 samples of a problem (one graph per problem: the
samples node feeds every selecting node).
Methods: first sample, majority, pointwise judge, mean log-prob, V1 at 3N, (round-robin),
naive average (mean of the normalised scores of the four verifiers), Weaver over the four
verifiers (label model fitted without labels over the whole problem set, as in the paper;
the pairwise judge enters as each sample's V1 weighted win rate, which costs nothing extra)
and Weaver over the three pointwise ones. Calls and tokens are the ledger's, per problem:
generation is shared by all methods and listed once; a combining method's verification
cost is that of the verifiers it reads. The model is weak: these figures prove the paths run
for real and show the verifiers' cost, not what selection can do with a strong model.

    python benchmarks/selection_real.py --quick     # 40 problems; 427 s measured on 2 cores
    python benchmarks/selection_real.py --quick --limit 2   # smoke: 2 + 2 problems, JSON to $TMPDIR
"""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A step of a busy 2-core machine can exceed vLLM's 300 s RPC limit; that is not an error here.
os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")

from benchmarks._common import (data_dir, machine, print_table, python_version,  # noqa: E402
                                write_result)
from reasonloom.backends.factory import BackendSpec, build_backend  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Problem  # noqa: E402
from reasonloom.verifiers.answers import answers_equal  # noqa: E402

N = 8
MAX_TOKENS = 64        # samples: enough for "x + y = z" and a one-step word problem
JUDGE_TOKENS = 12      # after the "Rating A: " prefix, "10\nRating B: 10" is 10 tokens
# Which graph nodes' calls each method pays for (generation is shared and listed apart).
VERIFIER_NODES = {"first_sample": [], "majority": [], "pointwise_judge": ["judge"],
                  "mean_logprob": ["logprob"], "v1_tournament": ["v1"], "round_robin": ["rr"],
                  "naive_average": ["judge", "logprob", "v1"],
                  "weaver": ["judge", "logprob", "v1"],
                  "weaver_pointwise": ["judge", "logprob"]}
# Engine: eager bfloat16. Without `enforce_eager` the CPU engine first compiles the model
# with torch.compile / Inductor (~40 s more start-up on an idle box, minutes on a loaded
# one). bfloat16 is what vLLM picks on this CPU (AMX) for the float32 checkpoint, and its
# prefill is faster than float32's (judging is mostly prefill). No chunked prefill: on the CPU engine a seeded request
# whose prompt is split across steps crashes the worker ("CPU Generator does not use
# offset"), so whole prompts need a step budget >= the window (2048 tokens is plenty here).
ENGINE = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 2048,
          "enable_chunked_prefill": False, "max_num_batched_tokens": 2048}


def load_problems(additions: int, mawps: int) -> list[Problem]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("basic_arithmetic", size=10 * max(additions, 1),
                                        seed=0, min_terms=2, max_terms=2, min_digits=1,
                                        max_digits=1, operators=("+",))
    items = [x for x in data if "-" not in x["question"]][:additions]
    problems = [Problem.from_text(x["question"], id=f"add-{i}", gold=str(x["answer"]))
                for i, x in enumerate(items)]
    path = data_dir() / "mawps_singleop.jsonl"
    with open(path) as fh:
        rows = [json.loads(line) for line, _ in zip(fh, range(mawps))]
    problems += [Problem.from_text(r["question"], id=str(r["id"]), gold=str(r["answer"]))
                 for r in rows]
    return problems


def graph(round_robin: bool) -> Graph:
    g = Graph()
    g.add("samples", "best_of_n", {"role": "strong", "n": N, "temperature": 0.8,
                                   "max_tokens": MAX_TOKENS}, {"problem": "problem"})
    pick = {"problem": "problem", "candidates": "samples.candidates"}
    g.add("majority", "majority", {}, {"candidates": "samples.candidates"})
    g.add("judge", "pointwise_select", {"verifier": "judge", "judge": "strong"}, pick)
    g.add("logprob", "pointwise_select", {"verifier": "logprob", "scorer": "cheap"}, pick)
    g.add("v1", "v1_tournament", {"judge": "strong", "reasoning": False,
                                  "max_tokens": JUDGE_TOKENS}, pick)
    if round_robin:
        g.add("rr", "round_robin", {"judge": "strong", "reasoning": False,
                                    "max_tokens": JUDGE_TOKENS}, pick)
    g.set_output("v1")
    return g


def roles() -> Roles:
    backend = build_backend(BackendSpec(backend="embedded", engine=ENGINE))
    return Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=0.8,
                                          price_out_per_m=3.2, concurrency=16), backend),
                  "cheap": Role(RoleSpec(name="cheap", price_in_per_m=0.1, price_out_per_m=0.4,
                                         concurrency=16), backend)},
                 order=["strong", "cheap"])


def log(message: str, t0: float) -> None:
    print(f"[{time.time() - t0:6.1f}s] {message}", flush=True)


async def run_all(problems: list[Problem], round_robin: bool, parallel: int, t0: float
                  ) -> tuple[list, float]:
    """All problems, `parallel` at a time, on one engine; the event loop that started the
    engine also shuts it down (its output handler lives on this loop)."""
    from reasonloom.backends.vllm.engine import shutdown_engines

    gate = asyncio.Semaphore(parallel)
    the_roles = roles()
    try:
        await the_roles["strong"].backend.engine()
        started = time.time() - t0
        log(f"engine ready; {len(problems)} problems, {parallel} at a time", t0)
        done = 0

        async def heartbeat() -> None:
            # tells a slow run from a stuck one in the log (`kill -USR1 PID` dumps stacks)
            while True:
                await asyncio.sleep(30)
                log(f"heartbeat: {done}/{len(problems)} problems done", t0)

        beat = asyncio.create_task(heartbeat())

        async def one(i: int, problem: Problem):
            nonlocal done
            async with gate:
                result = await run(graph(round_robin), problem, the_roles, seed=i)
            done += 1
            log(f"{done}/{len(problems)} done ({problem.id})", t0)
            return result

        try:
            return (await asyncio.gather(*(one(i, p) for i, p in enumerate(problems))),
                    started)
        finally:
            beat.cancel()
    finally:
        shutdown_engines()


def _scores_in_sample_order(samples: list, ranked: list) -> list[float]:
    """Selecting nodes output ranked copies: map each score back to its sample. Equal texts
    are interchangeable, so each takes the next unused copy of its text."""
    by_text: dict[str, list[float]] = {}
    for cand in ranked:
        by_text.setdefault(cand.text, []).append(cand.score)
    return [by_text[cand.text].pop(0) for cand in samples]


def summarise(problems: list[Problem], results: list, round_robin: bool) -> dict:
    import numpy as np
    from reasonloom.verifiers.rules import answer_frequencies
    from reasonloom.verifiers.weaver import WeaverParams, minmax, weaver_fit, weaver_select

    picks: dict[str, list[bool]] = {m: [] for m in VERIFIER_NODES}
    columns: dict[str, list[float]] = {"judge": [], "logprob": [], "v1": []}
    index, answers, labels, no_answer = [], [], [], 0
    unparsed = comparisons = 0
    nodes = {"pointwise_judge": "judge", "mean_logprob": "logprob", "v1_tournament": "v1",
             "round_robin": "rr"}
    for p, (problem, result) in enumerate(zip(problems, results)):
        out = result.outputs
        samples = out["samples"]["candidates"]
        gold = problem.gold
        picks["first_sample"].append(answers_equal(samples[0].answer, gold))
        picks["majority"].append(answers_equal(out["majority"]["answer"].answer, gold))
        for method, node in nodes.items():
            if node in out:
                picks[method].append(answers_equal(out[node]["answer"].answer, gold))
        comparisons += out["v1"]["answer"].details["comparisons"]
        unparsed += out["v1"]["answer"].details["unparsed"]
        for name in columns:
            columns[name] += _scores_in_sample_order(samples, out[name]["candidates"])
        for cand in samples:
            index.append(p)
            answers.append(cand.answer)
            labels.append(answers_equal(cand.answer, gold))
            no_answer += not cand.answer
    params = WeaverParams()
    names = ["judge", "logprob", "v1", "frequency"]
    matrix = np.column_stack([np.array(columns[n], float) for n in names[:3]]
                             + [answer_frequencies(answers, index)])
    # naive average: Weaver's own normalisation (frequency within each problem), then the mean
    normalised = np.column_stack([minmax(matrix[:, j], index if n in params.per_problem
                                         else None) for j, n in enumerate(names)])
    naive = weaver_select(np.nan_to_num(np.nanmean(normalised, axis=1)), index, answers)
    picks["naive_average"] = [labels[naive[p]] for p in range(len(problems))]
    fits = {}
    for method, cols in (("weaver", names), ("weaver_pointwise", ["judge", "logprob",
                                                                  "frequency"])):
        keep = [names.index(c) for c in cols]
        fits[method] = weaver_fit(matrix[:, keep], index, cols, params)
        chosen = weaver_select(fits[method].posterior, index, answers)
        picks[method] = [labels[chosen[p]] for p in range(len(problems))]
    if not round_robin:
        picks.pop("round_robin")
    return {"picks": picks, "fits": fits, "labels": labels, "index": index,
            "no_answer_share": no_answer / max(1, len(labels)),
            "v1_unparsed_share": unparsed / max(1, comparisons)}


def cost(results: list, nodes: list[str]) -> dict:
    calls = prompt = completion = 0
    for result in results:
        for node in nodes:
            usage = result.usage.by_node.get(node)
            if usage:
                calls, prompt = calls + usage.calls, prompt + usage.prompt_tokens
                completion += usage.completion_tokens
    n = len(results)
    return {"calls": round(calls / n, 2), "prompt_tokens": round(prompt / n, 1),
            "completion_tokens": round(completion / n, 1)}


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 additions + 20 MAWPS")
    parser.add_argument("--parallel", type=int, default=8, help="problems in flight at once")
    parser.add_argument("--limit", type=int, default=None,
                        help="smoke run: at most this many problems of each source; the "
                             "JSON goes to $TMPDIR/selection_real_smoke.json")
    parser.add_argument("--round-robin", action=argparse.BooleanOptionalAction, default=None,
                        help="the 28-comparison round-robin baseline (default: full runs "
                             "only; in --quick it does not fit 10 minutes)")
    args = parser.parse_args()
    t0 = time.time()
    additions, mawps = (20 if args.quick else 40), 20
    if args.limit is not None:
        additions, mawps = min(additions, args.limit), min(mawps, args.limit)
    round_robin = args.round_robin if args.round_robin is not None else not args.quick
    problems = load_problems(additions, mawps)
    results, engine_s = asyncio.run(run_all(problems, round_robin, args.parallel, t0))
    wall = time.time() - t0
    summary = summarise(problems, results, round_robin)
    labels, index = summary["labels"], summary["index"]
    pass_at_n = sum(any(labels[i] for i in range(len(labels)) if index[i] == p)
                    for p in range(len(problems))) / len(problems)
    methods = {}
    for method, hits in summary["picks"].items():
        methods[method] = {"accuracy": round(sum(hits) / len(hits), 3),
                           "verification_per_problem": cost(results, VERIFIER_NODES[method])}
    generation = cost(results, ["samples"])
    rows = [(m, f"{v['accuracy']:.3f}", v["verification_per_problem"]["calls"],
             v["verification_per_problem"]["prompt_tokens"],
             v["verification_per_problem"]["completion_tokens"]) for m, v in methods.items()]
    print_table(rows, ("method", "accuracy", "verifier calls", "prompt tok", "completion tok"))
    print(f"\ngeneration per problem (shared): {generation}; pass@{N}: {pass_at_n:.3f}; "
          f"sample accuracy: {sum(labels) / len(labels):.3f}; wall {wall:.0f}s "
          f"(engine start {engine_s:.0f}s)")
    scope = (f"{additions} reasoning-gym one-digit additions (basic_arithmetic, seed 0, "
             f"negative terms skipped) + the first {mawps} MAWPS single-op problems; N = {N} "
             f"samples each (max {MAX_TOKENS} tokens, T = 0.8); V1 at B = 3N = {3 * N}"
             + (f"; round-robin {N * (N - 1) // 2} comparisons" if round_robin else
                "; round-robin skipped"))
    fits = summary["fits"]
    payload = {
        "mode": "smoke" if args.limit is not None else ("quick" if args.quick else "full"),
        "quick_scope" if args.quick else "scope": scope,
        "problems": len(problems), "samples_per_problem": N, "max_tokens": MAX_TOKENS,
        "model": "SmolLM2-135M-Instruct (embedded, bfloat16, eager)", "engine": ENGINE,
        "methods": methods, "generation_per_problem": generation,
        "pass_at_n": round(pass_at_n, 3), "sample_accuracy": round(sum(labels) / len(labels), 3),
        "no_answer_share": round(summary["no_answer_share"], 3),
        "v1_unparsed_share": round(summary["v1_unparsed_share"], 3),
        "weaver": {m: {"verifiers": f.names, "kept": f.kept, "yes_rate": f.yes_rate,
                       "label_model": f.model.model_dump() if f.model else None}
                   for m, f in fits.items()},
        **{f"{m}_acc": v["accuracy"] for m, v in methods.items()},
        "wall_s": round(wall, 1), "engine_start_s": round(engine_s, 1),
        "parallel": args.parallel, "machine": machine(), "python": python_version(),
        "note": "one seeded run; with 40 problems one problem is 0.025 of accuracy, so "
                "differences under ~0.1 between methods are within noise",
    }
    if args.limit is not None:   # a smoke run never replaces the benchmark's result
        path = Path(tempfile.gettempdir()) / "selection_real_smoke.json"
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        path = write_result("selection_real", payload)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
