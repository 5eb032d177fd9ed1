"""A model's own reasoning traces for steering calibration, read from the shared gsm8k pool.

The pool (`adaptive.py`, `real_selection.py`) holds n samples per problem, T = 0.7, under the
default system prompt, drawn through the server at --base-url and kept in the shared call
cache. This script runs the same self-consistency request through the runtime with that cache:
pooled samples come back from the cache (the server need not be up), missing ones are drawn
from the server. One JSONL line per sample: question, system, trace, id, answer, correct, in
the form `reasonloom steer calibrate --traces` reads.

    python benchmarks/pool_traces.py --base-url http://127.0.0.1:8012/v1 --rows 0-119 \\
        --out /tmp/qwen05_traces.jsonl
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_pool_arguments, data_dir  # noqa: E402
from benchmarks.adaptive import COMMON, pool_roles  # noqa: E402
from reasonloom.bench.graders import grade  # noqa: E402
from reasonloom.orchestrator.cache import SharedCache  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Problem  # noqa: E402
from reasonloom.prompts import DEFAULT_SYSTEM  # noqa: E402


def row_range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


async def export(args: argparse.Namespace) -> int:
    roles = pool_roles(args)
    cache = SharedCache(Path(args.cache))
    rows = [json.loads(line) for line in (data_dir() / "gsm8k.jsonl").open()]
    written = 0
    with open(args.out, "w") as out:
        for index in row_range(args.rows):
            row = rows[index]
            problem = Problem.from_text(row["question"], id=row["id"], gold=row["answer"])
            graph = Graph().add("x", "self_consistency", {**COMMON, "n": args.n})
            result = await run(graph, problem, roles, seed=0, shared_cache=cache)
            for cand in result.answer.candidates or []:
                out.write(json.dumps({
                    "id": row["id"], "question": row["question"], "system": DEFAULT_SYSTEM,
                    "trace": cand.text, "answer": row["answer"],
                    "correct": grade("numeric", cand.text, cand.answer, row["answer"])}) + "\n")
                written += 1
    cache.close()
    print(f"wrote {written} traces to {args.out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_pool_arguments(parser, problems=0)
    parser.add_argument("--rows", default="0-119", help="gsm8k row range, inclusive")
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--out", required=True)
    raise SystemExit(asyncio.run(export(parser.parse_args())))
