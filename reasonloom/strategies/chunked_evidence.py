"""What the chunked node makes of its workers' reports, for any document.

* `evidence: none` (the default, as both papers): a report is whatever the worker wrote; the
  parallel manager reads them all (`drop_not_found` hides those that say NOT FOUND), and a
  Chain-of-Agents worker's notes replace the notes before them.
* `evidence: quote` (opt-in): workers are asked to copy the words of their part that answer
  the question; a report counts only if it does quote its part: at least one specific word of
  the part that the question did not already say, and every word with a digit in it (a
  number, a date, a code) as written in the part. A report that fails is dropped: the
  parallel manager does not see it, and in Chain-of-Agents it leaves the notes as they were.
  Nothing is repaired or rewritten, so the manager's answer is always its own.

The key-value retrieval repairs of `evidence: kv_lookup` live in chunked_kv_lookup.py.
"""
from __future__ import annotations

import re
from typing import Sequence

from pydantic import BaseModel

from reasonloom.strategies.chunked_prompts import says_not_found

# Words: runs between spaces, quotes, brackets and list punctuation, without sentence marks at
# their ends; hyphens, dots and slashes stay inside (codes, numbers, dates, paths).
_WORD = re.compile(r"[^\s\"'`\u201c\u201d\u2018\u2019,;:()\[\]{}<>|]+")
# Words that carry no evidence even when the part happens to contain them.
COMMON_WORDS = frozenset(
    "a an the and or but if of in on at to for from by with as is are was were be been it its "
    "this that these those there here not no yes answer question part text document notes "
    "value found copy words reply says said".split())


def words(text: str) -> list[str]:
    found = (w.strip(".!?*") for w in _WORD.findall(text))
    return [w for w in found if w]


def lowered(text: str) -> set[str]:
    """The text's distinct words, lower-cased: what is compared against a question or a part."""
    return {w.lower() for w in words(text)}


class Evidence(BaseModel):
    """A report as the manager may read it: `grounded` says whether it counts at all."""

    text: str
    grounded: bool
    reason: str                              # "report", "quoted", or why it does not count
    repaired: list[tuple[str, str]] = []     # kv_lookup only: (as written, as in the part)
    source: str = ""                         # kv_lookup only: the part's line it came from


def as_reported(report: str) -> Evidence:
    """`evidence: none`: the report as written; only an empty or NOT FOUND report is no
    finding (which `drop_not_found` may hide)."""
    found = not says_not_found(report)
    return Evidence(text=report.strip(), grounded=found, reason="report" if found else
                    "not found")


def quotes_its_part(report: str, sources: Sequence[str], question: str) -> Evidence:
    """`evidence: quote`: the report quotes at least one specific word of its sources that
    the question did not say, and every word with a digit in it stands in the sources (or the
    question) exactly as written."""
    if says_not_found(report):
        return Evidence(text=report.strip(), grounded=False, reason="not found")
    asked = lowered(question)
    vocabulary = {w.lower() for source in sources for w in words(source)}
    written = words(report)
    invented = [w for w in written if any(c.isdigit() for c in w)
                and w.lower() not in vocabulary and w.lower() not in asked]
    if invented:
        return Evidence(text=report.strip(), grounded=False,
                        reason=f"not in its part: {invented[0]}")
    if not any(w.lower() in vocabulary and w.lower() not in asked
               and w.lower() not in COMMON_WORDS for w in written):
        return Evidence(text=report.strip(), grounded=False, reason="quotes nothing of its part")
    return Evidence(text=report.strip(), grounded=True, reason="quoted")
