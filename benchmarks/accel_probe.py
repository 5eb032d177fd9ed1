"""Where the drafting speedup of benchmarks/accel.py goes on this CPU (issue 12): measurements
that chose its drafter settings, run on TUNING questions only (MT-Bench writing questions 6-9;
accel.py evaluates on 0-3 and checks losslessness on 4-5).

1. `none`: decode steps of B = 4 and B = 16 rows without speculative decoding (wall / steps).
2. `cycle`: an engine with a probe proposer that drafts 0, 1, 2, ... k garbage tokens per row,
   cycling step by step: one step's cost for B rows x (1 + k) tokens, timed inside the worker
   (from one propose call to the next, less the proposer's own time).
3. `history`: the real history drafter on best-of-16 (4 waves of 4) of one tuning question,
   its own Python time per step and the steps' cost, timed the same way.
4. The token ids of best-of-16 on the 4 tuning questions (no drafter), for offline replay of
   the drafter (benchmarks/accel_replay.py): a deterministic draft token is accepted with the
   model's probability of it, which is also the chance a sample wrote it, so replaying drafts
   against real samples estimates acceptance without bias.

    python benchmarks/accel_probe.py     # ~5 min; writes benchmarks/results/accel_probe.json
"""
from __future__ import annotations

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
os.environ["PYTHONPATH"] = f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"   # the worker imports us
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from reasonloom.backends.vllm.proposer import HistoryProposer  # noqa: E402

TUNING = [6, 7, 8, 9]          # MT-Bench first turns used for tuning (never evaluated)
PROBE_CLASS = "benchmarks.accel_probe.ProbeProposer"
SAMPLES = os.environ.get("ACCEL_TUNING_SAMPLES", "/work/logs/accel_tuning_samples.json")


class ProbeProposer(HistoryProposer):
    """Times every engine step from inside the worker; `cycle` mode drafts garbage of a
    fixed length (0..k, cycling), `history` mode the real drafter."""

    def __init__(self, vllm_config: Any):
        super().__init__(vllm_config)
        self.mode = os.environ.get("ACCEL_PROBE_MODE", "history")
        self.out = os.environ.get("ACCEL_PROBE_OUT", "/tmp/accel_probe_steps.json")
        self.calls = 0
        self.last: tuple[float, int, int, float] | None = None
        self.records: list[tuple[int, int, float, float]] = []   # rows, drafted, step s, py s

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None):
        now = time.perf_counter()
        if self.last is not None:
            t, rows, drafted, py = self.last
            self.records.append((rows, drafted, now - t - py, py))
        t0 = time.perf_counter()
        if self.mode == "cycle":
            k = self.calls % (self.cfg.k + 1)
            drafts = [[int(s[-1])] * k if len(s) else [] for s in sampled_token_ids]
        else:
            drafts = super().propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu,
                                     slot_mappings)
        py = time.perf_counter() - t0
        rows = sum(1 for s in sampled_token_ids if len(s))
        self.last = (now, rows, sum(len(d) for d in drafts), py)
        self.calls += 1
        if self.calls % 50 == 0:
            Path(self.out).write_text(json.dumps(self.records))
        return drafts


def backend(spec: dict | None = None):
    from benchmarks.accel import backend_for, engine_args

    args = engine_args("none")
    if spec is not None:
        args["speculative_config"] = spec
    return backend_for(args)


def question(i: int) -> str:
    from benchmarks.accel import read_jsonl

    return read_jsonl("mt_bench_questions.jsonl")[i]["turns"][0]


