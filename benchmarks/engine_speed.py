"""Engine speed of the embedded model under candidate engine settings: start (cold and warm),
decode tokens/s at batch 1 and 16, prefill tokens/s, time to first token.

    python benchmarks/engine_speed.py --quick   # before, eager/vLLM binding, chosen, forked,
                                                # compiled on every core (~14 min)
    python benchmarks/engine_speed.py           # adds eager in a worker process
    python benchmarks/engine_speed.py --quick --model /work/qwen/qwen-hf --tag qwen05
        # the same arms on another model folder (e.g. the one ../shared/models/strong_model.sh
        # writes), in-process; written to engine_speed_<tag>.json

Every arm runs in fresh processes: a cold start with an empty vLLM/inductor cache folder, then
a warm start with the same folder (a second run on the same machine), which then measures
decoding and prefill. Each start goes through reasonloom's own engine path (VLLMBackend with
the arm's `engine:` arguments), so the defaults under test are the ones a recipe gets. `before`
is the defaults until issue 24 (torch.compile, vLLM's own thread binding), measured in the
same run. Writes benchmarks/results/engine_speed.json; an earlier run's figures are kept under
`previous_runs`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._common import (machine, print_table, python_version,  # noqa: E402
                                write_result)

RECIPE_ENGINE = {"max_model_len": 4096}     # recipes/self_consistency.yaml's `engine:`
BEFORE = "compiled, vLLM binding (before)"
CHOSEN = "eager, every core, one engine process (chosen)"
WORKER = "distributed_executor_backend"   # "mp": the model in a worker process of its own
START = "engine_start"                    # "fork": the engine core skips its imports
FORKED = "eager, every core, one engine process, forked (opt-in)"
COMPILED = "compiled, every core, one engine process, saved compilation loads (opt-in)"
ARMS: dict[str, dict[str, Any]] = {
    BEFORE: {"enforce_eager": False, "cpu_threads_bind": "auto", WORKER: "mp"},
    "eager, vLLM binding": {"enforce_eager": True, "cpu_threads_bind": "auto", WORKER: "mp"},
    "eager, every core, worker process": {"enforce_eager": True, WORKER: "mp"},
    CHOSEN: {},                                      # today's defaults, whatever they resolve to
    FORKED: {START: "fork"},
    COMPILED: {"enforce_eager": False},
}
QUICK_ARMS = (BEFORE, "eager, vLLM binding", CHOSEN, FORKED, COMPILED)
# Until issue 24 the saved compilation never loaded (cpu_fixes.load_saved_compilation): the
# `before` arm starts its engines without that plugin, as the code then did.
LOADER_PLUGIN = "reasonloom_cpu_compilation_loader"
DECODE_TOKENS = 128       # per request, EOS ignored so every arm decodes the same count
DECODE_REPEATS = 3
PREFILL_PROMPTS, PREFILL_LEN = 8, 1000
MARK = "ENGINE_SPEED_RESULT "


# -- inside one arm's process ----------------------------------------------------------------------
async def _timed(engine: Any, prompt_ids: list[int], max_tokens: int, tag: str) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    start, first, tokens = time.monotonic(), None, 0
    async for out in engine.generate({"type": "token", "prompt_token_ids": prompt_ids}, params,
                                      tag):
        tokens += len(out.outputs[0].token_ids)
        first = first or time.monotonic()
    return {"start": start, "first": first, "end": time.monotonic(), "tokens": tokens}


async def _batch(engine: Any, prompts: list[list[int]], max_tokens: int, tag: str) -> dict:
    runs = await asyncio.gather(*(_timed(engine, p, max_tokens, f"{tag}-{i}")
                                  for i, p in enumerate(prompts)))
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"wall_s": wall, "tokens": sum(r["tokens"] for r in runs),
            "prompt_tokens": sum(len(p) for p in prompts),
            "ttft_s": sum(r["first"] - r["start"] for r in runs) / len(runs)}


async def measure(engine_args: dict[str, Any], speed: bool, model: str | None) -> dict:
    from reasonloom.backends.vllm.backend import VLLMBackend
    from reasonloom.backends.vllm.embedded import ensure_embedded_model

    backend = VLLMBackend(model or str(ensure_embedded_model()), {**RECIPE_ENGINE, **engine_args})
    t0 = time.monotonic()
    engine = await backend.engine()
    out: dict[str, Any] = {"start_s": time.monotonic() - t0}
    if not speed:
        return out
    rng = random.Random(0)
    vocab = backend.tokenizer.vocab_size
    short = [rng.sample(range(1000, vocab), 24)                       # distinct: no cache hits
             for _ in range(2 + 16 * DECODE_REPEATS)]
    await _batch(engine, short[:1], 8, "warmup")
    b1 = await _batch(engine, short[1:2], DECODE_TOKENS, "b1")
    # batch 16 three times, the median reported: one batch is ~5 s, and this machine's speed
    # drifts by more than the settings differ
    b16_runs = [await _batch(engine, short[2 + 16 * i:18 + 16 * i], DECODE_TOKENS, f"b16-{i}")
                for i in range(DECODE_REPEATS)]
    b16 = sorted(b16_runs, key=lambda r: r["tokens"] / r["wall_s"])[DECODE_REPEATS // 2]
    long_prompts = [rng.sample(range(1000, vocab), PREFILL_LEN) for _ in range(PREFILL_PROMPTS)]
    prefill = await _batch(engine, long_prompts, 1, "prefill")
    out.update(decode_tps_b1=b1["tokens"] / b1["wall_s"], ttft_b1_s=b1["ttft_s"],
               decode_tps_b16=b16["tokens"] / b16["wall_s"], ttft_b16_s=b16["ttft_s"],
               decode_tps_b16_runs=[r["tokens"] / r["wall_s"] for r in b16_runs],
               prefill_tps=prefill["prompt_tokens"] / prefill["wall_s"],
               decode_tokens_b16=b16["tokens"])
    return out


def resolved(engine_args: dict[str, Any]) -> dict[str, Any]:
    """The settings an arm's engine really gets: eager or not, and the cores it binds."""
    from reasonloom.backends.vllm.cpu_defaults import cpu_engine_settings

    args, env, start_env = cpu_engine_settings(engine_args)
    return {"enforce_eager": bool(args.get("enforce_eager", False)),
            "executor": args.get(WORKER, "vLLM's default"), **env, **start_env}


