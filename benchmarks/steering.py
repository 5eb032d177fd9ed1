"""CREST head steering against the plain stock engine: tokens, accuracy and speed.

Two in-process engines of one model, both alive: **plain** (vLLM's stock class, no plugin) and
**steered** (the steered class with the calibrated vectors, the manifest's strength, gate
step_and_probe). Both get the same gsm8k problems under the default system prompt, submitted
together, in three passes:

- greedy (T = 0, max_tokens 384) and sampled (T = 0.7, one sample per problem, the same
  per-request seed in both arms, so the two draw alike until steering changes a logit):
  accuracy (paired difference, bootstrap 95% interval), completion tokens per problem,
  outputs changed, and the share of decode tokens whose step gate fired (read from the steered
  worker's counters);
- self-consistency@8 (T = 0.7) on the first --sc-problems problems, majority vote;
- timed: fixed-length passes (ignore_eos, 16 prompts x --fixed-tokens) alternating plain,
  steered, plain, ...: decode tokens/s, the median of the per-pair ratios (other processes
  share the machine's cores).

Calibration (`steering.calibrate`, CREST's probe-and-rank) reads the model's own traces from
--traces (a JSONL file, e.g. from benchmarks/pool_traces.py: qwen05's pooled samples on gsm8k
rows 0-119, which the evaluated rows never include); without --traces it generates synthetic
arithmetic traces (steering/traces.py; for the embedded model, which writes no usable
reasoning). The census line counts how often the model's own steps open with the keywords: the
behaviour CREST steers away from, hence about how many tokens steering can remove at most.

    python benchmarks/pool_traces.py --base-url http://127.0.0.1:8012/v1 --rows 0-119 \\
        --out /tmp/qwen05_traces.jsonl
    python benchmarks/steering.py --model-path /work/qwen/qwen-hf --traces /tmp/qwen05_traces.jsonl \\
        --keywords "Wait,Alternatively,Let me check,Hmm,Let's verify,To verify,However,But" \\
        --work /tmp/steer-qwen        # 150 problems (rows 120-269); --quick: 40
    python benchmarks/steering.py --quick                  # the embedded model, synthetic traces
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Other engines may share these cores: a slow step must not kill the engine (default 300 s).
os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")

import numpy as np  # noqa: E402

from benchmarks._common import data_dir, machine, print_table, write_result  # noqa: E402
from benchmarks.adaptive import paired_ci  # noqa: E402

ENGINE = {"enforce_eager": True, "max_model_len": 2048}
FIRST_REPORT_ROW = 120          # rows before it may feed calibration (pool_traces.py: 0-119)
PASSES = {"greedy": {"temperature": 0.0, "n": 1}, "sampled": {"temperature": 0.7, "n": 1},
          "sc8": {"temperature": 0.7, "n": 8}}


def load_problems(first: int, count: int) -> list[dict]:
    rows = [json.loads(line) for line in (data_dir() / "gsm8k.jsonl").open()]
    return rows[first:first + count]


def keyword_census(texts: list[str], separator: str, keywords: tuple[str, ...],
                   tokenizer) -> dict:
    """How many steps open with a keyword, and their share of the texts' tokens."""
    steps = opened = 0
    tokens = keyword_tokens = 0
    for text in texts:
        parts = text.split(separator)
        for i, part in enumerate(parts):
            n = len(tokenizer.encode(part, add_special_tokens=False))
            tokens += n
            if i == 0:
                continue
            steps += 1
            if part.lstrip().startswith(keywords):
                opened += 1
                keyword_tokens += n
    return {"steps": steps, "keyword_steps": opened,
            "keyword_step_share": round(opened / max(steps, 1), 5),
            "keyword_token_share": round(keyword_tokens / max(tokens, 1), 5)}


