"""Prompts of the chunked node: workers (quote your part or say NOT FOUND; Chain-of-Agents
notes) and the manager. How their reports are read is chunked_evidence.py."""
from __future__ import annotations

import re
from typing import Literal, Sequence

from reasonloom.orchestrator.types import Message

Mode = Literal["parallel", "sequential"]

# -- prompts: shared content first (instruction, question), then what differs ---------------
# As the papers ask: a divide-and-conquer worker returns what in its part answers the question
# or says it is not there, and the manager, told that most parts hold no answer, answers
# briefly from all the reports (2506.16411's reference); a Chain-of-Agents worker rewrites the
# notes to keep what helps from the notes and add what helps from its part, and the manager
# answers from the last notes (2406.02818). Nothing here names a task.
WORKER_SYSTEM: dict[str, str] = {
    "parallel": "You read one part of a long document; other readers read the other parts. "
                "Answer the question only from your part: copy the words of your part that "
                "answer it exactly, character for character. If your part does not contain the "
                "answer, reply NOT FOUND.",
    "sequential": "You read a long document one part at a time and pass notes to the reader "
                  "of the next part. Use only the notes and your part.",
}
WORKER_INSTRUCTION: dict[str, str | None] = {
    "parallel": None,
    "sequential": "Write the notes for the next reader: keep what the notes say that helps "
                  "answer the question and add what this part says that helps. If nothing "
                  "helps yet, write: not found.",
}
MANAGER_SYSTEM = ("Readers each read one consecutive part of a long document; most parts do "
                  "not contain the answer, and their readers say NOT FOUND. Answer the "
                  "question from their reports.")
MANAGER_INSTRUCTION = "Answer the question briefly, in a few words."
NO_NOTES = "(none: this is the first part)"
NO_EVIDENCE = "(no reader found evidence)"
_NOT_FOUND = re.compile(r"^\W*(not found|n/?a|none|no answer)\b", re.IGNORECASE)


def says_not_found(report: str) -> bool:
    return not report.strip() or bool(_NOT_FOUND.match(report.strip()))


def _tail(question: str, instruction: str | None, default: str | None) -> str:
    """The question again (a small model answers what it read last), then the instruction:
    None = the default, "" = none."""
    instruction = default if instruction is None else instruction
    return f"Question: {question}" + (f"\n{instruction}" if instruction else "")


def worker_messages(question: str, part: str, index: int, total: int, mode: Mode,
                    instruction: str | None = None, notes: str | None = None
                    ) -> tuple[Message, ...]:
    memory = ""
    if mode == "sequential":
        memory = f"Notes from the parts before:\n{notes or NO_NOTES}\n\n"
    body = (f"Question: {question}\n\n{memory}Part {index + 1} of {total}:\n{part}\n\n"
            f"{_tail(question, instruction, WORKER_INSTRUCTION[mode])}")
    return (Message(role="system", content=WORKER_SYSTEM[mode]),
            Message(role="user", content=body))


def answer_messages(question: str, part: str, instruction: str | None = None
                    ) -> tuple[Message, ...]:
    """reduce: confidence: the worker's part, then the question, as if the part were the whole
    document (a small model answers what it read last; no NOT FOUND to hide behind)."""
    tail = f"\n{instruction}" if instruction else ""
    return (Message(role="user", content=f"{part}\n\n{question}{tail}"),)


def manager_messages(question: str, evidence: Sequence[tuple[int, str]], mode: Mode,
                     instruction: str | None = None) -> tuple[Message, ...]:
    """`evidence`: (chunk index, report) pairs; sequential mode shows the last notes only."""
    if mode == "sequential":
        notes = evidence[-1][1] if evidence else NO_EVIDENCE
        shown = f"Notes after reading the whole document:\n{notes}"
    else:
        lines = [f"#{i + 1}: {text.strip()}" for i, text in evidence] or [NO_EVIDENCE]
        shown = "Reports:\n" + "\n".join(lines)
    body = f"Question: {question}\n\n{shown}\n\n{_tail(question, instruction, MANAGER_INSTRUCTION)}"
    return (Message(role="system", content=MANAGER_SYSTEM), Message(role="user", content=body))
