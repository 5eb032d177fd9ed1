"""`evidence: kv_lookup`: repairs built for key-value retrieval (a JSON object of UUID keys and
values, "what is the value of key K?"), and for nothing else. Opt-in; they make SmolLM2-135M's
answers on that benchmark right more often, and can make another task's answers wrong.

SmolLM2-135M never says NOT FOUND on key-value retrieval; it repeats the question's key or
invents an identifier of the right shape, stitched from pieces of real ones. So, beyond the
generic quote check (chunked_evidence.quotes_its_part):
* a near-verbatim copy of a long code is replaced by the part's exact word (fuzzy repair);
* a report that repeats a code of the question (the asked key) is replaced by the part's
  record that holds it (`pointed_at`);
* the parallel manager reads the part's record a report quoted from, and only the reports
  that name the asked code;
* a manager answer that only repeats the question is replaced by what the first record shown
  says beyond it (`check_answer`). Then the answer is text read off a document line, not the
  manager's: `details.answered_by` says so, and a benchmark reports both figures.
"""
from __future__ import annotations

import math
import re
from difflib import SequenceMatcher
from typing import Sequence

from reasonloom.strategies.chunked_evidence import COMMON_WORDS as _COMMON
from reasonloom.strategies.chunked_evidence import Evidence, lowered, words
from reasonloom.strategies.chunked_prompts import says_not_found

# Only long words with a digit (codes, identifiers) are repaired: never "1932", never prose.
REPAIR_MIN_CHARS = 8
REPAIR_MIN_SHARE = 0.5     # ... and only when at least half of the word was copied in one run


def nearest_word(word: str, vocabulary: Sequence[str]) -> str | None:
    """The source word sharing the longest run of characters with `word` (a copy that went
    wrong part-way), if that run is at least half of it."""
    if not is_code(word):
        return None
    need = max(4, math.ceil(REPAIR_MIN_SHARE * len(word)))
    best, best_run = None, need - 1
    low = word.lower()
    for candidate in vocabulary:
        if len(candidate) < need:
            continue
        match = SequenceMatcher(None, low, candidate.lower(), autojunk=False)
        run = match.find_longest_match(0, len(low), 0, len(candidate)).size
        if run > best_run:
            best, best_run = candidate, run
    return best


def _vocabulary(sources: Sequence[str]) -> dict[str, str]:
    vocabulary: dict[str, str] = {}
    for source in sources:
        for w in words(source):
            vocabulary.setdefault(w.lower(), w)
    return vocabulary


def repair_words(text: str, sources: Sequence[str], keep: set[str] | None = None
                 ) -> tuple[str, list[tuple[str, str]], list[str]]:
    """Replace each long word of `text` absent from the sources (and from `keep`) by its
    nearest source word. Returns (text, repairs, words still unsupported)."""
    vocabulary = _vocabulary(sources)
    keep = keep or set()
    repairs: list[tuple[str, str]] = []
    missing: list[str] = []
    for w in dict.fromkeys(words(text)):        # each distinct word once, in order
        if w.lower() in vocabulary or w.lower() in keep:
            continue
        match = nearest_word(w, list(vocabulary.values()))
        if match is None:
            missing.append(w)
        else:
            repairs.append((w, match))
            text = re.sub(rf"(?<![\w-]){re.escape(w)}(?![\w-])", lambda _m: match, text)
    return text, repairs, missing


def ground_report(report: str, sources: Sequence[str], question: str) -> Evidence:
    """Evidence = the report quotes at least one specific word of its sources that the
    question did not already contain, and every word with a digit in it (numbers, dates,
    codes) occurs in the sources, after repairing near-verbatim copies; or it points at a
    code of the question that its part holds (pointed_at)."""
    if says_not_found(report):
        return Evidence(text=report.strip(), grounded=False, reason="not found")
    asked = lowered(question)
    if says_nothing_new(report, question):
        return pointed_at(report, sources, asked, "repeats the question")
    text, repairs, missing = repair_words(report.strip(), sources, keep=asked)
    invented = [w for w in missing if any(c.isdigit() for c in w)]
    if invented:
        return Evidence(text=text, grounded=False, repaired=repairs,
                        reason=f"not in its part: {invented[0]}")
    vocabulary = _vocabulary(sources)
    quoted = [w for w in words(text) if w.lower() not in asked and w.lower() not in _COMMON
              and w.lower() in vocabulary]
    if not quoted:
        return pointed_at(text, sources, asked, "quotes nothing of its part")
    return Evidence(text=text, grounded=True, repaired=repairs, reason="quoted",
                    source=" ".join(source_segments(text, sources)))


def is_code(word: str) -> bool:
    """An identifier, a long number, a date: a word nobody writes by chance."""
    return len(word) >= REPAIR_MIN_CHARS and any(c.isdigit() for c in word)


def pointed_at(report: str, sources: Sequence[str], asked: set[str], otherwise: str
               ) -> Evidence:
    """A report that only repeats the question is no evidence, unless it repeats a code of the
    question (the asked key, an order number) that stands in its part: then it points at the
    record holding it, and that record is the evidence. (SmolLM2-135M, asked for a key's value,
    writes the key itself about a third of the time, in every part; only the part that holds
    the key turns this into evidence.)"""
    vocabulary = _vocabulary(sources)
    codes = [w for w in words(report) if is_code(w) and w.lower() in asked
             and w.lower() in vocabulary]
    found = source_segments(" ".join(codes), sources) if codes else []
    if not found:
        return Evidence(text=report.strip(), grounded=False, reason=otherwise)
    return Evidence(text=" ".join(found), grounded=True, reason="points at the asked code",
                    source=" ".join(found))


