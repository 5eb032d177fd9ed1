"""Graders: is a run's answer right? Each is a rule verifier's check (verifiers/rules.py)
applied to the answer a run gave; all answer logic lives in the verifiers."""
from __future__ import annotations

from reasonloom.orchestrator.types import Answer
from reasonloom.verifiers.answers import answer_of, extract_answer
from reasonloom.verifiers.rules import equivalent, exact_equal, plain_text

GRADERS = ("math", "numeric", "exact", "mc", "kv")


def grade(grader: str, text: str, extracted: str | None, gold: str) -> bool:
    """`text` is the final answer text, `extracted` the answer the strategy extracted."""
    if grader in ("math", "numeric"):
        return equivalent(answer_of(Answer(text=text, answer=extracted)), gold, grader)
    if grader == "exact":   # the whole text when the strategy extracted nothing
        return exact_equal(extracted if extracted is not None else text, gold)
    if grader == "mc":
        return exact_equal(extract_answer(text, kind="mc") or "", gold.strip()[:1])
    if grader == "kv":   # key-value retrieval: the value appears in the answer
        return plain_text(gold) in plain_text(text)
    raise ValueError(f"unknown grader {grader!r} (graders: {', '.join(GRADERS)})")
