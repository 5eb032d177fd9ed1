"""Long documents: single shot against chunked reading (divide and conquer, arXiv 2506.16411;
Chain-of-Agents, arXiv 2406.02818), on key-value retrieval and a generated two-hop lookup.

Tasks (long_context_tasks.py): `kv` (the shared kv_{L} files; generated in their format where
no file exists, e.g. L=16000) and `second` (two-hop: the asked key's value is another key, and
the answer is that key's value; generated, seeded). Arms, all greedy, one model for every role:
  single                   the document truncated to fit the window (first and last halves)
  parallel, sequential     the `chunked` node on its defaults (the papers' algorithm)
  {parallel,sequential}_quote      ... with `evidence: quote` (generic, opt-in)
  {parallel,sequential}_kv_lookup  ... with `evidence: kv_lookup` (key-value repairs, opt-in)
  parallel_confidence      ... with `reduce: confidence` (generic, opt-in: every worker answers
                           from its part, the most confident answer wins, no manager)
Graded correct when the gold value is in the answer. `correct_unrepaired` grades the manager's
own text (before kv_lookup's repairs); it equals `correct` for every other arm. Every figure
comes with its 95% Wilson interval; `acc_best_chunked_*` is the best chunked arm run.

Rows are appended to --rows as they finish and a rerun skips finished (task, length, arm, id)
rows, so a killed run resumes; --summarise writes the JSON from the rows alone.

    python benchmarks/long_context.py --base-url http://HOST:8000/v1 --model qwen05
    python benchmarks/long_context.py --limit 1 --lengths 1000     # smoke: JSON to $TMPDIR
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# On a shared, overloaded 2-core machine one engine step can outlast vLLM's 300 s RPC timeout.
os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")

from reasonloom.bench.stats import wilson_ci95  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Problem  # noqa: E402
from benchmarks._common import (RESULTS, machine, print_table, read_rows,  # noqa: E402
                                write_result)
from benchmarks.long_context_tasks import INSTRUCTIONS, TASKS, load_items  # noqa: E402

LENGTHS = (4000, 8000, 16000)
CHUNKED_ARMS = {"parallel": ("parallel", "none"), "sequential": ("sequential", "none"),
                "parallel_quote": ("parallel", "quote"),
                "sequential_quote": ("sequential", "quote"),
                "parallel_kv_lookup": ("parallel", "kv_lookup"),
                "sequential_kv_lookup": ("sequential", "kv_lookup"),
                "parallel_confidence": ("parallel", "none")}
# arms that set more of the node's params (generic options, not kv-specific)
ARM_PARAMS = {"parallel_confidence": {"reduce": "confidence"}}
ARMS = ("single", *CHUNKED_ARMS)
# The embedded SmolLM2-135M is served with a 2048-token window (its own is 8192), so no
# document here fits one prompt; 512-token chunks were its best on kv_1000 probes (issue 14).
EMBEDDED_WINDOW = 2048
EMBEDDED_CHUNK_TOKENS = 512
OVERLAP_TOKENS = 80          # parallel arms; longer than one record ('"key": "value", ')
ANSWER_TOKENS = 128          # the reference's manager limit: a UUID is ~25-33 tokens, and
                             # models restate the asked key (another UUID) before the value
NOTE_TOKENS = 128            # a worker's report or notes: room for two records
ENGINE = {"enforce_eager": True, "enable_prefix_caching": True}
ROWS = RESULTS / "long_context_rows.jsonl"


def reader_roles(backend) -> Roles:
    return Roles({"reader": Role(RoleSpec(name="reader", concurrency=32), backend)})


async def single_problem(backend, task: str, item: dict, window: int) -> Problem:
    """Instruction, document, question in one message; a document that does not fit is cut
    to its first and last halves (as the reference does)."""
    question = item["input"].strip()
    frame = f"{INSTRUCTIONS[task]}\n\n\n\n{question}"
    room = window - backend.estimate_tokens(frame) - 32 - ANSWER_TOKENS
    ids = await backend.tokenize(item["context"])
    document = item["context"]
    if len(ids) > room:
        head = room // 2
        document = (await backend.detokenize(ids[:head]) + "\n...\n"
                    + await backend.detokenize(ids[len(ids) - (room - head - 4):]))
    return Problem.from_text(f"{INSTRUCTIONS[task]}\n\n{document}\n\n{question}",
                             id=item["id"], gold=item["answer"])


def arm_graph(arm: str, chunk_tokens: int | None) -> Graph:
    g = Graph()
    if arm == "single":
        g.add("reader", "generate", {"role": "reader", "n": 1, "temperature": 0.0,
                                     "max_tokens": ANSWER_TOKENS, "system": None},
              {"problem": "problem"})
    else:
        mode, evidence = CHUNKED_ARMS[arm]
        params = {"mode": mode, "evidence": evidence, "worker_role": "reader",
                  "manager_role": "reader", "chunk_tokens": chunk_tokens,
                  "worker_max_tokens": NOTE_TOKENS, "manager_max_tokens": ANSWER_TOKENS,
                  "max_workers": 256, **ARM_PARAMS.get(arm, {})}
        if mode == "parallel":   # Chain-of-Agents keeps its own: no overlap
            params["overlap_tokens"] = OVERLAP_TOKENS
        g.add("reader", "chunked", params, {"problem": "problem"})
    return g.set_output("reader")


async def solve(backend, task: str, length: int, arm: str, item: dict, window: int,
                chunk_tokens: int | None) -> dict:
    if arm == "single":
        problem = await single_problem(backend, task, item, window)
    else:
        # the same instruction and question as single shot; the document goes to the workers
        problem = Problem.from_text(f"{INSTRUCTIONS[task]}\n{item['input'].strip()}",
                                    id=item["id"], context=item["context"], gold=item["answer"])
    t0 = time.monotonic()
    result = await run(arm_graph(arm, chunk_tokens), problem, reader_roles(backend), seed=0)
    answer, total, gold = result.answer, result.usage.total, item["answer"]
    text = answer.text if answer else ""
    details = answer.details if answer else {}
    own = details.get("manager_text", text)
    return {"task": task, "length": length, "arm": arm, "id": item["id"], "gold": gold,
            "correct": gold in text, "correct_unrepaired": gold in own,
            "first_hop_only": bool(item.get("first_hop")) and item["first_hop"] in text,
            "answer": text[:160], "answered_by": details.get("answered_by", "model"),
            "workers": details.get("workers", 1), "calls": total.calls,
            "tokens": total.prompt_tokens + total.completion_tokens,
            "wall_s": round(time.monotonic() - t0, 2), "status": result.status,
            "gold_in_a_report": any(gold in c.text for c in (answer.candidates if answer
                                                            and arm != "single" else []))}


def done_rows(path: Path) -> dict[tuple, dict]:
    return {(r["task"], r["length"], r["arm"], r["id"]): r for r in read_rows(path)}


async def run_items(backend, plan: list[tuple[str, int, dict]], arms: list[str], window: int,
                    chunk_tokens: int | None, concurrency: int, rows_path: Path,
                    model: str) -> None:
    """Every arm on one item, then the next (`concurrency` items in flight): a run cut short
    has all arms on the items it finished."""
    finished = done_rows(rows_path)
    gate = asyncio.Semaphore(concurrency)

    async def one(task: str, length: int, item: dict) -> None:
        async with gate:
            for arm in arms:
                if (task, length, arm, item["id"]) in finished:
                    continue
                row = await solve(backend, task, length, arm, item, window, chunk_tokens)
                row["model"] = model
                with rows_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"  {task}_{length} #{item['id']} {arm}: "
                      f"{'right' if row['correct'] else 'wrong'} ({row['wall_s']} s)",
                      flush=True)

    await asyncio.gather(*(one(*entry) for entry in plan))


def figure(rows: list[dict], key: str = "correct") -> dict:
    n, right = len(rows), sum(bool(r[key]) for r in rows)
    low, high = wilson_ci95(right, n)
    return {"acc": right / n if n else None, "ci95": [round(low, 4), round(high, 4)], "n": n}


def summarise(rows: dict[tuple, dict], tasks, lengths, arms) -> dict:
    out: dict = {}
    table = []
    for task in tasks:
        for length in lengths:
            best = None
            for arm in arms:
                chosen = [r for k, r in rows.items() if k[:3] == (task, length, arm)]
                if not chosen:
                    continue
                fig, own = figure(chosen), figure(chosen, "correct_unrepaired")
                name = f"{arm}_{task}_{length}"
                out.update({f"acc_{name}": fig["acc"], f"ci95_{name}": fig["ci95"],
                            f"n_{name}": fig["n"], f"acc_unrepaired_{name}": own["acc"],
                            f"ci95_unrepaired_{name}": own["ci95"],
                            f"tokens_{name}": sum(r["tokens"] for r in chosen) / len(chosen)})
                table.append((f"{task}_{length}", arm, fig["n"], f"{fig['acc']:.2f}",
                              f"{fig['ci95'][0]:.2f}-{fig['ci95'][1]:.2f}",
                              f"{own['acc']:.2f}", round(out[f"tokens_{name}"])))
                if arm != "single" and (best is None or fig["acc"] > best[1]["acc"]):
                    best = (arm, fig, own)
            if best:
                name = f"best_chunked_{task}_{length}"
                out.update({f"acc_{name}": best[1]["acc"], f"ci95_{name}": best[1]["ci95"],
                            f"arm_{name}": best[0], f"acc_unrepaired_{name}": best[2]["acc"],
                            f"ci95_unrepaired_{name}": best[2]["ci95"]})
    print_table(table, ("set", "arm", "n", "acc", "95% interval", "acc unrepaired",
                        "tokens/item"))
    return out


def make_backend(args):
    if args.base_url:
        from reasonloom.backends.openai import OpenAIBackend

        extra = {"context_length": args.window} if args.window else {}
        backend = OpenAIBackend(args.model, base_url=args.base_url, **extra)
        window = args.window or backend.capabilities.context_length
        if window is None:
            raise SystemExit(f"{args.base_url} does not report its window: pass --window")
        return backend, window, args.chunk_tokens
    from reasonloom.backends.vllm.backend import VLLMBackend
    from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model

    window = args.window or EMBEDDED_WINDOW
    backend = VLLMBackend(str(ensure_embedded_model()), {**ENGINE, "max_model_len": window},
                          served_name=MODEL_NAME)
    return backend, window, args.chunk_tokens or EMBEDDED_CHUNK_TOKENS


async def main(args) -> None:
    smoke = args.limit is not None
    side_run = smoke or args.seed != 0   # a smoke or a tuning run: nothing in benchmarks/results
    out_dir = Path(args.out_dir or (tempfile.gettempdir() if side_run else RESULTS))
    if side_run and out_dir.resolve() == RESULTS.resolve():
        raise SystemExit("a --limit or --seed run (smoke, tuning) never writes to "
                         "benchmarks/results: give it --out-dir")
    rows_path = Path(args.rows or (out_dir / "long_context_rows.jsonl" if side_run else ROWS))
    for folder in (out_dir, rows_path.parent):
        folder.mkdir(parents=True, exist_ok=True)
    n = args.limit or args.items
    arms = args.arms
    model = args.model if args.base_url else "SmolLM2-135M-Instruct (embedded)"
    t0 = time.monotonic()
    if not args.summarise:
        backend, window, chunk_tokens = make_backend(args)
        plan = [(task, length, item) for length in args.lengths for task in args.tasks
                for item in load_items(task, length, n, args.seed)]
        plan.sort(key=lambda entry: entry[2]["id"])
        print(f"{len(plan)} items x arms {arms}, window {window}, chunks "
              f"{chunk_tokens or 'node default'}, rows {rows_path}", flush=True)
        try:
            await run_items(backend, plan, arms, window, chunk_tokens, args.concurrency,
                            rows_path, model)
        finally:
            if not args.base_url:
                from reasonloom.backends.vllm.engine import shutdown_engines

                shutdown_engines()
    rows = done_rows(rows_path)
    summary = summarise(rows, args.tasks, args.lengths, arms)
    # the rows say which model wrote them; rows from before they did take this run's model
    models = sorted({r.get("model", model) for r in rows.values()
                     if r["task"] in args.tasks and r["length"] in args.lengths
                     and r["arm"] in arms})
    summary.update({"seed": args.seed, "machine": machine(), "model": ", ".join(models),
                    "base_url": args.base_url,
                    "tasks": {t: TASKS[t] for t in args.tasks}, "items_per_set": n,
                    "smoke": smoke, "wall_s": round(time.monotonic() - t0, 1),
                    "grading": "gold value is a substring of the answer; unrepaired = the "
                               "manager's own text (kv_lookup arms may answer with a record's "
                               "text); intervals: 95% Wilson"})
    if out_dir.resolve() == RESULTS.resolve():
        print("wrote", write_result("long_context", summary, keep_previous=True))
    else:
        path = out_dir / "long_context.json"
        path.write_text(json.dumps(summary, indent=2) + "\n")
        print("wrote", path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: embedded)")
    parser.add_argument("--model", default="qwen05", help="the server's model name")
    parser.add_argument("--window", type=int, help="tokens per prompt (default: the server's)")
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--arms", nargs="+", choices=ARMS,
                        default=["single", "parallel", "sequential"])
    parser.add_argument("--items", type=int, default=100, help="items per task and length")
    parser.add_argument("--limit", type=int, help="a smoke: this many items, JSON to $TMPDIR")
    parser.add_argument("--chunk-tokens", type=int,
                        help=f"default: {EMBEDDED_CHUNK_TOKENS} embedded, the node's on a server")
    parser.add_argument("--seed", type=int, default=0,
                        help="which items: 0 = the reported ones; 1 = the tuning split (other kv "
                             "rows, other generated documents; give it its own --out-dir)")
    parser.add_argument("--concurrency", type=int, default=8, help="items in flight")
    parser.add_argument("--rows", help=f"rows file (default {ROWS.relative_to(ROOT)})")
    parser.add_argument("--out-dir", help="where the JSON goes (default benchmarks/results)")
    parser.add_argument("--summarise", action="store_true", help="JSON from the rows, no run")
    asyncio.run(main(parser.parse_args()))
