"""Does the model's token confidence tell its right traces from its wrong ones? (issue 21)

DeepConf saves tokens by dropping or stopping low-confidence traces; that only keeps accuracy
where confidence separates right from wrong traces. This reads the adaptive benchmark's shared
pool (16 samples a problem, confidences from the top-5 log-probs; no model calls: every sample
comes from the call cache) and reports, per split, the AUROC of each trace score for "this
trace's answer is right": over all traces, and within problems (the mean AUROC over problems
that have both right and wrong traces: the case a per-question filter faces).

    python benchmarks/confidence_signal.py --split report
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, print_table, write_result  # noqa: E402
from benchmarks.adaptive import COMMON, SETTINGS, load_problems  # noqa: E402
from reasonloom.backends.openai import OpenAIBackend  # noqa: E402
from reasonloom.bench.graders import grade  # noqa: E402
from reasonloom.orchestrator.cache import SharedCache  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.registry import register_node  # noqa: E402
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Answer, Problem  # noqa: E402
from reasonloom.strategies.sampling import SampleConfig, draw_samples  # noqa: E402
from reasonloom.strategies.trace_confidence import lowest_group_confidence  # noqa: E402
from reasonloom.verifiers.answers import extract_answer  # noqa: E402


@register_node("pooled_traces", SampleConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer"})
async def pooled_traces(inputs: dict, cfg: SampleConfig, ctx) -> dict:
    """The pool's samples with their token confidences (the same requests as SC@16's)."""
    samples = await draw_samples(inputs["problem"], cfg, ctx, 0, cfg.n, "samples")
    return {"answer": Answer(text="", details={"traces": [
        {"text": s.text, "confidences": list(s.confidences or [])} for s in samples]})}


def auroc(scores: np.ndarray, right: np.ndarray) -> float | None:
    """P(a right trace scores above a wrong one), ties counted half."""
    pos, neg = scores[right], scores[~right]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


async def main(args: argparse.Namespace) -> None:
    backend = OpenAIBackend(args.model, base_url=args.base_url, api_key="unused")
    roles = Roles({"strong": Role(RoleSpec(name="strong"), backend)})
    cache = SharedCache(Path(args.cache), "replay")   # a missing sample is an error
    params = {**COMMON, "n": 16}
    scores: dict[str, list[list[float]]] = {"lowest_group": [], "mean": []}
    rights: list[list[bool]] = []
    for row in load_problems(args.split, args.problems):
        problem = Problem.from_text(row["question"], id=row["id"], gold=row["answer"])
        result = await run(Graph().add("x", "pooled_traces", params), problem, roles, seed=0,
                           shared_cache=cache)
        traces = result.answer.details["traces"]
        rights.append([grade("numeric", t["text"], extract_answer(t["text"]), row["answer"])
                       for t in traces])
        scores["lowest_group"].append([lowest_group_confidence(t["confidences"],
                                                               SETTINGS["window"])
                                       for t in traces])
        scores["mean"].append([float(np.mean(t["confidences"] or [0.0])) for t in traces])
    cache.close()
    out: dict = {"split": args.split, "problems": len(rights), "window": SETTINGS["window"],
                 "traces": sum(map(len, rights)),
                 "right_trace_share": round(float(np.mean([r for rs in rights for r in rs])), 4)}
    table = []
    for name, per_problem in scores.items():
        flat = auroc(np.array([s for ss in per_problem for s in ss]),
                     np.array([r for rs in rights for r in rs]))
        within = [a for ss, rs in zip(per_problem, rights)
                  if (a := auroc(np.array(ss), np.array(rs))) is not None]
        out[f"auroc_{name}"] = round(flat, 4) if flat is not None else None
        out[f"auroc_within_{name}"] = round(float(np.mean(within)), 4) if within else None
        out["mixed_problems"] = len(within)
        table.append((name, out[f"auroc_{name}"], out[f"auroc_within_{name}"], len(within)))
    print_table(table, ("score", "AUROC all traces", "AUROC within problems", "mixed problems"))
    out.update({"model": args.model, "machine": machine(), "sampling": COMMON})
    print("wrote", write_result(f"confidence_signal_{args.split}", out, keep_previous=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8012/v1")
    parser.add_argument("--model", default="qwen05")
    parser.add_argument("--split", choices=("tune", "report"), default="report")
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--cache", default=os.environ.get(
        "REASONLOOM_POOL", str(Path.home() / ".cache" / "reasonloom" / "gsm8k_pool.sqlite")))
    asyncio.run(main(parser.parse_args()))
