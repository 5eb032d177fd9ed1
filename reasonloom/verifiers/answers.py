"""Answer extraction and comparison: the ONE place every strategy and grader uses."""
from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from typing import Callable, Sequence

from reasonloom.orchestrator.types import Answer, Candidate

_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*[:=]?\s*\$?([^\n$]+?)\$?\s*(?:\.\s|\.$|$|\n)",
                        re.IGNORECASE)
# A comma counts as a thousands separator only between groups of three digits ("1,234"),
# so "3,4" stays two numbers and "1,5" is never read as 15.
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?")
_LETTER = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\)?(?![\w])",
                     re.IGNORECASE)
# A bare option at the start of a reply: "B", "(C)", "D." -- but not the word "I".
_LEADING_LETTER = re.compile(r"^\s*\(?([A-J])(?:\)|\.|:|$)")
_LONE_LETTER = re.compile(r"^\(?([A-J])\)?$")


def _boxed_contents(text: str) -> str | None:
    last = None
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                last = text[start:i]
                break
    return last


def extract_answer(text: str, kind: str = "auto") -> str | None:
    """The final answer of a solution: `\\boxed{}`, "the answer is X", a letter, else the last number."""
    if not text:
        return None
    if kind == "mc":
        matches = _LETTER.findall(text)
        if matches:
            return matches[-1].upper()
        match = _LEADING_LETTER.match(text)
        return match.group(1).upper() if match else None
    boxed = _boxed_contents(text)
    if boxed is not None:
        return boxed.strip()
    matches = _ANSWER_IS.findall(text)
    if matches:
        answer = matches[-1].strip().rstrip(".")
        letter = _LONE_LETTER.match(answer)
        if letter:   # "the answer is (B)" -> B
            return letter.group(1)
        numbers = _NUMBER.findall(answer)
        # "the answer is 42 apples" -> 42; keep non-numeric answers as they are
        return numbers[0].replace(",", "") if len(numbers) == 1 else answer
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _numeric(value: str) -> Fraction | None:
    s = value.strip().strip("$").replace("\\!", "").replace("{,}", ",").rstrip(".")
    s = re.sub(r"^\\(?:text|mathrm)\{([^}]*)\}$", r"\1", s)   # \text{12 cm} -> 12 cm
    s = re.sub(r"\\(?:text|mathrm)\{[^}]*\}", "", s).strip()  # 12\text{ cm} -> 12
    s = s.replace("\\$", "").replace("$", "").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:\s*\S*)", s):
        s = s.replace(",", "")   # thousands separators only; "1,5" stays unparsed
    s = re.sub(r"\s*(%|\\%)$", "", s)
    frac = re.fullmatch(r"\\d?frac\{(-?\d+)\}\{(\d+)\}", s)
    if frac:
        return Fraction(int(frac.group(1)), int(frac.group(2)))
    s = re.sub(r"\s+[a-zA-Z]+$", "", s)   # a trailing unit word: "12 cm"
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def as_number(value: str) -> Fraction | None:
    """The number an answer states ("1,234", "\\frac{1}{2}", "12 cm", "50%"), else None."""
    return _numeric(value)


# math-verify logs a warning on every call made with its own (signal-based) timeouts off.
logging.getLogger("math_verify").setLevel(logging.ERROR)
_MAX_SYMBOLIC_CHARS = 400   # longer "answers" are prose: sympy can take minutes on them


def _math_verify(a: str, b: str) -> bool:
    from math_verify import parse, verify

    # parsing_timeout/timeout None: math-verify's signal-based timeouts only work in the main
    # thread; the caller bounds the time instead.
    pa = parse(f"${a}$", parsing_timeout=None)
    pb = parse(f"${b}$", parsing_timeout=None)
    return bool(pa and pb and verify(pa, pb, timeout_seconds=None))


def answers_equal(a: str | None, b: str | None, timeout_s: float = 5.0) -> bool:
    """Equal as math: numbers (fractions, separators, units) first, then math-verify."""
    if a is None or b is None:
        return False
    if a.strip() == b.strip():
        return True
    na, nb = _numeric(a), _numeric(b)
    if na is not None and nb is not None:
        return na == nb
    if max(len(a), len(b)) > _MAX_SYMBOLIC_CHARS:
        return _folded(a) == _folded(b)
    return _symbolic_equal(a, b, timeout_s)


def _folded(answer: str) -> str:
    return re.sub(r"\s+", "", answer).lower()


def _symbolic_equal(a: str, b: str, timeout_s: float) -> bool:
    """math-verify in a daemon thread: its signal timeouts only work in the main thread (and
    would fight the event loop there), and a thread-pool worker stuck in sympy would block
    the interpreter's exit. A stuck daemon thread is abandoned; the answer is then False."""
    box: list[bool | BaseException] = []

    def work() -> None:
        try:
            box.append(_math_verify(a, b))
        except BaseException as exc:   # parse errors of odd answers: fall back below
            box.append(exc)

    worker = threading.Thread(target=work, name="math-verify", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not box:
        return False
    if isinstance(box[0], BaseException):
        return _folded(a) == _folded(b)
    return bool(box[0])


def canonical(answer: str) -> str:
    """A grouping key: numbers normalised, other answers whitespace- and case-folded."""
    number = _numeric(answer)
    if number is not None:
        return str(number)
    return _folded(answer)


def answer_of(candidate: Candidate | Answer) -> str | None:
    """The answer a strategy extracted, else the one extracted from the candidate's text."""
    return candidate.answer if candidate.answer is not None else extract_answer(candidate.text)


def majority_answer(candidates: Sequence[Candidate],
                    tie_break: Callable[[list[Candidate]], float] | None = None,
                    ) -> tuple[str | None, list[Candidate]]:
    """The most frequent EXTRACTED answer and its supporters; ties go to the larger
    `tie_break(supporters)` (e.g. mean confidence), then to the first seen."""
    groups: dict[str, list[Candidate]] = {}
    for cand in candidates:
        answer = answer_of(cand)
        if answer is None:
            continue
        groups.setdefault(canonical(answer), []).append(cand)
    if not groups:
        return None, []
    order = list(groups)
    best = max(order, key=lambda k: (len(groups[k]),
                                     tie_break(groups[k]) if tie_break else 0.0,
                                     -order.index(k)))
    supporters = groups[best]
    return answer_of(supporters[0]), supporters
