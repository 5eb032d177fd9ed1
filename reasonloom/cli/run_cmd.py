"""`reasonloom run RECIPE`: one question or a JSONL dataset, a cost line or JSON per problem."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from reasonloom.bench.datasets import DatasetError, load_jsonl
from reasonloom.orchestrator.run_files import (RunFileError, RunLock, check_run_id, check_stores,
                                               read_manifest, write_json)
from reasonloom.recipe import RecipeError, load_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", nargs="?")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="TEXT", help="one question")
    src.add_argument("--dataset", metavar="FILE.jsonl", help="question/answer[/context] rows")
    p.add_argument("--limit", type=int, metavar="N")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override any recipe field, e.g. models.strong.base_url=http://...")
    p.add_argument("--json", action="store_true", help="one JSON line per problem")
    p.add_argument("--trace", metavar="FILE.jsonl", help="append every event to this file")
    p.add_argument("--context-file", metavar="FILE", help="a long document for --input")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a killed run")
    p.add_argument("--cache", nargs="?", const="", metavar="PATH",
                   help="read and write a call cache shared by runs and processes "
                        "(default $REASONLOOM_HOME/cache.sqlite)")


def read_dataset(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """JSONL rows with `question` (or `input`/`turns`), optional `answer`, `context`, `id`."""
    items = load_jsonl(path, limit, require_answer=False)
    return [item.public() for item in items]


def _checked_text(text: str, where: str) -> str:
    """Arguments arrive with undecodable bytes as lone surrogates: refuse them here, not in
    the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DatasetError(f"{where}: not UTF-8 text (character {exc.start + 1})") from None
    if "\x00" in text:
        raise DatasetError(f"{where}: text holds NUL characters (binary content)")
    return text


def _read_text(path: str, where: str) -> str:
    raw = Path(path).read_bytes()
    try:
        return _checked_text(raw.decode("utf-8"), f"{where} {path}")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x})"
                           ) from None


def cost_line(result) -> str:
    u = result.usage.total
    return (f"cost ${u.cost_usd:.6f} | tokens {u.prompt_tokens + u.completion_tokens} "
            f"(prompt {u.prompt_tokens}, completion {u.completion_tokens}, cached "
            f"{u.cached_prompt_tokens}) | calls {u.calls} | {result.wall_s:.1f}s | run "
            f"{result.run_id}")


def save_manifest(run_id: str, manifest: dict[str, Any]) -> None:
    """Atomic: a kill between two writes leaves the previous manifest, never half of one."""
    from reasonloom.orchestrator.cache import runs_dir

    write_json(runs_dir() / f"{run_id}.json", manifest)


def main(args: argparse.Namespace) -> int:
    from reasonloom.cli.console import start_engines, status_console
    from reasonloom.cli.progress import ProgressDisplay
    from reasonloom.orchestrator.budget import BudgetExceeded
    from reasonloom.orchestrator.result import RunFailed
    from reasonloom.orchestrator.trace import TraceWriter
    from reasonloom.orchestrator.types import Problem

    os.umask(0o077)   # run files hold prompts and answers: private to this user
    lock = None
    try:
        if args.resume:
            run_id = check_run_id(args.resume)
            lock = RunLock(run_id).__enter__()   # held until this process ends
            manifest = read_manifest(run_id)
            check_stores(run_id)
        else:
            if not args.recipe or (args.input is None and not args.dataset):
                raise DatasetError("give RECIPE and --input or --dataset (or --resume RUN_ID)")
            if args.dataset:
                rows = read_dataset(args.dataset, args.limit)
            else:
                context = _read_text(args.context_file, "--context-file") \
                    if args.context_file else None
                rows = [{"id": 0, "question": _checked_text(args.input, "--input"),
                         "answer": None, "context": context}]
            run_id = uuid.uuid4().hex[:12]
            lock = RunLock(run_id).__enter__()
            manifest = {"recipe": str(Path(args.recipe).resolve()), "overrides": args.set,
                        "rows": rows, "finished": {}}
    except (DatasetError, RunFileError, OSError) as exc:
        print(f"reasonloom run: {exc}", file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(manifest["recipe"], manifest["overrides"])
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2
    # Every CLI run records its calls, so a killed run can be resumed; a resumed run reads
    # them back and re-issues only the calls that had not completed.
    if args.cache is not None:
        recipe = recipe.with_shared_cache(args.cache or None)
    mode = recipe.spec.cache.mode
    cache = mode if mode != "off" and recipe.spec.cache.path is None else (
        "read_write" if args.resume else "record")
    if not args.resume:
        save_manifest(run_id, manifest)
    console = status_console()   # stderr; stdout carries answers (or JSON lines) only
    console.print(f"run {run_id} (resume with: reasonloom run --resume {run_id})")
    trace = TraceWriter(args.trace) if args.trace else None

    def emit(row: dict, payload: dict[str, Any]) -> None:
        print(json.dumps({"id": row["id"], **payload}), flush=True)

    async def run_all() -> int:
        roles = recipe.build_roles()
        status = 0
        engines_started = False
        for index, row in enumerate(manifest["rows"]):
            done = manifest["finished"].get(str(index))
            if done is not None:   # finished before the kill: print what it gave
                emit(row, done) if args.json else print((done["answer"] or {}).get("text"))
                continue
            if not engines_started:   # one status line per engine, before any node runs
                await start_engines(roles, console)
                engines_started = True
            problem = Problem.from_text(row["question"], id=row["id"], context=row["context"],
                                        gold=None if row["answer"] is None else str(row["answer"]))
            subscribers = [trace] if trace else []
            problem_run = run_id if len(manifest["rows"]) == 1 else f"{run_id}.{index}"
            label = f"[{row['id']}]" if len(manifest["rows"]) > 1 else ""
            with ProgressDisplay(console, label) as progress:
                try:
                    result = await recipe.arun(problem, roles=roles, run_id=problem_run,
                                               cache=cache,
                                               subscribers=[*subscribers, progress])
                except BudgetExceeded as exc:
                    partial = exc.partial
                    best = exc.best.text if exc.best else None
                    print(f"budget exceeded: {exc}", file=sys.stderr)
                    if args.json and partial is not None:
                        emit(row, partial.summary_json())
                    elif best is not None:
                        print(f"PARTIAL ANSWER (budget exhausted): {best}")
                    if partial is not None:
                        console.print(cost_line(partial))
                    status = 3
                    continue
                except RunFailed as exc:
                    print(f"reasonloom run: {exc}", file=sys.stderr)
                    if args.json:
                        emit(row, exc.result.summary_json())
                    status = 1
                    continue
            summary = result.summary_json()
            summary["run_id"] = run_id
            manifest["finished"][str(index)] = summary
            save_manifest(run_id, manifest)
            if args.json:
                emit(row, summary)
            else:
                print(result.answer.text if result.answer else "(no answer)")
                if result.answer and result.answer.answer is not None:
                    print(f"answer: {result.answer.answer}")
                sys.stdout.flush()
                console.print(cost_line(result))
        return status

    try:
        return asyncio.run(run_all())
    except Exception as exc:   # user-facing one-liner for backend/engine errors
        from reasonloom.backends.errors import BackendError, MissingApiKey

        if isinstance(exc, (BackendError, MissingApiKey)):
            print(f"reasonloom run: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, MissingApiKey) else 1
        raise
    finally:
        if trace:
            trace.close()
        if lock is not None:
            lock.__exit__(None, None, None)
