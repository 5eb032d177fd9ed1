"""Engine accelerations for test-time workloads (issue 12), measured side by side in one run.

1. Prefix-aware request shaping, on one embedded engine (prefix cache reset before every arm):
   a V1 tournament (16 candidates, B = 3N = 48 comparisons, ratings-only judge) and one
   Squeeze Evolve loop (N = 8, k = 4, strong + cheap roles), each with `shaping` on vs off.
   Reported: wall time, prompt tokens computed vs served from the prefix cache (the ledger's
   cached_prompt_tokens).
2. Speculative drafting, one engine per drafter (never more than two alive): best-of-16 at
   temperature 0.7 on MT-Bench first turns (max_tokens 384), the 16 samples issued in 4 waves
   of 4 so later waves can draft from earlier ones; and MoA aggregation prompts (which copy
   from their proposals). Decode tokens/s with the history drafter vs vLLM's ngram vs none;
   acceptance rate from the engine's spec-decode counters.
3. Lossless: greedy float32 generation on 2 problems, with and without the history drafter.

Arms run interleaved (the order flips every repeat) with the same seeds; figures are medians
over questions / repeats: a shared 2-core CPU makes single timings noisy.

    python benchmarks/accel.py --quick     # < 15 min on an idle 2-core CPU
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A step of a busy 2-core machine can exceed vLLM's 300 s RPC limit; that is not an error here.
os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")

from benchmarks._common import data_dir, machine, print_table, write_result  # noqa: E402

BASE = {"max_model_len": 4096, "enforce_eager": True}
DRAFTERS: dict[str, Any] = {
    "none": None,
    "history": {"method": "history", "num_speculative_tokens": 4},
    "ngram": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2,
              "prompt_lookup_max": 4},
}


def engine_args(drafter: str = "none", **extra: Any) -> dict[str, Any]:
    args = {**BASE, **extra}
    if DRAFTERS[drafter] is not None:
        args["reasonloom_speculative"] = DRAFTERS[drafter]
    return args


def backend_for(args: dict[str, Any]):
    from reasonloom.backends.vllm.backend import VLLMBackend
    from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model

    return VLLMBackend(str(ensure_embedded_model()), args, served_name=MODEL_NAME)


async def start(backend, tries: int = 8) -> None:
    """Start an engine; on a machine shared with other engines a start can fail for memory:
    wait and try again."""
    from reasonloom.backends.errors import EngineStartError

    for attempt in range(tries):
        try:
            await backend.engine()
            return
        except EngineStartError as exc:
            if attempt == tries - 1:
                raise
            print(f"  engine start failed ({exc}); retrying in 60 s", flush=True)
            await asyncio.sleep(60)


def stop(backend) -> None:
    from reasonloom.backends.vllm.engine import shutdown_engine

    shutdown_engine(backend.model_path, backend.engine_args)


def read_jsonl(name: str) -> list[dict]:
    with open(data_dir() / name) as f:
        return [json.loads(line) for line in f if line.strip()]


def spec_counters() -> dict[str, float]:
    """The engine's spec-decode counters (only the latest drafting engine registers them)."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

    out: dict[str, float] = {}
    for m in get_metrics_snapshot():
        if isinstance(m, Counter) and m.name.startswith("vllm:spec_decode_num"):
            out[m.name] = out.get(m.name, 0.0) + m.value
    return out


def acceptance(before: dict[str, float], after: dict[str, float]) -> float | None:
    drafted = after.get("vllm:spec_decode_num_draft_tokens", 0) - \
        before.get("vllm:spec_decode_num_draft_tokens", 0)
    accepted = after.get("vllm:spec_decode_num_accepted_tokens", 0) - \
        before.get("vllm:spec_decode_num_accepted_tokens", 0)
    return accepted / drafted if drafted else None


# -- 1. shaping ------------------------------------------------------------------------------
def roles_on(backend):
    from reasonloom.orchestrator.roles import Role, Roles, RoleSpec

    return Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=0.8,
                                          price_out_per_m=3.2), backend),
                  "cheap": Role(RoleSpec(name="cheap", price_in_per_m=0.1,
                                         price_out_per_m=0.4), backend)},
                 order=["strong", "cheap"])