async def generate_all(backend, prompts: list[list[int]], params_list: list) -> tuple[
        list[list[list[int]]], list[list[str]], float]:
    """All requests at once. Returns per request its samples' token ids and texts, and the
    DECODE rate: tokens made after every request had its first one, per second of that window."""
    engine = await backend.engine()
    events: list[list[tuple[float, int]]] = []

    async def one(ids: list[int], params):
        final, seen = None, []
        events.append(seen)
        async for out in engine.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
            seen.append((time.perf_counter(), sum(len(o.token_ids) for o in out.outputs)))
            final = out
        return ([list(o.token_ids) for o in final.outputs], [o.text for o in final.outputs])

    results = await asyncio.gather(*(one(ids, p) for ids, p in zip(prompts, params_list)))
    end = time.perf_counter()
    start = max(next(t for t, n in seen if n) for seen in events)
    at_start = sum(max((n for t, n in seen if t <= start), default=0) for seen in events)
    total = sum(len(ids) for samples, _ in results for ids in samples)
    return [r[0] for r in results], [r[1] for r in results], (total - at_start) / (end - start)


def read_stats(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def sampling(pass_name: str, index: int, max_tokens: int, ignore_eos: bool = False):
    """Timed passes stream (the decode window needs each request's progress); natural passes
    take the final output, which is the only one that holds all n samples of a request."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    spec = PASSES[pass_name]
    kind = RequestOutputKind.CUMULATIVE if ignore_eos else RequestOutputKind.FINAL_ONLY
    return SamplingParams(temperature=spec["temperature"], n=spec["n"], max_tokens=max_tokens,
                          seed=None if spec["temperature"] == 0 else 1000 + index,
                          ignore_eos=ignore_eos, output_kind=kind)


async def run_arms(model: str, steering: dict, problems: list[dict], args, work: Path
                   ) -> dict[str, dict]:
    """Natural passes one engine after the other (each finished pass saved in the work folder:
    a cut run resumes), then the timed passes alternating between the two live engines."""
    from reasonloom.backends.vllm.backend import VLLMBackend
    from reasonloom.backends.vllm.engine import shutdown_engines
    from reasonloom.orchestrator.types import Problem
    from reasonloom.prompts import problem_messages
    from reasonloom.verifiers.answers import answers_equal, extract_answer

    engine = {**ENGINE, "dtype": args.dtype}
    backends = {"plain": VLLMBackend(model, engine),
                "steered": VLLMBackend(model, {**engine, "reasonloom_steering": steering})}
    stats_file = Path(steering["stats_file"])
    out: dict[str, dict] = {name: {} for name in backends}
    try:
        for name, backend in backends.items():
            t0 = time.perf_counter()
            await backend.engine()
            out[name]["engine_start_s"] = round(time.perf_counter() - t0, 1)
        any_backend = backends["plain"]
        prompts = [any_backend.render(problem_messages(Problem.from_text(p["question"])))
                   for p in problems]
        for pass_name in PASSES:
            count = args.sc_problems if pass_name == "sc8" else len(problems)
            for name, backend in backends.items():
                saved = work / f"{name}.{pass_name}.json"
                if saved.exists():
                    out[name][pass_name] = json.loads(saved.read_text())
                    continue
                before = read_stats(stats_file)
                t0 = time.perf_counter()
                ids, texts, _ = await generate_all(
                    backend, prompts[:count],
                    [sampling(pass_name, i, args.max_tokens) for i in range(count)])
                after = read_stats(stats_file)
                picks = [Counter(extract_answer(t) for t in samples).most_common(1)[0][0]
                         for samples in texts]
                record = {
                    "texts": texts, "tokens": [sum(len(s) for s in sample) for sample in ids],
                    "correct": [bool(answers_equal(a, str(p["answer"])))
                                for a, p in zip(picks, problems)],
                    "wall_s": round(time.perf_counter() - t0, 1)}
                if name == "steered":
                    record.update({key: after.get(key, 0) - before.get(key, 0)
                                   for key in ("decode_tokens", "gated_tokens", "head_steers")})
                saved.write_text(json.dumps(record))
                out[name][pass_name] = record
                print(f"  {name} {pass_name}: accuracy {np.mean(record['correct']):.3f}, "
                      f"{np.mean(record['tokens']):.1f} tokens/problem, {record['wall_s']} s",
                      flush=True)
        timed = prompts[:16]
        for name in backends:
            out[name]["rates"] = []
        for _ in range(args.reps + 1):          # the first round warms both engines: untimed
            for name, backend in backends.items():
                _, _, rate = await generate_all(
                    backend, timed, [sampling("greedy", i, args.fixed_tokens, ignore_eos=True)
                                     for i in range(len(timed))])
                out[name]["rates"].append(round(rate, 2))
        for name in backends:
            out[name]["rates"] = out[name]["rates"][1:]
    finally:
        shutdown_engines()
    return out


def compare(plain: dict, steered: dict) -> dict:
    a, b = np.array(steered["correct"]), np.array(plain["correct"])
    return {"acc_plain": round(float(b.mean()), 4), "acc_steered": round(float(a.mean()), 4),
            "acc_diff_ci95": paired_ci(a, b),
            "tokens_plain": round(float(np.mean(plain["tokens"])), 1),
            "tokens_steered": round(float(np.mean(steered["tokens"])), 1),
            "tokens_ratio": round(float(np.sum(steered["tokens"]) / np.sum(plain["tokens"])), 4),
            "outputs_changed": sum(x != y for x, y in zip(plain["texts"], steered["texts"])),
            "gated_token_share": round(steered.get("gated_tokens", 0)
                                       / max(steered.get("decode_tokens", 0), 1), 5),
            "head_steers": steered.get("head_steers", 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None, help="HF model folder (default: embedded)")
    parser.add_argument("--traces", default=None, help="the model's own traces (JSONL)")
    parser.add_argument("--keywords", default=None,
                        help="comma-separated step openers that label a step non-linear "
                             "(default: the paper's)")
    parser.add_argument("--quick", action="store_true", help="40 problems, SC@8 on 10")
    parser.add_argument("--problems", type=int, default=None)
    parser.add_argument("--sc-problems", type=int, default=None)
    parser.add_argument("--first-row", type=int, default=FIRST_REPORT_ROW)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--fixed-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--strength", type=float, default=None, help="lambda (default: manifest)")
    parser.add_argument("--gate", default="step_and_probe", choices=("step_and_probe", "step"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="steering", help="results/NAME.json (earlier runs kept)")
    parser.add_argument("--work", default=None, help="work folder: vectors and finished passes "
                                                     "found there are reused (a cut run resumes)")
    args = parser.parse_args()
    args.problems = args.problems or (40 if args.quick else 150)
    args.sc_problems = min(args.sc_problems or (10 if args.quick else 30), args.problems)

    from transformers import AutoConfig, AutoTokenizer

    from reasonloom.backends.vllm.embedded import ensure_embedded_model
    from reasonloom.steering.calibrate import CalibrationConfig, calibrate, traces_file_info
    from reasonloom.steering.traces import arithmetic_traces, read_traces
    from reasonloom.steering.vectors import read_manifest

    model = args.model_path or str(ensure_embedded_model())
    problems = load_problems(args.first_row, args.problems)
    work = Path(args.work or f"/tmp/reasonloom-steering-{Path(model).name}")
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    keywords = tuple(k.strip() for k in args.keywords.split(",")) if args.keywords else None
    cfg = CalibrationConfig(seed=args.seed, **({"keywords": keywords} if keywords else {}))
    traces = read_traces(args.traces) if args.traces else arithmetic_traces(800, seed=args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model)
    t0 = time.perf_counter()
    if (work / "vectors" / "manifest.json").exists():
        manifest = read_manifest(work / "vectors")
    else:
        info = traces_file_info(args.traces) if args.traces else {"generated": "arithmetic"}
        manifest = calibrate(model, traces, work / "vectors", cfg, traces_info=info)
    calibrate_s = time.perf_counter() - t0
    census = keyword_census([t.trace for t in traces], manifest.separator, manifest.keywords,
                            tokenizer)
    print(f"calibration traces: {len(traces)}; census {census}", flush=True)
    strength = manifest.default_strength if args.strength is None else args.strength
    steering = {"vectors": str(work / "vectors"), "strength": strength, "gate": args.gate,
                "stats_file": str(work / "steered.stats.json")}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    arms = asyncio.run(run_arms(model, steering, problems, args, work))
    load_after = os.getloadavg()[0]
    plain, steered = arms["plain"], arms["steered"]
    ratios = sorted(s / p for s, p in zip(steered["rates"], plain["rates"]))
    per_pass = {name: compare(plain[name], steered[name]) for name in PASSES}
    greedy = per_pass["greedy"]
    result = {
        "problems": args.problems,
        "acc_plain": greedy["acc_plain"], "acc_steered": greedy["acc_steered"],
        "tokens_ratio": greedy["tokens_ratio"],
        "decode_ratio_vs_plain": round(statistics.median(ratios), 4),
        "outputs_changed": greedy["outputs_changed"],
        "gated_token_share": greedy["gated_token_share"],
        "architecture": (AutoConfig.from_pretrained(model).architectures or ["?"])[0],
        "passes": per_pass, "sc_problems": args.sc_problems,
        "decode_pair_ratios": [round(r, 4) for r in ratios],
        "decode_tok_s": {"plain": plain["rates"], "steered": steered["rates"]},
        "engine_start_s": {name: arm["engine_start_s"] for name, arm in arms.items()},
        "census_calibration_traces": census,
        "census_plain_greedy": keyword_census([t[0] for t in plain["greedy"]["texts"]],
                                              manifest.separator, manifest.keywords, tokenizer),
        "census_steered_greedy": keyword_census([t[0] for t in steered["greedy"]["texts"]],
                                                manifest.separator, manifest.keywords, tokenizer),
        "keywords": list(manifest.keywords), "strength": strength, "gate": args.gate,
        "heads_kept": len(manifest.heads), "probe_acc": manifest.probe_acc,
        "probe_acc_ci95": manifest.probe_acc_ci95, "boundaries": manifest.boundaries,
        "best_head_test_acc": manifest.heads[0].test_acc, "n_test": manifest.heads[0].n_test,
        "calibration": manifest.traces, "calibrate_s": round(calibrate_s, 1),
        "data": f"gsm8k.jsonl rows {args.first_row}-{args.first_row + args.problems - 1}",
        "model": Path(model).name, "dtype": args.dtype, "max_tokens": args.max_tokens,
        "fixed_tokens": args.fixed_tokens, "reps": args.reps, "quick": args.quick,
        "wall_s": round(time.perf_counter() - t0, 1), "machine": machine(),
        "load_average_1min": [round(load_before, 1), round(load_after, 1)],
        "targets": {"tokens": "tokens_ratio <= 0.8 at acc >= plain - 0.01, or acc >= plain + "
                              "0.02 at tokens_ratio <= 1 (>= 150 problems)",
                    "speed": "decode_ratio_vs_plain >= 0.95"},
    }
    print_table([(name, r["acc_plain"], r["acc_steered"], r["acc_diff_ci95"], r["tokens_plain"],
                  r["tokens_steered"], r["outputs_changed"], r["gated_token_share"])
                 for name, r in per_pass.items()],
                ("pass", "acc plain", "acc steered", "diff 95% CI", "tokens plain",
                 "tokens steered", "changed", "gated share"))
    print(f"decode tokens/s steered / plain: {result['decode_ratio_vs_plain']} "
          f"(pairs {result['decode_pair_ratios']})")
    print(f"wrote {write_result(args.out, result, keep_previous=True)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
