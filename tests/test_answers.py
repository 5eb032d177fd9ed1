"""Answer extraction, equivalence and majority vote (reasonloom.verifiers.answers)."""
from __future__ import annotations

import threading
import time

import pytest

from reasonloom.orchestrator.types import Candidate
from reasonloom.verifiers import answers
from reasonloom.verifiers.answers import answers_equal, canonical, extract_answer, majority_answer

EQUAL = [
    ("1/2", "0.5"), ("\\frac{1}{2}", "0.5"), ("\\dfrac12", "1/2"), ("\\frac{2}{4}", "\\frac{1}{2}"),
    ("1,000", "1000"), ("1,234,567", "1234567"), ("1{,}000", "1000"), ("$1,000$", "1000"),
    ("12 cm", "12"), ("12\\text{ cm}", "12"), ("\\text{12 cm}", "12"), ("5 dollars", "5"),
    ("\\$5", "5"), ("50\\%", "50"), ("2", "2.0"), ("-3", "- 3"),
    ("x^2+1", "1+x^2"), ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"), ("(1,2)", "(1, 2)"),
    ("A", "a"),
]
UNEQUAL = [
    ("3", "4"), ("1,5", "15"), ("3,4", "34"), ("0.333", "1/3"), ("\\pi", "3.14159"),
    ("1/2", "2"), ("x^2", "x^3"), ("12 cm", "13"), ("1,000", "100"), (None, "1"),
]


@pytest.mark.parametrize("a,b", EQUAL)
def test_equal_answers_compare_equal_both_ways(a, b):
    assert answers_equal(a, b) and answers_equal(b, a)


@pytest.mark.parametrize("a,b", UNEQUAL)
def test_different_answers_compare_unequal(a, b):
    assert not answers_equal(a, b)


@pytest.mark.parametrize("text,expected", [
    ("so the result is \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("nested \\boxed{\\sqrt{\\frac{1}{4}}}", "\\sqrt{\\frac{1}{4}}"),
    ("The answer is 42 apples.", "42"),
    ("Answer: 1,234", "1234"),
    ("The answer is (B).", "B"),
    ("I think 3 + 4 = 7", "7"),
    ("numbers 3,4", "4"),
    ("It costs 1,234,567 dollars", "1234567"),
    ("no digits at all", None),
])
def test_extract_answer_reads_boxed_answer_is_and_last_number(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The answer is (C).", "C"), ("B) because it is", "B"), ("D", "D"),
    ("I think it is wrong", None), ("Option: e", "E"),
])
def test_multiple_choice_letters_are_extracted_without_reading_words(text, expected):
    assert extract_answer(text, kind="mc") == expected


def test_majority_groups_equal_numbers_written_differently():
    cands = [Candidate(text=t) for t in ("The answer is 0.5.", "The answer is 1/2.",
                                         "The answer is 3.", "The answer is 3.",
                                         "The answer is \\frac{1}{2}.")]
    answer, supporters = majority_answer(cands)
    assert canonical(answer) == canonical("1/2")
    assert len(supporters) == 3


def test_majority_ties_go_to_the_tie_break_then_the_first_seen():
    cands = [Candidate(text="", answer="1", score=0.1), Candidate(text="", answer="2", score=0.9)]
    assert majority_answer(cands)[0] == "1"
    assert majority_answer(cands, tie_break=lambda g: g[0].score)[0] == "2"


def test_a_stuck_symbolic_comparison_times_out_off_the_main_thread(monkeypatch):
    seen_threads = []

    def stuck(a, b):
        seen_threads.append(threading.current_thread() is threading.main_thread())
        time.sleep(5)
        return True

    monkeypatch.setattr(answers, "_math_verify", stuck)
    t0 = time.monotonic()
    assert answers_equal("x^2", "x*x", timeout_s=0.3) is False
    assert time.monotonic() - t0 < 2
    assert seen_threads == [False]


def test_symbolic_comparison_runs_when_called_from_a_worker_thread():
    box = []
    worker = threading.Thread(target=lambda: box.append(answers_equal("x^2+1", "1+x^2")))
    worker.start()
    worker.join(30)
    assert box == [True]