async def node_arm(backend, fn, inputs: dict, cfg, shaping: bool) -> dict[str, float]:
    """One node run on a cold prefix cache; wall time and what the ledger says."""
    from reasonloom.orchestrator.context import SHAPING, RunContext, RunState

    await start(backend)
    engine = await backend.engine()
    await engine.reset_prefix_cache()
    state = RunState(run_id=f"accel-{shaping}", seed=0, roles=roles_on(backend), shaping=shaping)
    token = SHAPING.set(shaping)
    t0 = time.monotonic()
    try:
        await fn(inputs, cfg, RunContext(state, "node"))
    finally:
        SHAPING.reset(token)
    wall = time.monotonic() - t0
    total = state.ledger.report().total
    return {"wall_s": wall, "calls": total.calls, "prompt_tokens": total.prompt_tokens,
            "cached_prompt_tokens": total.cached_prompt_tokens,
            "computed_prompt_tokens": total.prompt_tokens - total.cached_prompt_tokens,
            "completion_tokens": total.completion_tokens}


def long_problem(backend, min_tokens: int = 200) -> dict:
    """The first MATH500 item whose statement has at least `min_tokens` tokens: shaping can
    only save the shared prefix, so its gain grows with the problem's share of the prompt
    (reported next to the speedup; full runs also time a short problem)."""
    rows = read_jsonl("math500.jsonl")
    return next(r for r in rows if backend.estimate_tokens(r["question"]) >= min_tokens)


async def shaping_arms(name: str, backend, fn, inputs: dict, cfg, reps: int) -> dict[str, Any]:
    """Shaping on vs off, interleaved (the order flips every repeat), cold cache each."""
    runs: dict[bool, list[dict]] = {True: [], False: []}
    for rep in range(reps):
        for shaping in ((True, False) if rep % 2 == 0 else (False, True)):
            runs[shaping].append(await node_arm(backend, fn, inputs, cfg, shaping))
            print(f"  {name} shaping={'on' if shaping else 'off'} rep {rep}: "
                  f"{runs[shaping][-1]}", flush=True)
    on, off = (median(r["wall_s"] for r in runs[s]) for s in (True, False))
    return {"on": runs[True], "off": runs[False], "speedup": off / on}


async def shaping_bench(backend, quick: bool) -> dict[str, Any]:
    from reasonloom.orchestrator.context import RunContext, RunState
    from reasonloom.orchestrator.types import Problem
    from reasonloom.strategies.evolve import EvolveConfig, evolve_node
    from reasonloom.strategies.sampling import SampleConfig, sample_candidates
    from reasonloom.strategies.tournament import TournamentConfig, v1_tournament

    await start(backend)
    tcfg = TournamentConfig(reasoning=False, max_tokens=8)      # B = 3N = 48
    ecfg = EvolveConfig(population=8, group_size=4, loops=2, cut_points=(50.0,),
                        max_tokens=EVOLVE_TOKENS)
    items = {"tournament": long_problem(backend)}
    if not quick:
        items["tournament_short"] = read_jsonl("math500.jsonl")[0]
    out: dict[str, Any] = {}
    for name, item in items.items():
        problem = Problem.from_text(item["question"])
        state = RunState(run_id="accel-candidates", seed=0, roles=roles_on(backend))
        candidates = await sample_candidates(
            problem, SampleConfig(n=16, max_tokens=CANDIDATE_TOKENS),
            RunContext(state, "candidates"))
        out[name] = await shaping_arms(name, backend, v1_tournament,
                                       {"problem": problem, "candidates": candidates}, tcfg,
                                       2 if quick else 3)
        out[name].update(problem_tokens=backend.estimate_tokens(item["question"]),
                         candidate_tokens_mean=sum(backend.estimate_tokens(c.text)
                                                   for c in candidates) / len(candidates))
    evolve_problem = Problem.from_text(read_jsonl("gsm8k.jsonl")[0]["question"])
    out["evolve"] = await shaping_arms("evolve", backend, evolve_node,
                                       {"problem": evolve_problem}, ecfg, 1 if quick else 3)
    return out


