"""CREST head steering inside the vLLM engine: speed, tokens and accuracy, steered vs unsteered.

Vectors are calibrated on the embedded model from GENERATED arithmetic traces (synthetic
labels: steering/traces.py), then MAWPS MultiArith problems are answered by two engines of the
SAME steered class: lambda = the manifest's default (gate step_and_probe) and lambda = 0 (the
baseline: same hooks, same work, no change). Both run float32, eager, the same batch of greedy
requests; both engines are alive together (two, the most allowed here) so the timed passes can
alternate between them.

- decode_ratio: decode tokens/s steered / baseline from fixed-length passes (ignore_eos, the
  same max_tokens for every request, so both engines do identical work), run A, B, A, B ...:
  the median of the per-pair ratios, because other processes share this machine's 2 cores.
- tokens_ratio, acc_*: from a natural pass (stop at EOS, max_tokens 256).
- gated_tokens: decode tokens whose step gate fired in the steered engine's natural pass
  (counted in the worker, read from the stats file named in its config); head_steers: how many
  (token, head) pairs the probes let through.
- probe_acc: mean held-out (test split) accuracy of the kept heads' probes, with its interval.

    python benchmarks/steering.py --quick      # 20 problems, < 15 min on 2 cores
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Other engines may share these 2 cores: a slow step must not kill the engine (default 300 s).
os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")

from benchmarks._common import data_dir, machine, print_table, write_result  # noqa: E402

PROMPT = ("Solve the problem step by step. Write each step as its own short paragraph, "
          "separated by a blank line, and end with 'The answer is N.'\n\n{question}")
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}


def load_problems(count: int, seed: int) -> list[dict]:
    path = data_dir() / "mawps_multiarith.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return random.Random(seed).sample(rows, count)


async def generate_all(backend, prompts: list[list[int]], max_tokens: int, ignore_eos: bool
                       ) -> tuple[list[list[int]], list[str], float]:
    """All prompts at once, greedy. Returns token ids, texts and the DECODE rate: tokens made
    after every request had its first one (prefill is over by then), per second of that
    window."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = await backend.engine()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos,
                            output_kind=RequestOutputKind.CUMULATIVE)
    events: list[list[tuple[float, int]]] = []

    async def one(ids: list[int]):
        final, seen = None, []
        events.append(seen)
        async for out in engine.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
            seen.append((time.perf_counter(), len(out.outputs[0].token_ids)))
            final = out
        return list(final.outputs[0].token_ids), final.outputs[0].text

    results = await asyncio.gather(*(one(ids) for ids in prompts))
    end = time.perf_counter()
    start = max(next(t for t, n in seen if n) for seen in events)
    at_start = sum(max((n for t, n in seen if t <= start), default=0) for seen in events)
    total = sum(len(ids) for ids, _ in results)
    return [r[0] for r in results], [r[1] for r in results], (total - at_start) / (end - start)


