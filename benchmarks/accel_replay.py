"""Offline replay of the history drafter on recorded samples, to choose its settings (issue 12).

Input: best-of-16 token ids of the TUNING questions (benchmarks/accel_probe.py; MT-Bench
writing questions 6-9, never accel.py's evaluation questions 0-5) and the step costs the
probe measured on this CPU. The replay feeds the drafter what the engine would: 4 rows per
wave, 4 waves, each step the verified context. A drafted token counts as accepted when the
recorded sample wrote it: the engine accepts a deterministic draft token with the model's
probability of it, which is also the chance that a sample writes it, so this estimates
acceptance without bias (run-to-run the samples differ, so each setting is scored on the same
64 samples).

Time of a step = a + b * (tokens verified in the step) + the drafter's own Python time (timed
here); a and b fitted on the probe's `cycle` steps (garbage drafts of 0..4 tokens per row).
Without drafting a step costs what the probe's plain engine measured.

    python benchmarks/accel_replay.py    # seconds; prints a table, writes results/accel_replay.json
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reasonloom.backends.vllm.drafter import DrafterConfig, HistoryDrafter  # noqa: E402

PROBE = Path(os.environ.get("ACCEL_PROBE", ROOT / "benchmarks" / "results" / "accel_probe.json"))
CYCLE = os.environ.get("ACCEL_PROBE_CYCLE", "/tmp/accel_probe_cycle.json")
SAMPLES = os.environ.get("ACCEL_TUNING_SAMPLES", "/work/logs/accel_tuning_samples.json")


class CostModel:
    """Seconds of one engine step on this CPU, from the probe (means of each group of steps,
    which is what wall time adds up): with drafting on, a step of B rows of which D tokens are
    drafts costs s0(B) without drafts, else i(B) + t(B) * D; without drafting none(B). Linear
    in B between the measured B = 4 and B = 16 (extrapolated below 4)."""

    def __init__(self, probe: dict[str, Any], records: list[list[float]]):
        groups: dict[tuple[int, int], list[float]] = {}
        for rows, drafted, step, _ in records:
            if rows and drafted % rows == 0:
                groups.setdefault((rows, drafted // rows), []).append(step)
        self.points: dict[int, tuple[float, float, float]] = {}
        for b in (4, 16):
            xs = [b * k for k in range(1, 5) if (b, k) in groups]
            ys = [float(np.mean(groups[(b, k)])) for k in range(1, 5) if (b, k) in groups]
            slope, icpt = np.polyfit(xs, ys, 1)
            self.points[b] = (float(np.mean(groups[(b, 0)])), float(icpt), float(slope))
        none: dict[int, list[float]] = {}
        for r in probe["none"]:
            none.setdefault(r["rows"], []).append(r["step_s"])
        self.none_pts = {b: float(np.mean(v)) for b, v in none.items()}

    @staticmethod
    def _lerp(b: int, lo: float, hi: float) -> float:
        return max(lo + (hi - lo) * (b - 4) / 12, 0.2 * lo)

    def spec(self, rows: int, drafted: int) -> float:
        (s4, i4, t4), (s16, i16, t16) = self.points[4], self.points[16]
        if drafted == 0:
            return self._lerp(rows, s4, s16)
        return self._lerp(rows, i4, i16) + self._lerp(rows, t4, t16) * drafted

    def none(self, rows: int) -> float:
        return self._lerp(rows, self.none_pts[4], self.none_pts[16])

    def describe(self) -> dict[str, Any]:
        return {"spec_no_draft_s": {b: p[0] for b, p in self.points.items()},
                "spec_draft_intercept_s": {b: p[1] for b, p in self.points.items()},
                "spec_per_draft_token_s": {b: p[2] for b, p in self.points.items()},
                "none_s": self.none_pts}


def replay(prompts: list[list[int]], samples: list[list[list[int]]], cfg: DrafterConfig,
           cost: CostModel, concurrent: bool, waves: int = 4) -> dict[str, float]:
    """Questions one after another (B <= 4) or all at once (B <= 16), waves in order."""
    drafter = HistoryDrafter(cfg)
    spec_s = none_s = py_s = 0.0
    drafted = accepted = steps = row_steps = tokens = 0
    order = [list(range(len(prompts)))] if concurrent else [[q] for q in range(len(prompts))]
    for group in order:
        wave_of = {q: 0 for q in group}
        rows: list[dict[str, Any]] = []

        def start(q: int) -> None:
            per = len(samples[q]) // waves
            for out in samples[q][wave_of[q] * per:(wave_of[q] + 1) * per]:
                rows.append({"q": q, "out": out, "pos": 1, "new": 1})

        for q in group:
            start(q)
        # the plain engine's time: one token per live row per step
        plain = [[len(o) for o in samples[q]] for q in group]
        none_s += _plain_time(plain, waves, cost, concurrent)
        while rows:
            contexts = [np.asarray(prompts[r["q"]] + r["out"][:r["pos"]], dtype=np.int32)
                        for r in rows]
            t0 = time.perf_counter()
            drafts = drafter.propose(contexts, [r["new"] for r in rows])
            py = time.perf_counter() - t0
            n_draft = 0
            for r, d in zip(rows, drafts):
                truth = r["out"][r["pos"]:r["pos"] + len(d)]
                ok = 0
                while ok < len(d) and ok < len(truth) and d[ok] == truth[ok]:
                    ok += 1
                drafted += len(d)
                n_draft += len(d)
                accepted += ok
                step = min(ok + 1, len(r["out"]) - r["pos"])
                r["pos"] += step
                r["new"] = step
                tokens += step
            spec_s += cost.spec(len(rows), n_draft) + py
            py_s += py
            steps += 1
            row_steps += len(rows)
            rows[:] = [r for r in rows if r["pos"] < len(r["out"])]
            for q in group:              # a question's wave ended: its next wave starts
                if not any(r["q"] == q for r in rows) and wave_of[q] + 1 < waves:
                    wave_of[q] += 1
                    start(q)
        drafter.propose([], [])
    return {"speedup": none_s / spec_s, "acceptance": accepted / max(drafted, 1),
            "tokens_per_row_step": tokens / max(row_steps, 1),
            "python_ms_per_step": 1000 * py_s / max(steps, 1),
            "drafted": drafted, "accepted": accepted}


def _plain_time(lengths: list[list[int]], waves: int, cost: CostModel, concurrent: bool
                ) -> float:
    """Steps of the plain engine: each live row writes one token per step."""
    per = len(lengths[0]) // waves
    queues = [[q[w * per:(w + 1) * per] for w in range(waves)] for q in lengths]
    live = [list(q.pop(0)) for q in queues]
    total = 0.0
    while any(live):
        total += cost.none(sum(len(x) for x in live))
        for i, x in enumerate(live):
            live[i] = [n - 1 for n in x if n > 1]
            if not live[i] and queues[i]:
                live[i] = list(queues[i].pop(0))
    return total


def main() -> dict[str, Any]:
    probe = json.loads(PROBE.read_text())
    cost = CostModel(probe, json.loads(Path(CYCLE).read_text()))
    data = json.loads(Path(SAMPLES).read_text())
    prompts, samples = data["prompts"], data["samples"]
    grid = {"concurrent": [False, True], "k": [2, 3, 4, 6, 8],
            "min_accept": [0.0, 0.1, 0.2, 0.4], "classes": [(0, 0), (16, 64), (32, 128)]}
    rows = []
    for concurrent, k, min_accept, (short_len, long_len) in itertools.product(*grid.values()):
        cfg = DrafterConfig(k=k, min_accept=min_accept, short_len=short_len, long_len=long_len)
        r = replay(prompts, samples, cfg, cost, concurrent)
        rows.append({"concurrent": concurrent, "k": k, "min_accept": min_accept,
                     "short_len": short_len, "long_len": long_len, **r})
        print(f"B<={16 if concurrent else 4:2d} k={k} min_accept={min_accept:.2f} "
              f"short={short_len:3d} long={long_len:3d}: speedup {r['speedup']:.3f} "
              f"acceptance {r['acceptance']:.3f} tokens/row-step "
              f"{r['tokens_per_row_step']:.3f} py {r['python_ms_per_step']:.2f} ms", flush=True)
    best = {c: max((r for r in rows if r["concurrent"] == c), key=lambda r: r["speedup"])
            for c in (False, True)}
    return {"cost_model": cost.describe(), "tuning_questions": data["questions"],
            "rows": rows, "best_sequential": best[False], "best_concurrent": best[True]}


if __name__ == "__main__":
    out = main()
    path = ROOT / "benchmarks" / "results" / "accel_replay.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("best B<=4", out["best_sequential"], "\nbest B<=16", out["best_concurrent"],
          "\nwritten", path)