# -- 2. drafting -----------------------------------------------------------------------------
async def best_of_16(backend, question: str, qi: int) -> dict[str, float]:
    """16 samples in 4 waves of 4 (later waves can draft from the earlier ones)."""
    from reasonloom.backends.base import GenerateRequest
    from reasonloom.orchestrator.types import Problem
    from reasonloom.strategies.prompts import problem_messages

    messages = problem_messages(Problem.from_text(question))
    texts: list[str] = []
    tokens, t0 = 0, time.monotonic()
    for wave in range(WAVES):
        reqs = [GenerateRequest(messages=messages, temperature=0.7, max_tokens=MAX_TOKENS,
                                seed=1000 * qi + 4 * wave + i) for i in range(PER_WAVE)]
        gens = await asyncio.gather(*(backend.generate(r) for r in reqs))
        tokens += sum(g.completion_tokens for g in gens)
        texts += [g.texts[0] for g in gens]
    wall = time.monotonic() - t0
    return {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall, "texts": texts}


async def aggregate(backend, jobs: list[tuple[str, list[str]]]) -> dict[str, float]:
    """MoA aggregation prompts (proposals in the prompt), all questions at once."""
    from reasonloom.backends.base import GenerateRequest
    from reasonloom.orchestrator.types import Problem
    from reasonloom.strategies.moa import aggregator_messages
    from reasonloom.strategies.prompts import DEFAULT_SYSTEM

    reqs = [GenerateRequest(messages=aggregator_messages(Problem.from_text(q), props,
                                                         DEFAULT_SYSTEM),
                            temperature=0.7, max_tokens=MAX_TOKENS, seed=7 + i)
            for i, (q, props) in enumerate(jobs)]
    t0 = time.monotonic()
    gens = await asyncio.gather(*(backend.generate(r) for r in reqs))
    wall = time.monotonic() - t0
    tokens = sum(g.completion_tokens for g in gens)
    return {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall}


async def drafting_pair(base, other, name: str, questions: list[str], jobs, results: dict
                        ) -> None:
    """`base` (no drafter) and `other` interleaved per question, the order flipping."""
    for qi, q in enumerate(questions):
        order = [("none", base), (name, other)]
        for arm, backend in (order if qi % 2 == 0 else order[::-1]):
            before = spec_counters()
            run = await best_of_16(backend, q, qi)
            run["acceptance"] = acceptance(before, spec_counters())
            texts = run.pop("texts")
            if arm == "none" and qi < len(jobs) and not jobs[qi][1]:
                jobs[qi][1].extend(texts[:3])    # the aggregation prompts' proposals
            results.setdefault(arm, {}).setdefault("bo16", []).append(run)
            print(f"  bo16 q{qi} {arm}: {run}", flush=True)
    for rep in range(AGG_REPEATS):
        order = [("none", base), (name, other)]
        for arm, backend in (order if rep % 2 == 0 else order[::-1]):
            before = spec_counters()
            run = await aggregate(backend, jobs)
            run["acceptance"] = acceptance(before, spec_counters())
            results.setdefault(arm, {}).setdefault("aggregate", []).append(run)
            print(f"  aggregate {arm}: {run}", flush=True)


def speedup(results: dict, arm: str, kind: str) -> float:
    """Median over questions of (arm tok/s / none tok/s), the none run next to it."""
    arm_runs = results[arm][kind]
    base_runs = results[f"none_for_{arm}"][kind]
    return median(a["tok_s"] / b["tok_s"] for a, b in zip(arm_runs, base_runs))


async def drafting_bench(quick: bool) -> dict[str, Any]:
    questions = [row["turns"][0] for row in read_jsonl("mt_bench_questions.jsonl")[:N_QUESTIONS]]
    jobs: list[tuple[str, list[str]]] = [(q, []) for q in questions[:AGG_QUESTIONS]]
    base = backend_for(engine_args("none"))
    results: dict[str, Any] = {}
    for name in ("history", "ngram"):
        other = backend_for(engine_args(name))
        try:
            await start(base)
            await start(other)
            pair: dict[str, Any] = {}
            await drafting_pair(base, other, name, questions, jobs, pair)
            results[name], results[f"none_for_{name}"] = pair[name], pair["none"]
        finally:
            stop(other)
    stop(base)
    return results


