"""Calibration traces: JSONL lines `{"question": ..., "trace": ...}` (plus optional fields).

Real use: the traces are a real reasoning model's own outputs on calibration problems (CREST
uses the model's temperature-0 traces on MATH train, correct ones only), written to a JSONL file
and read with `read_traces`; steps are split at the separator and labelled by keywords.

`arithmetic_traces` GENERATES traces instead, for tests and the benchmark, because the embedded
135M model writes no usable reasoning of its own. These labels are SYNTHETIC: each trace works a
reasoning-gym `basic_arithmetic` / `chain_sum` item one operation per step, steps joined by
"\\n\\n"; in a seeded 30% of traces one step carries a planted slip (a wrong result) and the
next step is a check ("Wait, let me check ..."), so whether a verification step follows is
predictable from the text before it: a wrong equation. A probe fitted on these learns to spot
that, which is a stand-in for, not evidence of, the behaviour CREST finds in real models.
"""
from __future__ import annotations

import ast
import json
import random
from fractions import Fraction
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ConfigDict

SEPARATOR = "\n\n"
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
_INTROS = ("First,", "Next,", "Then,", "After that,", "Now,")
_CHECKS = ("Wait, let me check: {lhs} = {right}, not {wrong}.",
           "Wait, let me check that again: {lhs} is {right}, not {wrong}.",
           "Wait, let me check the last step: {lhs} = {right}.")


class Trace(BaseModel):
    model_config = ConfigDict(extra="allow")

    question: str = ""
    system: str | None = None           # the system prompt the trace was written under, if any
    trace: str
    id: str | None = None
    answer: str | None = None
    has_slip: bool | None = None        # synthetic ground truth (generated traces only)


def _fmt(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    raise ValueError(f"not a number: {ast.dump(node)}")


def _is_literal(node: ast.AST) -> bool:
    try:
        _value(node)
        return True
    except ValueError:
        return False


def operation_steps(expression: str) -> list[tuple[str, str, str, Fraction]]:
    """The expression's operations in evaluation order: (a, op, b, result) each; a negated
    group is ("", "neg", inner, result)."""
    steps: list[tuple[str, str, str, Fraction]] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            op = _OPS[type(node.op)]
            result = left + right if op == "+" else left - right if op == "-" else left * right
            steps.append((_fmt(left), op, _fmt(right), result))
            return result
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) \
                and not _is_literal(node):
            inner = walk(node.operand)        # a negated group is a step of its own
            steps.append(("", "neg", _fmt(inner), -inner))
            return -inner
        return _value(node)

    walk(ast.parse(expression, mode="eval").body)
    return steps


def write_trace(expression: str, steps: list[tuple[str, str, str, Fraction]],
                slip_at: int | None, rng: random.Random) -> str:
    """Steps joined by the separator; a slip at `slip_at` is followed by a check step. After a
    check the trace carries on with the right value, so the final answer stays correct."""
    parts = [f"We need to compute {expression}."]
    for i, (a, op, b, right) in enumerate(steps):
        lhs = f"-({b})" if op == "neg" else f"{a} {op} {b}"
        intro = _INTROS[min(i, len(_INTROS) - 1)] if i < 2 else rng.choice(_INTROS[1:])
        if i == slip_at:
            wrong = right + rng.choice((-10, -2, -1, 1, 2, 10))
            parts.append(f"{intro} {lhs} = {_fmt(wrong)}.")
            parts.append(rng.choice(_CHECKS).format(lhs=lhs, right=_fmt(right),
                                                    wrong=_fmt(wrong)))
        else:
            parts.append(f"{intro} {lhs} = {_fmt(right)}.")
    parts.append(f"So the answer is {_fmt(steps[-1][3])}.")
    return SEPARATOR.join(parts)


def arithmetic_traces(count: int, seed: int = 0, slip_rate: float = 0.3) -> list[Trace]:
    """`count` generated traces, half basic_arithmetic and half chain_sum (3-5 terms, 1-2
    digits), a seeded `slip_rate` of them with a planted slip and a check step."""
    import reasoning_gym

    half = (count + 1) // 2
    items = list(reasoning_gym.create_dataset(
        "basic_arithmetic", size=half, seed=seed, min_terms=3, max_terms=5, min_digits=1,
        max_digits=2, operators=("+", "-", "*")))
    items += list(reasoning_gym.create_dataset(
        "chain_sum", size=count - half, seed=seed + 1, min_terms=3, max_terms=5, min_digits=1,
        max_digits=2))
    rng = random.Random(seed)
    traces = []
    for i, item in enumerate(items):
        expression = item["metadata"]["expression"]
        steps = operation_steps(expression)
        slip = rng.random() < slip_rate
        slip_at = rng.randrange(len(steps)) if slip else None
        traces.append(Trace(id=f"{item['metadata']['source_dataset']}-{i}",
                            question=item["question"], answer=str(item["answer"]),
                            trace=write_trace(expression, steps, slip_at, rng), has_slip=slip))
    return traces


def read_traces(path: str | Path) -> list[Trace]:
    """One trace per JSONL line; `trace` (or `response` / `completion`) is required."""
    traces = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        row.setdefault("trace", row.pop("response", None) or row.pop("completion", None))
        row.setdefault("question", row.pop("prompt", "") or "")
        if not isinstance(row.get("trace"), str):
            raise ValueError(f"{path}:{n}: no `trace` text")
        traces.append(Trace.model_validate(row))
    return traces


def write_traces(path: str | Path, traces: Iterable[Trace]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(t.model_dump_json(exclude_none=True) + "\n" for t in traces))
    return out