async def batch(be, prompt: str, rows: int, max_tokens: int, seed: int) -> dict[str, Any]:
    """`rows` samples of one prompt at once, exactly max_tokens each."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from reasonloom.orchestrator.types import Message

    engine = await be.engine()
    ids = be.render((Message(role="user", content=prompt),))

    async def one(i: int) -> list[int]:
        params = SamplingParams(temperature=0.7, max_tokens=max_tokens, ignore_eos=True,
                                seed=seed + i, output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in engine.generate({"prompt_token_ids": ids}, params, f"p{seed}-{i}"):
            final = out
        return list(final.outputs[0].token_ids)

    t0 = time.monotonic()
    outs = await asyncio.gather(*(one(i) for i in range(rows)))
    wall = time.monotonic() - t0
    return {"rows": rows, "wall_s": wall, "step_s": wall / max_tokens,
            "tokens": sum(map(len, outs))}


async def sample_ids(be, qi: int) -> list[list[int]]:
    """best-of-16 of tuning question qi, 4 waves of 4, as accel.py issues them."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from reasonloom.orchestrator.types import Message

    engine = await be.engine()
    ids = be.render((Message(role="user", content=question(qi)),))

    async def one(seed: int) -> list[int]:
        params = SamplingParams(temperature=0.7, max_tokens=384, seed=seed,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in engine.generate({"prompt_token_ids": ids}, params, f"s{qi}-{seed}"):
            final = out
        return list(final.outputs[0].token_ids)

    out: list[list[int]] = []
    for wave in range(4):
        out += await asyncio.gather(*(one(1000 * qi + 4 * wave + i) for i in range(4)))
    return out


def steps_by_k(path: str) -> dict[str, Any]:
    """Median engine time of a step, by rows and draft tokens per row."""
    records = json.loads(Path(path).read_text())
    groups: dict[tuple[int, int], list[float]] = {}
    for rows, drafted, step, _ in records:
        if rows and drafted % rows == 0:
            groups.setdefault((rows, drafted // rows), []).append(step)
    return {f"B{b}_k{k}": {"median_s": median(v), "n": len(v)}
            for (b, k), v in sorted(groups.items()) if len(v) >= 5}


async def main() -> dict[str, Any]:
    from benchmarks.accel import spec_counters, acceptance, stop

    result: dict[str, Any] = {"tuning_questions": TUNING}
    plain = backend()
    await plain.engine()
    prompt = question(TUNING[0])
    await batch(plain, prompt, 4, 16, 0)       # warm-up
    result["none"] = [await batch(plain, prompt, b, 192, 10 * b) for b in (4, 16, 4)]
    print("none", result["none"], flush=True)
    t0 = time.monotonic()
    samples = await asyncio.gather(*(sample_ids(plain, qi) for qi in TUNING))
    result["tuning_samples_wall_s"] = time.monotonic() - t0
    from reasonloom.orchestrator.types import Message

    Path(SAMPLES).write_text(json.dumps(
        {"questions": TUNING, "samples": samples,
         "prompts": [plain.render((Message(role="user", content=question(q)),))
                     for q in TUNING]}))
    stop(plain)

    for mode, spec_k in (("cycle", 4), ("history", 4)):
        os.environ["ACCEL_PROBE_MODE"] = mode
        os.environ["ACCEL_PROBE_OUT"] = out = f"/tmp/accel_probe_{mode}.json"
        be = backend({"method": "custom_class", "model": PROBE_CLASS,
                      "num_speculative_tokens": spec_k})
        try:
            await be.engine()
            await batch(be, prompt, 4, 16, 0)
            before = spec_counters()
            t0 = time.monotonic()
            if mode == "cycle":
                runs = [await batch(be, prompt, b, 192, 10 * b) for b in (4, 16)]
            else:
                ids = await sample_ids(be, TUNING[1])
                runs = [{"tokens": sum(map(len, ids))}]
            wall = time.monotonic() - t0
            result[mode] = {"runs": runs, "wall_s": wall,
                            "acceptance": acceptance(before, spec_counters())}
            await asyncio.sleep(0.5)
        finally:
            stop(be)
        result[mode]["steps"] = steps_by_k(out)
        records = json.loads(Path(out).read_text())
        result[mode]["python_s_per_step"] = median(r[3] for r in records)
        result[mode]["python_s_mean"] = sum(r[3] for r in records) / len(records)
        result[mode]["step_s_mean"] = sum(r[2] for r in records) / len(records)
        print(mode, json.dumps(result[mode])[:2000], flush=True)
    return result


async def async_check() -> dict[str, Any]:
    """The plain engine with and without vLLM's async scheduling (which vLLM 0.32 turns off
    for ngram and custom_class drafting): how much of a drafting engine's extra step cost
    is that, rather than drafting itself."""
    from benchmarks.accel import backend_for, engine_args, stop

    prompt = question(TUNING[0])
    out: dict[str, Any] = {}
    for name, extra in (("async_off", {"async_scheduling": False}), ("async_on", {})):
        be = backend_for(engine_args("none", **extra))
        try:
            await be.engine()
            await batch(be, prompt, 4, 16, 0)
            out[name] = [await batch(be, prompt, b, 192, 10 * b) for b in (4, 16)]
        finally:
            stop(be)
        print(name, out[name], flush=True)
    return out


if __name__ == "__main__":
    path = ROOT / "benchmarks" / "results" / "accel_probe.json"
    if sys.argv[1:] == ["--async-check"]:
        res = json.loads(path.read_text())
        res["async_check"] = asyncio.run(async_check())
        path.write_text(json.dumps(res, indent=2) + "\n")
        print("written", path)
        sys.exit(0)
    res = asyncio.run(main())
    path.write_text(json.dumps(res, indent=2) + "\n")
    print("written", path)
