"""Graders: is a run's answer right? All answer logic lives in verifiers/answers.py."""
from __future__ import annotations

import re
from typing import Callable

from reasonloom.verifiers.answers import answers_equal, extract_answer

GRADERS = ("math", "numeric", "exact", "mc", "kv")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower().rstrip(".")


def grade(grader: str, text: str, extracted: str | None, gold: str) -> bool:
    """`text` is the final answer text, `extracted` the answer the strategy extracted."""
    if grader == "math":
        return answers_equal(extracted if extracted is not None else extract_answer(text), gold)
    if grader == "numeric":
        from reasonloom.verifiers.answers import _numeric

        got = _numeric(extracted or extract_answer(text) or "")
        want = _numeric(gold)
        return got is not None and want is not None and got == want
    if grader == "exact":
        return _norm(extracted if extracted is not None else text) == _norm(gold)
    if grader == "mc":
        return (extract_answer(text, kind="mc") or "").upper() == gold.strip().upper()[:1]
    if grader == "kv":   # key-value retrieval: the value appears in the answer
        return _norm(gold) in _norm(text)
    raise ValueError(f"unknown grader {grader!r} (graders: {', '.join(GRADERS)})")


def grader_for(name: str) -> Callable[[str, str | None, str], bool]:
    if name not in GRADERS:
        raise ValueError(f"unknown grader {name!r} (graders: {', '.join(GRADERS)})")
    return lambda text, extracted, gold: grade(name, text, extracted, gold)
