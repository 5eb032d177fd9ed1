"""Long-context key-value retrieval: single shot against chunked reading (divide and conquer,
arXiv 2506.16411; Chain-of-Agents, arXiv 2406.02818) on the embedded SmolLM2-135M.

The model is served with max_model_len=2048 (its native window is 8192), so kv_2000..kv_8000
(about 2.9k, 5.7k and 11.3k tokens) do not fit one prompt. Arms, all greedy, one model:
  single      the document truncated to fit 2048 (first and last halves kept, as the reference)
  parallel    the `chunked` node, mode parallel (workers + manager)
  sequential  the `chunked` node, mode sequential (Chain-of-Agents notes)
  single8192  a second engine at the native 8192 window, only for items that fit it
Items are spread evenly over each file (the files are ordered by the key's position), graded
as correct when the gold value appears in the answer. Items of one arm run `--concurrency` at
a time, so the wall time per item is measured under that much sharing.

    python benchmarks/long_context.py --quick    # 3 items per length (QUICK_ITEMS)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# On a shared, overloaded 2-core machine one engine step can outlast vLLM's 300 s RPC timeout,
# which kills the engine (seen at a load average of ~70): wait longer instead.
os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")

from reasonloom.backends.vllm.backend import VLLMBackend  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Problem  # noqa: E402
from benchmarks._common import RESULTS, data_dir, machine, print_table, write_result  # noqa: E402

LENGTHS = (1000, 2000, 4000, 8000)
ARMS = ("single", "parallel", "sequential", "single8192")
# 10 items per length took far over 15 min on the shared 2-core machine (one item per length
# took 16 min at a load average of ~35, most of it two engine starts and the sequential chain).
QUICK_ITEMS = 3
MAX_TOKENS = 48          # a UUID is ~25 SmolLM2 tokens, plus a short lead-in
INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object below."
# No instruction after the question: the data's question ends with "The value associated with
# the specified key is:", which SmolLM2 completes with a value; an added instruction ("copy its
# value or reply not found") made it echo the question instead (seen on 1-item probes).
WORKER_INSTRUCTION = ""
MANAGER_INSTRUCTION = ""
# Engine arguments: eager (CPU graph compilation takes minutes here), prefix caching on.
ENGINE = {"enforce_eager": True, "enable_prefix_caching": True}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def copied_a_value(text: str, context: str) -> bool:
    """Diagnostic: the answer holds some key's value from the document (right or wrong key)."""
    return any(f': "{value}"' in context for value in UUID.findall(text))