async def lossless_check() -> dict[str, Any]:
    """Greedy float32: the history drafter's output equals plain decoding, token for token."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from reasonloom.orchestrator.types import Message

    prompts = [row["turns"][0] for row in read_jsonl("mt_bench_questions.jsonl")[4:6]]

    async def greedy(backend, prompt: str, tag: str) -> list[int]:
        engine = await backend.engine()
        params = SamplingParams(temperature=0.0, max_tokens=LOSSLESS_TOKENS,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        ids = backend.render((Message(role="user", content=prompt),))
        final = None
        async for out in engine.generate({"prompt_token_ids": ids}, params, tag):
            final = out
        return list(final.outputs[0].token_ids)

    f32 = {"dtype": "float32"}
    plain = backend_for(engine_args("none", **f32))
    try:
        await start(plain)
        want = [await greedy(plain, p, f"plain{i}") for i, p in enumerate(prompts)]
    finally:
        stop(plain)
    drafting = backend_for(engine_args("history", **f32))
    try:
        await start(drafting)
        before = spec_counters()
        # each prompt twice: the second sample drafts from the first
        got = [[await greedy(drafting, p, f"draft{i}.{k}") for k in range(2)]
               for i, p in enumerate(prompts)]
        rate = acceptance(before, spec_counters())
    finally:
        stop(drafting)
    same = all(g == w for pair, w in zip(got, want) for g in pair)
    return {"lossless_greedy": same, "tokens": [len(w) for w in want], "acceptance": rate}


# -- main -------------------------------------------------------------------------------------
async def main(quick: bool) -> dict[str, Any]:
    t0, load0 = time.monotonic(), os.getloadavg()
    print("== shaping (one engine, prefix cache reset before each arm)", flush=True)
    # the same engine is the drafting benchmark's `none` arm: it stays up
    shaping = await shaping_bench(backend_for(engine_args("none")), quick)
    print("== drafting", flush=True)
    drafting = await drafting_bench(quick)
    print("== lossless (float32 greedy)", flush=True)
    lossless = await lossless_check()
    hist = drafting["history"]["bo16"]
    rates = [r["acceptance"] for r in hist if r["acceptance"] is not None]
    summary = {
        "shaping_speedup_tournament": shaping["tournament"]["speedup"],
        "shaping_speedup_evolve": shaping["evolve"]["speedup"],
        "history_speedup_bo16_t07": speedup(drafting, "history", "bo16"),
        "ngram_speedup_bo16_t07": speedup(drafting, "ngram", "bo16"),
        "history_speedup_aggregate": speedup(drafting, "history", "aggregate"),
        "ngram_speedup_aggregate": speedup(drafting, "ngram", "aggregate"),
        "acceptance_rate_history": median(rates) if rates else None,
        "acceptance_rate_ngram": median([r["acceptance"] for r in drafting["ngram"]["bo16"]
                                         if r["acceptance"] is not None] or [0.0]),
        "lossless_greedy": lossless["lossless_greedy"],
    }
    return {"summary": summary, "shaping": shaping, "drafting": drafting, "lossless": lossless,
            "settings": {"quick": quick, "questions": N_QUESTIONS, "waves": WAVES,
                         "per_wave": PER_WAVE, "max_tokens": MAX_TOKENS, "engine": BASE,
                         "drafters": DRAFTERS},
            "machine": machine(), "load_average": {"start": load0, "end": os.getloadavg()},
            "wall_s": time.monotonic() - t0}


CANDIDATE_TOKENS = 96
EVOLVE_TOKENS = 128
N_QUESTIONS, WAVES, PER_WAVE, MAX_TOKENS = 4, 4, 4, 384
AGG_QUESTIONS, AGG_REPEATS, LOSSLESS_TOKENS = 4, 2, 128

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 questions, 1 repeat each")
    opts = parser.parse_args()
    if opts.quick:
        N_QUESTIONS, AGG_REPEATS = 2, 1
        AGG_QUESTIONS = 2
    result = asyncio.run(main(opts.quick))
    s = result["summary"]
    print_table([(k, f"{v:.3f}" if isinstance(v, float) else v) for k, v in s.items()],
                ("figure", "value"))
    print(f"written {write_result('accel', result)}  ({result['wall_s']:.0f} s)")
