"""Benchmark items: JSONL files in the project's schema (with a field mapping for others), or
seeded reasoning-gym generators graded by their own checkers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel


class DatasetError(ValueError):
    """One line naming the file (and line) and what is wrong."""


class Item(BaseModel):
    id: str | int
    question: str
    answer: str | None = None
    context: str | None = None
    # reasoning-gym items are graded by their task's own checker (kept out of the JSON)
    checker: Any = None

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude={"checker"})


def parse_fields(spec: str | None) -> dict[str, str]:
    """`question=problem,answer=solution` -> {"question": "problem", "answer": "solution"}."""
    mapping = {"question": "question", "answer": "answer", "context": "context", "id": "id"}
    for part in filter(None, (spec or "").split(",")):
        ours, sep, theirs = part.partition("=")
        if not sep or ours.strip() not in mapping:
            raise DatasetError(f"--fields: expected OURS=THEIRS with OURS in "
                               f"{', '.join(mapping)}, got {part!r}")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def load_jsonl(path: str, limit: int | None = None, fields: dict[str, str] | None = None,
               require_answer: bool = True) -> list[Item]:
    """Rows of FILE.jsonl as items; `reasonloom run` reads them too (answers optional)."""
    fields = fields or parse_fields(None)
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"{path}: no such file")
    items: list[Item] = []
    with file.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{where}: not UTF-8 text (byte {exc.start + 1} of the "
                                   f"line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: not a JSON line ({exc.msg})") from None
            except (ValueError, RecursionError) as exc:   # 5,000-digit numbers, deep nesting
                kind = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:80]
                raise DatasetError(f"{where}: not a usable JSON line ({kind})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{where}: a row must be a JSON object")
            items.append(_item(row, fields, require_answer, where, lineno))
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise DatasetError(f"{path}: no rows")
    return items


def _item(row: dict[str, Any], fields: dict[str, str], require_answer: bool, where: str,
          lineno: int) -> Item:
    """One row as an Item, each field's type checked (the file is data from anywhere)."""
    question = row.get(fields["question"])
    if question is None and "input" in row:   # key-value retrieval sets
        question = row["input"]
    if question is None and "turns" in row:   # MT-Bench: the first turn
        turns = row["turns"]
        if not (isinstance(turns, list) and turns and isinstance(turns[0], str)):
            raise DatasetError(f"{where}: turns must be a non-empty list of strings")
        question = turns[0]
    if not isinstance(question, str):
        raise DatasetError(f"{where}: missing field {fields['question']!r}" if question is None
                           else f"{where}: field {fields['question']!r} must be a string")
    if require_answer and fields["answer"] not in row:
        raise DatasetError(f"{where}: missing field {fields['answer']!r}")
    answer = row.get(fields["answer"])
    if isinstance(answer, (dict, list)):
        raise DatasetError(f"{where}: field {fields['answer']!r} must be a string or a number")
    item_id = row.get(fields["id"], row.get("question_id", lineno))
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise DatasetError(f"{where}: field {fields['id']!r} must be a string or an integer")
    context = row.get(fields["context"])
    if context is not None and not isinstance(context, str):
        raise DatasetError(f"{where}: field {fields['context']!r} must be a string")
    text = question + (context or "")
    if "\x00" in text:
        raise DatasetError(f"{where}: text holds NUL characters (binary content)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:   # a lone surrogate (`"\ud800"`) that no tokenizer takes
        raise DatasetError(f"{where}: text holds a lone surrogate (invalid unicode)") from None
    return Item(id=item_id, question=question, answer=None if answer is None else str(answer),
                context=context)


def load_reasoning_gym(source: str, limit: int | None = None, seed: int = 0) -> list[Item]:
    """`reasoning-gym:TASK`: `limit` seeded items (default 20), each with its task's checker."""
    task = source.split(":", 1)[1]
    try:
        import reasoning_gym
    except ImportError:
        raise DatasetError("reasoning-gym is not installed: pip install reasoning-gym") from None
    try:
        data = reasoning_gym.create_dataset(task, size=limit or 20, seed=seed)
    except Exception as exc:
        raise DatasetError(f"{source}: unknown reasoning-gym task ({exc})") from None
    items = []
    for i, entry in enumerate(data):
        checker: Callable[[str], float] = (lambda answer, e=entry: data.score_answer(answer, e))
        items.append(Item(id=f"{task}-{i}", question=entry["question"],
                          answer=str(entry["answer"]), checker=checker))
    return items


def load_items(source: str, limit: int | None = None, fields: str | None = None) -> list[Item]:
    if source.startswith("reasoning-gym:"):
        return load_reasoning_gym(source, limit)
    return load_jsonl(source, limit, parse_fields(fields))