def load_items(length: int, n: int) -> list[dict]:
    rows = [json.loads(line) for line in (data_dir() / f"kv_{length}.jsonl").open()]
    step = max(1, len(rows) // n)
    return rows[::step][:n]


def reader_roles(backend: VLLMBackend) -> Roles:
    # One model for workers and manager, as in the reference; priced like the recipes' strong.
    return Roles({"reader": Role(RoleSpec(name="reader", price_in_per_m=0.8,
                                          price_out_per_m=3.2, concurrency=32), backend)})


async def single_problem(backend: VLLMBackend, item: dict, window: int, truncate: bool
                         ) -> Problem | None:
    """The whole prompt in one message; a document that does not fit is cut to its first and
    last halves (`truncate`, as the reference does) or skipped (None)."""
    question = item["input"].strip()
    frame = f"{INSTRUCTION}\n\n\n\n{question}"
    room = window - backend.estimate_tokens(frame) - 16 - MAX_TOKENS - 16
    ids = await backend.tokenize(item["context"])
    document = item["context"]
    if len(ids) > room:
        if not truncate:
            return None
        head = room // 2
        document = (await backend.detokenize(ids[:head]) + "\n...\n"
                    + await backend.detokenize(ids[len(ids) - (room - head - 4):]))
    return Problem.from_text(f"{INSTRUCTION}\n\n{document}\n\n{question}", id=item["id"],
                             gold=item["answer"])


def single_graph() -> Graph:
    g = Graph()
    g.add("single", "generate", {"role": "reader", "n": 1, "temperature": 0.0,
                                 "max_tokens": MAX_TOKENS, "system": None},
          {"problem": "problem"})
    g.set_output("single")
    return g


def chunked_graph(mode: str) -> Graph:
    g = Graph()
    g.add("reader", "chunked", {"mode": mode, "worker_role": "reader", "manager_role": "reader",
                                "overlap_tokens": 128, "worker_max_tokens": MAX_TOKENS,
                                "manager_max_tokens": MAX_TOKENS,
                                "worker_instruction": WORKER_INSTRUCTION,
                                "manager_instruction": MANAGER_INSTRUCTION},
          {"problem": "problem"})
    g.set_output("reader")
    return g


async def run_arm(arm: str, backend: VLLMBackend, items: list[dict], window: int,
                  concurrency: int) -> list[dict]:
    roles = reader_roles(backend)
    gate = asyncio.Semaphore(concurrency)

    async def one(item: dict) -> dict:
        async with gate:
            if arm.startswith("single"):
                problem = await single_problem(backend, item, window, arm == "single")
                if problem is None:
                    return {"id": item["id"], "fits": False}
                graph = single_graph()
            else:
                problem = Problem.from_text(item["input"].strip(), id=item["id"],
                                            context=item["context"], gold=item["answer"])
                graph = chunked_graph(arm)
            result = await run(graph, problem, roles, seed=0)
            text = result.answer.text if result.answer else ""
            total = result.usage.total
            return {"id": item["id"], "fits": True, "correct": item["answer"] in text,
                    "copied_a_value": copied_a_value(text, item["context"]),
                    "answer": text[:120], "tokens": total.prompt_tokens + total.completion_tokens,
                    "prompt_tokens": total.prompt_tokens, "calls": total.calls,
                    "workers": (result.answer.details.get("workers", 1)
                                if result.answer else None), "wall_s": result.wall_s}

    return list(await asyncio.gather(*(one(item) for item in items)))


def summarize(rows: list[dict]) -> dict:
    done = [r for r in rows if r.get("fits")]
    if not done:
        return {"n": 0, "acc": None, "copied": None, "tokens": None, "wall_s": None,
                "workers": None}
    return {"n": len(done), "acc": mean(r["correct"] for r in done),
            "copied": mean(r["copied_a_value"] for r in done),
            "tokens": mean(r["tokens"] for r in done), "wall_s": mean(r["wall_s"] for r in done),
            "workers": mean(r["workers"] or 1 for r in done)}


async def phase(window: int, arms: tuple[str, ...], data: dict[int, list[dict]],
                concurrency: int, results: dict, timings: dict) -> None:
    from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model
    from reasonloom.backends.vllm.engine import shutdown_engines

    t0 = time.monotonic()
    backend = VLLMBackend(str(ensure_embedded_model()), {**ENGINE, "max_model_len": window},
                          served_name=MODEL_NAME)
    await backend.engine()
    timings[f"engine_start_{window}_s"] = round(time.monotonic() - t0, 1)
    try:
        for length, items in data.items():
            for arm in arms:
                t1 = time.monotonic()
                rows = await run_arm(arm, backend, items, window, concurrency)
                results[(arm, length)] = rows
                timings[f"{arm}_{length}_s"] = round(time.monotonic() - t1, 1)
                s = summarize(rows)
                print(f"  {arm:>10} kv_{length}: acc={s['acc']} n={s['n']} "
                      f"({timings[f'{arm}_{length}_s']} s)", flush=True)
    finally:
        shutdown_engines()


def plot(summary: dict, doc_tokens: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        points = [(doc_tokens[length], summary[arm][length]["acc"]) for length in doc_tokens
                  if summary[arm][length]["acc"] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=arm)
    ax.axvline(2048, color="grey", linestyle=":", label="2048 window")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("document tokens (SmolLM2 tokenizer)")
    ax.set_ylabel("accuracy (gold value in answer)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("KV retrieval, SmolLM2-135M, 2048-token window")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ITEMS} items per length")
    parser.add_argument("--items", type=int, default=None, help="items per length (default 100)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--concurrency", type=int, default=3, help="items in flight per arm")
    args = parser.parse_args()
    n_items = args.items or (QUICK_ITEMS if args.quick else 100)
    data = {length: load_items(length, n_items) for length in args.lengths}
    print(f"kv retrieval, {n_items} items per length, lengths {args.lengths}, {machine()}")
    results: dict = {}
    timings: dict = {}
    t0 = time.monotonic()
    for window, arms in ((2048, ("single", "parallel", "sequential")), (8192, ("single8192",))):
        try:
            asyncio.run(phase(window, arms, data, args.concurrency, results, timings))
        except Exception as exc:   # e.g. the engine killed for memory on a shared machine
            timings[f"error_{window}"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"  the {window}-token phase stopped: {timings[f'error_{window}']}", flush=True)
    wall = time.monotonic() - t0

    from transformers import AutoTokenizer
    from reasonloom.backends.vllm.embedded import ensure_embedded_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_embedded_model()))
    doc_tokens = {length: round(mean(len(tokenizer.encode(i["context"])) for i in items))
                  for length, items in data.items()}
    summary = {arm: {length: summarize(results.get((arm, length), [])) for length in data}
               for arm in ARMS}
    rows = []
    for length in data:
        for arm in ARMS:
            s = summary[arm][length]
            rows.append((f"kv_{length}", doc_tokens[length], arm, s["n"],
                         "n/a" if s["acc"] is None else f"{s['acc']:.2f}",
                         "-" if s["copied"] is None else f"{s['copied']:.2f}",
                         "-" if s["workers"] is None else f"{s['workers']:.1f}",
                         "-" if s["tokens"] is None else f"{s['tokens']:.0f}",
                         "-" if s["wall_s"] is None else f"{s['wall_s']:.1f}"))
    print()
    print_table(rows, ("set", "doc tokens", "arm", "n", "acc", "any value", "workers",
                       "tokens/item", "wall s/item"))
    payload: dict = {"machine": machine(), "model": "SmolLM2-135M-Instruct (embedded)",
                     "window": 2048, "native_window": 8192, "items_per_length": n_items,
                     "concurrency": args.concurrency, "engine": ENGINE,
                     "grading": "gold value is a substring of the answer; 'any value' = "
                                "the answer holds some key's value from the document",
                     "doc_tokens": doc_tokens, "wall_s": round(wall, 1), "timings": timings}
    for arm in ARMS:
        for length in data:
            s = summary[arm][length]
            payload[f"acc_{arm}_{length}"] = s["acc"]
            payload[f"copied_a_value_{arm}_{length}"] = s["copied"]
            payload[f"tokens_{arm}_{length}"] = s["tokens"]
            payload[f"wall_s_{arm}_{length}"] = s["wall_s"]
            payload[f"workers_{arm}_{length}"] = s["workers"]
    payload["items"] = {f"{arm}_{length}": results.get((arm, length), []) for arm in ARMS
                        for length in data}
    path = write_result("long_context", payload)
    png = RESULTS / "long_context.png"
    plot(summary, doc_tokens, png)
    print(f"\nwrote {path} and {png} ({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