def says_nothing_new(answer: str, question: str) -> bool:
    """Every specific word of the answer is the question's own (a manager that writes "the
    value of key X is X"): no answer at all."""
    asked = lowered(question)
    return not any(w.lower() not in asked and w.lower() not in _COMMON for w in words(answer))


def beyond_the_question(evidence: str, question: str) -> str:
    """The evidence's words the question did not say, in order: from the record
    '"X": "Y",' for "the value of key X", Y; from "The code is 4898." for "What is the
    code?", 4898."""
    asked = lowered(question)
    return " ".join(w for w in words(evidence) if w.lower() not in asked)


_QUESTION_WORDS = frozenset("what who whom whose which when where why how do does did can "
                            "could would should please tell give find extract".split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# A sentence longer than this is also cut after its commas and semicolons: a JSON or CSV line,
# a run-on sentence. The evidence should be the record or clause, not the whole paragraph.
SEGMENT_MAX_CHARS = 120
_CLAUSE_END = re.compile(r"(?<=[,;])\s+")
# At most this many segments per report (ties in the number of quoted words).
MAX_SOURCE_SEGMENTS = 3


def segments(text: str) -> list[str]:
    """Sentences, and the records or clauses of sentences over SEGMENT_MAX_CHARS."""
    out: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        if len(sentence) > SEGMENT_MAX_CHARS:
            out.extend(c.strip() for c in _CLAUSE_END.split(sentence) if c.strip())
        elif sentence:
            out.append(sentence)
    return out


def source_segments(quote: str, sources: Sequence[str]) -> list[str]:
    """The segments of the sources that hold the most of the quote's specific words, in order:
    where in its part the worker copied from. A weak worker's report is a fragment (a value
    without its key, a name without its role); its source segment says what the fragment is,
    and a manager reads that better than the fragment."""
    quoted = lowered(quote) - _COMMON
    scored = [(len(quoted & lowered(seg)), seg)
              for source in sources for seg in segments(source)]
    best = max((n for n, _ in scored), default=0)
    if best == 0:
        return []
    return list(dict.fromkeys(seg for n, seg in scored if n == best))[:MAX_SOURCE_SEGMENTS]


def mentions_the_question(report: str, question: str) -> bool:
    """The report shares a specific word with the question: "the secret code is 4898" for
    "What is the secret code?". A question that names a code (a key, an order number) is
    about that code: the report must name it (a lead-in copied from the question, "the value
    associated with the specified key is", says nothing)."""
    asked = lowered(question) - _COMMON - _QUESTION_WORDS
    codes = {w for w in asked if is_code(w)}
    return any(w.lower() in (codes or asked) for w in words(report))


def relevant_sentences(report: str, question: str) -> str:
    """The report's sentences that mention what the question asks about (all of them when
    none does): a weak worker pads its quote with neighbouring sentences, and a weak manager
    may copy the padding."""
    sentences = [s for s in _SENTENCE_END.split(report) if s.strip()]
    kept = [s.strip() for s in sentences if mentions_the_question(s, question)]
    return " ".join(kept) if kept else report


def check_answer(answer: str, shown: Sequence[str], question: str
                 ) -> tuple[str, list[tuple[str, str]], str]:
    """The manager's answer read against the evidence it was shown: garbled copies of its
    identifiers repaired; an answer that only repeats the question (a weak manager shown
    '"X": "Y"' for "the value of key X" answers X) replaced by what the first evidence that
    mentions the question says beyond it. Returns (answer, repairs, who answered)."""
    text, repairs, _ = repair_words(answer, shown, keep=lowered(question))
    if says_nothing_new(text, question):
        extra = [beyond_the_question(t, question) for t in shown
                 if mentions_the_question(t, question)]
        if extra and extra[0]:
            return extra[0], repairs, "evidence (the manager repeated the question)"
    return text, repairs, "manager"


# -- how the node uses them (chunked.py dispatches here for evidence: kv_lookup) -------------
def kv_judge(report: str, sources: Sequence[str], question: str, mode: str) -> Evidence:
    """The report grounded and repaired; the parallel manager reads the part's own record a
    report quoted from; Chain-of-Agents notes stay the worker's words unless only the record
    names what the question asks about."""
    evidence = ground_report(report, sources, question)
    if evidence.grounded and evidence.source and (
            mode == "parallel" or (mentions_the_question(evidence.source, question) and
                                   not mentions_the_question(evidence.text, question))):
        return evidence.model_copy(update={"text": evidence.source})
    return evidence


def kv_select(reports: Sequence[str], evidence: Sequence[Evidence], question: str
              ) -> list[tuple[int, str]]:
    """Verified evidence, narrowed to what names the asked code when any does; if nothing is
    verified, the reports that did not say NOT FOUND."""
    kept = [(i, e.text) for i, e in enumerate(evidence) if e.grounded]
    kept = [(i, t) for i, t in kept if mentions_the_question(t, question)] or kept
    return kept or [(i, r) for i, r in enumerate(reports) if not says_not_found(r)]


def kv_updates_notes(new: Evidence, notes: str | None, question: str) -> bool:
    """Chain-of-Agents: notes that name the asked code are not replaced by evidence that does
    not."""
    return new.grounded and (mentions_the_question(new.text, question)
                             or not mentions_the_question(notes or "", question))
