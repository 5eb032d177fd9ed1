"""`reasonloom run RECIPE`: one question or a JSONL dataset, a cost line or JSON per problem."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from reasonloom.recipe import RecipeError, load_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="TEXT", help="one question")
    src.add_argument("--dataset", metavar="FILE.jsonl", help="question/answer[/context] rows")
    p.add_argument("--limit", type=int, metavar="N")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override any recipe field, e.g. models.strong.base_url=http://...")
    p.add_argument("--json", action="store_true", help="one JSON line per problem")
    p.add_argument("--trace", metavar="FILE.jsonl", help="append every event to this file")
    p.add_argument("--context-file", metavar="FILE", help="a long document for --input")


class DatasetError(ValueError):
    pass


def read_dataset(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """JSONL rows with `question` (or `input`/`turns`), optional `answer`, `context`, `id`."""
    file = Path(path)
    if not file.exists():
        raise DatasetError(f"{path}: no such file")
    rows = []
    with file.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{lineno}: a row must be a JSON object")
            question = row.get("question") or row.get("input") or (row.get("turns") or [None])[0]
            if not isinstance(question, str):
                raise DatasetError(f"{path}:{lineno}: missing field 'question'")
            rows.append({"id": row.get("id", row.get("question_id", lineno)),
                         "question": question, "answer": row.get("answer"),
                         "context": row.get("context")})
            if limit is not None and len(rows) >= limit:
                break
    return rows


def cost_line(result) -> str:
    u = result.usage.total
    return (f"cost ${u.cost_usd:.6f} | tokens {u.prompt_tokens + u.completion_tokens} "
            f"(prompt {u.prompt_tokens}, completion {u.completion_tokens}, cached "
            f"{u.cached_prompt_tokens}) | calls {u.calls} | {result.wall_s:.1f}s | run "
            f"{result.run_id}")


def main(args: argparse.Namespace) -> int:
    from reasonloom.cli.progress import ProgressDisplay
    from reasonloom.orchestrator.budget import BudgetExceeded
    from reasonloom.orchestrator.result import RunFailed
    from reasonloom.orchestrator.trace import TraceWriter
    from reasonloom.orchestrator.types import Problem

    try:
        recipe = load_recipe(args.recipe, args.set)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.dataset:
            rows = read_dataset(args.dataset, args.limit)
        else:
            context = Path(args.context_file).read_text() if args.context_file else None
            rows = [{"id": 0, "question": args.input, "answer": None, "context": context}]
    except (DatasetError, OSError) as exc:
        print(f"reasonloom run: {exc}", file=sys.stderr)
        return 2
    trace = TraceWriter(args.trace) if args.trace else None

    async def run_all() -> int:
        roles = recipe.build_roles()
        status = 0
        for row in rows:
            problem = Problem.from_text(row["question"], id=row["id"], context=row["context"],
                                        gold=None if row["answer"] is None else str(row["answer"]))
            subscribers = [trace] if trace else []
            with ProgressDisplay(f"[{row['id']}]") as progress:
                try:
                    result = await recipe.arun(problem, roles=roles,
                                               subscribers=[*subscribers, progress])
                except BudgetExceeded as exc:
                    partial = exc.partial
                    best = exc.best.text if exc.best else None
                    print(f"budget exceeded: {exc}", file=sys.stderr)
                    if args.json and partial is not None:
                        print(json.dumps({"id": row["id"], **partial.summary_json()}))
                    elif best is not None:
                        print(f"PARTIAL ANSWER (budget exhausted): {best}")
                    if partial is not None:
                        print(cost_line(partial), file=sys.stderr)
                    status = 3
                    continue
                except RunFailed as exc:
                    print(f"reasonloom run: {exc}", file=sys.stderr)
                    if args.json:
                        print(json.dumps({"id": row["id"], **exc.result.summary_json()}))
                    status = 1
                    continue
            if args.json:
                print(json.dumps({"id": row["id"], **result.summary_json()}), flush=True)
            else:
                print(result.answer.text if result.answer else "(no answer)")
                if result.answer and result.answer.answer is not None:
                    print(f"answer: {result.answer.answer}")
                print(cost_line(result), flush=True)
        return status

    try:
        return asyncio.run(run_all())
    except Exception as exc:   # user-facing one-liner for backend/engine errors
        from reasonloom.backends.errors import BackendError
        from reasonloom.backends.factory import MissingApiKey

        if isinstance(exc, (BackendError, MissingApiKey)):
            print(f"reasonloom run: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, MissingApiKey) else 1
        raise
    finally:
        if trace:
            trace.close()
