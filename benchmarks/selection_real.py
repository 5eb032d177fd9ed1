"""Selection methods on the embedded model: which of 8 samples does each method pick?

Problems: one-digit additions generated with reasoning-gym (20 quick, 40 full; negative
terms skipped) plus the first 20 MAWPS single-op word problems from
`${REASONLOOM_DATA:-../shared/data}/mawps_singleop.jsonl`. SmolLM2-135M-Instruct writes 8
samples per problem, then serves as every model verifier:
- pointwise judge: P("Yes") to "Is the proposed solution correct?" (prompt log-probs);
- pairwise judge: V1's tournament, ratings only (B = 3N = 24 comparisons);
- answer frequency (no calls); mean token log-prob of the sample (prompt log-probs).
Methods: first sample, majority, pointwise judge, mean log-prob, V1, Weaver (label model
fitted without labels over the whole problem set, as in the paper) and, in full mode,
round-robin (28 comparisons). Calls and tokens are the ledger's, per method, per problem:
generation is shared by all methods and listed once; Weaver's verification cost is its
verifiers' (judge + log-prob). The model is weak: these figures prove the paths run for
real and show the verifiers' cost, not what selection can do with a strong model.

    python benchmarks/selection_real.py --quick     # ~40 problems, < 10 min on 2 cores
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
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
from reasonloom.verifiers.weaver import WeaverParams, weaver_fit, weaver_select  # noqa: E402

N = 8
VERIFIER_NODES = {"first_sample": [], "majority": [], "pointwise_judge": ["judge"],
                  "mean_logprob": ["logprob"], "v1_tournament": ["v1"],
                  "weaver": ["judge", "logprob"], "round_robin": ["rr"]}


def load_problems(additions: int, mawps: int) -> list[Problem]:
    import reasoning_gym

    data = reasoning_gym.create_dataset("basic_arithmetic", size=10 * additions, seed=0,
                                        min_terms=2, max_terms=2, min_digits=1, max_digits=1,
                                        operators=("+",))
    items = [x for x in data if "-" not in x["question"]][:additions]
    problems = [Problem.from_text(x["question"], id=f"add-{i}", gold=str(x["answer"]))
                for i, x in enumerate(items)]
    path = data_dir() / "mawps_singleop.jsonl"
    with open(path) as fh:
        rows = [json.loads(line) for line, _ in zip(fh, range(mawps))]
    problems += [Problem.from_text(r["question"], id=str(r["id"]), gold=str(r["answer"]))
                 for r in rows]
    return problems


def graph(full: bool) -> Graph:
    g = Graph()
    g.add("samples", "best_of_n", {"role": "strong", "n": N, "temperature": 0.8,
                                   "max_tokens": 64}, {"problem": "problem"})
    pick = {"problem": "problem", "candidates": "samples.candidates"}
    g.add("majority", "majority", {}, {"candidates": "samples.candidates"})
    g.add("judge", "pointwise_select", {"verifier": "judge", "judge": "strong"}, pick)
    g.add("logprob", "pointwise_select", {"verifier": "logprob", "scorer": "cheap"}, pick)
    g.add("v1", "v1_tournament", {"judge": "strong", "reasoning": False, "max_tokens": 16}, pick)
    if full:
        g.add("rr", "round_robin", {"judge": "strong", "reasoning": False, "max_tokens": 16},
              pick)
    g.set_output("v1")
    return g


def roles() -> Roles:
    # No chunked prefill: on the CPU engine a seeded request whose prompt is split across
    # steps crashes the worker ("CPU Generator does not use offset"), and this benchmark
    # sends many long judge prompts at once. Whole prompts need a step budget >= the window.
    # (2048 tokens of window is plenty here and keeps the worker's memory small.)
    engine = {"max_model_len": 2048, "enable_chunked_prefill": False,
              "max_num_batched_tokens": 2048}
    backend = build_backend(BackendSpec(backend="embedded", engine=engine))
    return Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=0.8,
                                          price_out_per_m=3.2, concurrency=16), backend),
                  "cheap": Role(RoleSpec(name="cheap", price_in_per_m=0.1, price_out_per_m=0.4,
                                         concurrency=16), backend)},
                 order=["strong", "cheap"])


async def run_all(problems: list[Problem], full: bool, parallel: int) -> list:
    gate = asyncio.Semaphore(parallel)
    the_roles = roles()
    await the_roles["strong"].backend.engine()

    async def one(i: int, problem: Problem):
        async with gate:
            return await run(graph(full), problem, the_roles, seed=i)

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))


def correct(answer: str | None, gold: str) -> bool:
    return answers_equal(answer, gold)


def summarise(problems: list[Problem], results: list, full: bool) -> dict:
    picks: dict[str, list[bool]] = {m: [] for m in VERIFIER_NODES}
    scores, index, answers, labels = [], [], [], []
    unparsed = comparisons = 0
    for p, (problem, result) in enumerate(zip(problems, results)):
        out = result.outputs
        samples = out["samples"]["candidates"]
        gold = problem.gold
        picks["first_sample"].append(correct(samples[0].answer, gold))
        picks["majority"].append(correct(out["majority"]["answer"].answer, gold))
        picks["pointwise_judge"].append(correct(out["judge"]["answer"].answer, gold))
        picks["mean_logprob"].append(correct(out["logprob"]["answer"].answer, gold))
        picks["v1_tournament"].append(correct(out["v1"]["answer"].answer, gold))
        comparisons += out["v1"]["answer"].details["comparisons"]
        unparsed += out["v1"]["answer"].details["unparsed"]
        if full:
            picks["round_robin"].append(correct(out["rr"]["answer"].answer, gold))
        # selection outputs are ranked copies: map scores back to sample order by text
        judge = {c.text: c.score for c in out["judge"]["candidates"]}
        logprob = {c.text: c.score for c in out["logprob"]["candidates"]}
        for cand in samples:
            scores.append([judge[cand.text], logprob[cand.text]])
            index.append(p)
            answers.append(cand.answer)
            labels.append(correct(cand.answer, gold))
    import numpy as np
    from reasonloom.verifiers.weaver import frequency_scores

    matrix = np.column_stack([np.array(scores, float), frequency_scores(answers, index)])
    fit = weaver_fit(matrix, index, ["judge", "logprob", "frequency"], WeaverParams())
    chosen = weaver_select(fit.posterior, index, answers)
    picks["weaver"] = [labels[chosen[p]] for p in range(len(problems))]
    if not full:
        picks.pop("round_robin")
    return {"picks": picks, "weaver": fit, "labels": labels, "index": index,
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 additions + 20 MAWPS")
    parser.add_argument("--parallel", type=int, default=4, help="problems in flight at once")
    args = parser.parse_args()
    full = not args.quick
    problems = load_problems(20 if args.quick else 40, 20)
    t0 = time.time()
    results = asyncio.run(run_all(problems, full, args.parallel))
    wall = time.time() - t0
    summary = summarise(problems, results, full)
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
          f"sample accuracy: {sum(labels) / len(labels):.3f}; wall {wall:.0f}s")
    fit = summary["weaver"]
    payload = {
        "mode": "quick" if args.quick else "full", "problems": len(problems),
        "samples_per_problem": N, "model": "SmolLM2-135M-Instruct (embedded)",
        "methods": methods, "generation_per_problem": generation,
        "pass_at_n": round(pass_at_n, 3), "sample_accuracy": round(sum(labels) / len(labels), 3),
        "v1_unparsed_share": round(summary["v1_unparsed_share"], 3),
        "weaver_kept": fit.kept, "weaver_yes_rate": fit.yes_rate,
        "weaver_label_model": fit.model.model_dump() if fit.model else None,
        **{f"{m}_acc": v["accuracy"] for m, v in methods.items()},
        "wall_s": round(wall, 1), "machine": machine(), "python": python_version(),
    }
    print(f"wrote {write_result('selection_real', payload)}")
    from reasonloom.backends.vllm.engine import shutdown_engines

    shutdown_engines()


if __name__ == "__main__":
    main()