# -- the driver --------------------------------------------------------------------------------
def plugins_without_loader() -> str:
    """vLLM's VLLM_PLUGINS allow-list: every installed vLLM plugin but the compilation loader."""
    from importlib.metadata import entry_points

    return ",".join(e.name for e in entry_points(group="vllm.general_plugins")
                    if e.name != LOADER_PLUGIN)


def run_arm(name: str, cache: Path, speed: bool, log: Path, model: str | None) -> dict:
    env = {**os.environ, "VLLM_CACHE_ROOT": str(cache),
           "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    if name == BEFORE:
        env["VLLM_PLUGINS"] = plugins_without_loader()
    cmd = [sys.executable, __file__, "--arm", name] + (["--speed"] if speed else []) \
        + (["--model", model] if model else [])
    with open(log, "ab") as err:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, timeout=1200)
    lines = [x for x in proc.stdout.decode().splitlines() if x.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"arm {name!r} failed (exit {proc.returncode}); log: {log}")
    return json.loads(lines[-1][len(MARK):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--speed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="a model folder instead of the embedded SmolLM2-135M")
    parser.add_argument("--tag", help="results go to engine_speed_<tag>.json (with --model)")
    args = parser.parse_args()
    if args.model and not args.tag and not args.arm:
        parser.error("--model needs --tag (the embedded model's figures stay in engine_speed.json)")
    if args.arm:     # one start in this process
        print(MARK + json.dumps(asyncio.run(measure(ARMS[args.arm], args.speed, args.model))),
              flush=True)
        return
    t_run, load_start = time.monotonic(), os.getloadavg()
    names = QUICK_ARMS if args.quick else tuple(ARMS)
    log = Path(tempfile.mkdtemp(prefix="engine_speed_")) / "engines.log"
    arms: dict[str, dict] = {}
    for name in names:
        cache = Path(tempfile.mkdtemp(prefix="engine_speed_cache_"))
        cold = run_arm(name, cache, False, log, args.model)
        warm = run_arm(name, cache, True, log, args.model)
        arms[name] = {"settings": resolved(ARMS[name]), "start_cold_s": cold["start_s"],
                      "start_warm_s": warm.pop("start_s"), **warm}
        print(f"{name}: {json.dumps(arms[name])}", flush=True)
    keys = ("start_cold_s", "start_warm_s", "decode_tps_b1", "decode_tps_b16", "prefill_tps",
            "ttft_b1_s", "ttft_b16_s")
    print_table([(name, *(f"{arms[name][k]:.2f}" for k in keys)) for name in names],
                ("setting", "cold start s", "warm start s", "decode tok/s b1", "decode tok/s b16",
                 "prefill tok/s", "TTFT b1 s", "TTFT b16 s"))
    chosen, before = arms[CHOSEN], arms[BEFORE]
    payload: dict[str, Any] = {
        **{k: chosen[k] for k in keys}, **{f"{k}_before": before[k] for k in keys},
        "decode_b16_speedup": chosen["decode_tps_b16"] / before["decode_tps_b16"],
        "chosen": {"name": CHOSEN, **chosen["settings"]},
        "before": {"name": BEFORE, **before["settings"]},
        "arms": arms, "quick": args.quick, "wall_s": time.monotonic() - t_run,
        "decode_tokens_per_request": DECODE_TOKENS, "decode_b16_repeats": DECODE_REPEATS,
        "prefill": f"{PREFILL_PROMPTS} prompts x {PREFILL_LEN} tokens, submitted together",
        "model": args.model or "embedded SmolLM2-135M-Instruct",
        "engine": RECIPE_ENGINE, "machine": machine(), "python": python_version(),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"decode b16: {payload['decode_b16_speedup']:.2f}x before; wrote",
          write_result(f"engine_speed_{args.tag}" if args.tag else "engine_speed", payload,
                       keep_previous=True))   # every run's figures


if __name__ == "__main__":
    main()