def read_stats(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


async def run_arms(model: str, arms: dict[str, dict], problems: list[dict], reps: int,
                   fixed_tokens: int) -> dict[str, dict]:
    """Both engines alive at once (two engines: the most this machine's tests allow); the
    natural passes run one engine after the other, the timed passes alternate A, B, A, B, so
    load from other processes falls on both arms alike."""
    from reasonloom.backends.vllm.backend import VLLMBackend
    from reasonloom.backends.vllm.engine import shutdown_engines
    from reasonloom.orchestrator.types import Message
    from reasonloom.verifiers.answers import answers_equal, extract_answer

    backends = {name: VLLMBackend(model, {**ENGINE, "reasonloom_steering": steering})
                for name, steering in arms.items()}
    out: dict[str, dict] = {}
    try:
        for name, backend in backends.items():
            t0 = time.perf_counter()
            await backend.engine()
            out[name] = {"arm": name, "engine_start_s": round(time.perf_counter() - t0, 1)}
        any_backend = next(iter(backends.values()))
        prompts = [any_backend.render((Message(role="user", content=PROMPT.format(
            question=p["question"])),)) for p in problems]
        for name, backend in backends.items():
            ids, texts, _ = await generate_all(backend, prompts, 256, ignore_eos=False)
            natural = read_stats(Path(arms[name]["stats_file"]))
            correct = [answers_equal(extract_answer(t), str(p["answer"]))
                       for t, p in zip(texts, problems)]
            out[name].update(
                mean_tokens=round(sum(len(i) for i in ids) / len(ids), 1),
                accuracy=round(sum(correct) / len(correct), 4),
                gated_tokens=natural.get("gated_tokens", 0),
                head_steers=natural.get("head_steers", 0),
                decode_tokens=natural.get("decode_tokens", 0),
                worker_pid=natural.get("pid"), texts=texts, rates=[])
        for _ in range(reps):
            for name, backend in backends.items():
                _, _, rate = await generate_all(backend, prompts, fixed_tokens, ignore_eos=True)
                out[name]["rates"].append(round(rate, 2))
    finally:
        shutdown_engines()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 problems, 400 traces")
    parser.add_argument("--problems", type=int, default=None)
    parser.add_argument("--traces", type=int, default=None)
    parser.add_argument("--strength", type=float, default=None, help="lambda (default: manifest)")
    parser.add_argument("--gate", default="step_and_probe", choices=("step_and_probe", "step"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None,
                        help="work folder: reuses the vectors and finished arms found there "
                             "(a run cut short, e.g. by another process's memory use, resumes)")
    args = parser.parse_args()
    n_problems = args.problems or (20 if args.quick else 30)
    n_traces = args.traces or (400 if args.quick else 800)
    reps = 3 if args.quick else 5
    fixed_tokens = 64 if args.quick else 128

    from reasonloom.backends.vllm.embedded import ensure_embedded_model
    from reasonloom.steering.calibrate import CalibrationConfig, calibrate
    from reasonloom.steering.traces import arithmetic_traces
    from reasonloom.steering.vectors import read_manifest

    model = str(ensure_embedded_model())
    problems = load_problems(n_problems, args.seed)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="reasonloom-steering-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    t0 = time.perf_counter()
    if (work / "vectors" / "manifest.json").exists():
        manifest = read_manifest(work / "vectors")
    else:
        manifest = calibrate(model, arithmetic_traces(n_traces, seed=args.seed), work / "vectors",
                             CalibrationConfig(seed=args.seed))
    calibrate_s = time.perf_counter() - t0
    strength = manifest.default_strength if args.strength is None else args.strength
    arms = {name: {"vectors": str(work / "vectors"), "strength": lam, "gate": args.gate,
                   "stats_file": str(work / f"{name}.stats.json")}
            for name, lam in (("steered", strength), ("baseline", 0.0))}
    load_before = os.getloadavg()[0]
    measured = asyncio.run(run_arms(model, arms, problems, reps, fixed_tokens))
    load_after = os.getloadavg()[0]
    steered, baseline = measured["steered"], measured["baseline"]
    # One ratio per alternating pair, then the median: robust to a load spike in one pass.
    pair_ratios = sorted(a / b for a, b in zip(steered["rates"], baseline["rates"]))
    decode_ratio = statistics.median(pair_ratios)
    for arm in (steered, baseline):
        arm["decode_tok_s"] = max(arm["rates"])
    changed = sum(a != b for a, b in zip(steered["texts"], baseline["texts"]))
    result = {
        "decode_ratio": round(decode_ratio, 4),
        "decode_pair_ratios": [round(r, 4) for r in pair_ratios],
        "tokens_ratio": round(steered["mean_tokens"] / baseline["mean_tokens"], 4),
        "acc_steered": steered["accuracy"], "acc_unsteered": baseline["accuracy"],
        "gated_tokens": steered["gated_tokens"], "head_steers": steered["head_steers"],
        "outputs_changed": changed,
        "probe_acc": manifest.probe_acc, "probe_acc_ci95": manifest.probe_acc_ci95,
        "best_head_test_acc": manifest.heads[0].test_acc,
        "best_head_test_ci95": manifest.heads[0].test_ci95, "n_test": manifest.heads[0].n_test,
        "heads_kept": len(manifest.heads), "strength": strength, "gate": args.gate,
        "problems": n_problems, "traces": n_traces, "calibrate_s": round(calibrate_s, 1),
        "fixed_tokens": fixed_tokens, "reps": reps,
        "arms": [{k: v for k, v in a.items() if k != "texts"} for a in (steered, baseline)],
        "machine": machine(), "quick": args.quick,
        "load_average_1min": [round(load_before, 1), round(load_after, 1)],
        "note": ("probe labels are synthetic (generated traces with planted slips); the "
                 "embedded 135M model is weak, so token and accuracy changes say nothing about "
                 "CREST's quality claims, only that the steered path runs and what it costs"),
    }
    print_table([(a["arm"], a["decode_tok_s"], a["mean_tokens"], a["accuracy"],
                  a["gated_tokens"], a["head_steers"]) for a in (steered, baseline)],
                ("arm", "decode tok/s", "mean tokens", "accuracy", "gated tokens", "head steers"))
    print(json.dumps({k: result[k] for k in ("decode_ratio", "tokens_ratio", "acc_steered",
                                             "acc_unsteered", "gated_tokens", "probe_acc",
                                             "probe_acc_ci95", "outputs_changed")}))
    print(f"wrote {write_result('steering', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
