"""`evidence: kv_lookup` (opt-in, key-value retrieval only): what counts as evidence, garbled
identifiers repaired, the source record a quote came from, asked keys turned into their
records, Chain-of-Agents notes, and the manager's answer checked against what it was shown
(scripted backend)."""
from __future__ import annotations

import asyncio
import re

import pytest

from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Problem
from reasonloom.strategies.chunked_kv_lookup import ground_report
from reasonloom.strategies.chunked_prompts import MANAGER_SYSTEM

from chunked_support import GOLD, KEY, KEYS, VALUES, json_line, lines_document, reader_roles
from chunked_support import chunked_graph as any_graph


def chunked_graph(**params):
    return any_graph(evidence="kv_lookup", **params)


@pytest.mark.parametrize("report,grounded,reason", [
    ("NOT FOUND", False, "not found"),
    ("The director is key-0042.", False, "repeats the question"),
    ("The value associated with the key is key-0042", False, "quotes nothing of its part"),
    ("The code is 4821.", False, "not in its part: 4821"),
    ("Its first director was Ana Ruiz.", True, "quoted"),
    ("The museum opened in 1932.", True, "quoted"),
])
def test_a_report_is_evidence_only_if_it_quotes_its_part(report, grounded, reason):
    part = "The museum opened in 1932. Its first director was Ana Ruiz. Code 7391."
    verdict = ground_report(report, [part], "Who was the first director? (key-0042)")
    assert verdict.grounded is grounded and verdict.reason == reason


def test_a_long_identifier_copied_with_a_wrong_tail_is_repaired_to_the_part():
    part = '{"k1": "0fb435ae-7ba8-4da6-af19-ec281ea9860d", "k2": "2ba9e0f6-0cf5-4a21-aecc-b67a96ffb18a"}'
    verdict = ground_report("It is 0fb435ae-7ba8-4da6-aecc-b67a96ffb18a.", [part], "Key k1?")
    assert verdict.grounded and "0fb435ae-7ba8-4da6-af19-ec281ea9860d" in verdict.text
    # a short number is never "repaired" into another one
    assert not ground_report("It is 7392.", ["Code 7391."], "Which code?").grounded


def test_the_manager_reads_the_reports_and_sentences_that_mention_what_is_asked():
    from reasonloom.strategies.chunked import ChunkedConfig, select_evidence
    from reasonloom.strategies.chunked_evidence import Evidence
    from reasonloom.strategies.chunked_kv_lookup import relevant_sentences

    question = "What is the secret code?"
    reports = ["The cat slept on the warm stones.", "The secret code is 4898."]
    evidence = [Evidence(text=r, grounded=True, reason="quoted") for r in reports]
    kv = ChunkedConfig(evidence="kv_lookup")
    assert select_evidence(reports, evidence, kv, question) == [(1, reports[1])]
    # nothing mentions the question: every verified report stays
    assert len(select_evidence(reports[:1], evidence[:1], kv, question)) == 1
    # the generic quote check keeps both: it does not guess what the question is about
    assert len(select_evidence(reports, evidence, ChunkedConfig(evidence="quote"), question)) == 2
    assert relevant_sentences("Rain was expected. The secret code is 4898.", question) \
        == "The secret code is 4898."
    assert relevant_sentences("Rain was expected.", question) == "Rain was expected."


def test_a_quoted_fragment_is_shown_as_the_record_it_was_copied_from():
    """A weak worker copies a value without its key; the manager reads the part's own record
    (the JSON line is cut into records because it is longer than one sentence should be)."""
    from reasonloom.strategies.chunked_kv_lookup import segments

    part = json_line([KEYS[0], KEY, KEYS[1], KEYS[2]])
    assert len(segments(part)) == 4 and segments("Short. Two sentences.") == ["Short.",
                                                                             "Two sentences."]
    verdict = ground_report(f"The value is {GOLD}.", [part], f'Key: "{KEY}"')
    assert verdict.grounded and verdict.source == f'"{KEY}": "{GOLD}",'
    # prose: the sentence holding most of the quoted words, not every sentence with one of them
    prose = "The code of the gate was changed. Its first director was Ana Ruiz. Ruiz left."
    verdict = ground_report("Ana Ruiz", [prose], "Who was the first director?")
    assert verdict.source == "Its first director was Ana Ruiz."


def test_the_parallel_manager_reads_the_source_record_and_picks_the_one_with_the_asked_key():
    key, gold, other = KEY, GOLD, VALUES[KEYS[1]]
    filler = " ".join(f"Filler sentence number {i} says little." for i in range(60))
    doc = f"{filler}\n{json_line([KEYS[0], KEY, KEYS[1]])}\n{filler}"
    seen: list[str] = []

    def reader(req, index):
        user = req.messages[-1].content
        if req.messages[0].content == MANAGER_SYSTEM:
            seen.append(user)
            return gold if key in user.split("Reports:")[1] else "unknown"
        part = user.split("Part ", 1)[1]
        # a weak worker: a bare value of its part, the wrong one as often as the right one
        return f"It is {other}." if other in part and index % 2 else (
            f"It is {gold}." if gold in part else "not found")

    problem = Problem.from_text(f'What is the value of key "{key}"?', context=doc)
    result = asyncio.run(run(chunked_graph(chunk_tokens=150, overlap_tokens=40), problem,
                             reader_roles(ScriptedBackend(reader))))
    assert result.answer.answer == gold
    shown = seen[0].split("Reports:")[1]
    assert f'"{key}": "{gold}"' in shown and other not in shown


def _read_in_sequence(doc: str, worker, overlap: int = 0):
    """Chain-of-Agents over `doc` asking for KEY's value; `worker(part)` writes each report.
    Returns (result, the notes each worker was given)."""
    notes_seen: list[str] = []

    def reader(req, index):
        user = req.messages[-1].content
        if req.messages[0].content == MANAGER_SYSTEM:
            return user.split("whole document:\n")[1].split("\n")[0]
        notes_seen.append(user.split("Notes from the parts before:\n")[1].split("\n\n")[0])
        return worker(user.split("Part ", 1)[1])

    problem = Problem.from_text(f'What is the value of key "{KEY}"?', context=doc)
    result = asyncio.run(run(chunked_graph(mode="sequential", chunk_tokens=120, overlap_tokens=overlap),
                             problem, reader_roles(ScriptedBackend(reader))))
    return result, notes_seen


def test_sequential_notes_that_answer_the_question_are_not_replaced_by_ones_that_do_not():
    filler = " ".join(f"Filler sentence {i} mentions code-{i:04d}." for i in range(90))

    def worker(part: str) -> str:
        if GOLD in part:
            return f"The value of {KEY} is {GOLD}."
        return f"The part mentions {re.findall(r'code-[0-9]{4}', part)[0]}."   # beside the point

    result, notes_seen = _read_in_sequence(f'"{KEY}": "{GOLD}". {filler}', worker)
    assert result.answer.details["workers"] >= 3
    assert all(GOLD in notes for notes in notes_seen[1:]) and GOLD in result.answer.text


def test_a_report_repeating_the_asked_key_points_at_its_record_only_where_the_part_holds_it():
    question = f'What is the value of key "{KEY}"?'
    echo = f"The value associated with the specified key is: {KEY}"
    holding = ground_report(echo, [json_line([KEYS[0], KEY, KEYS[1], KEYS[2]])], question)
    assert holding.grounded and holding.reason == "points at the asked code"
    assert holding.text == holding.source == f'"{KEY}": "{GOLD}",'
    elsewhere = ground_report(echo, [json_line(KEYS)], question)
    assert not elsewhere.grounded and elsewhere.reason == "quotes nothing of its part"
    # prose words of the question are no pointer: only codes nobody writes by chance
    assert not ground_report("the secret code", ["The secret code is 4898."],
                             "What is the secret code?").grounded


def test_a_question_naming_a_code_is_mentioned_only_by_reports_naming_that_code():
    from reasonloom.strategies.chunked_kv_lookup import mentions_the_question

    question = f'Key: "{KEY}"\nThe value associated with the specified key is:'
    assert not mentions_the_question(f"The value associated with the specified key is {GOLD}",
                                     question)
    assert mentions_the_question(f'"{KEY}": "{GOLD}",', question)
    assert mentions_the_question("The secret code is 4898.", "What is the secret code?")


def test_sequential_notes_take_the_source_record_when_only_it_names_the_asked_key():
    filler = " ".join(f"Filler sentence {i} says little." for i in range(90))
    doc = f'{filler} {json_line([KEYS[0], KEY, KEYS[1]])} {filler}'
    result, notes_seen = _read_in_sequence(
        doc, lambda part: f"The value is {GOLD}." if GOLD in part else "not found", overlap=40)
    assert f'"{KEY}": "{GOLD}"' in notes_seen[-1] and GOLD in result.answer.text


def test_a_manager_answer_that_repeats_the_question_gives_way_to_what_the_evidence_adds():
    from reasonloom.strategies.chunked_kv_lookup import check_answer

    question = f'Key: "{KEY}"\nThe value associated with the specified key is:'
    shown = [f'"{KEY}": "{GOLD}",']
    echo = f"The value associated with the specified key is {KEY}."
    assert check_answer(echo, shown, question) == (GOLD, [], "evidence (the manager "
                                                            "repeated the question)")
    answer = f"The value associated with the specified key is {GOLD}."
    assert check_answer(answer, shown, question) == (answer, [], "manager")
    # evidence that does not mention the question is not an answer to it
    assert check_answer(echo, [f'"{KEYS[0]}": "{GOLD}",'], question)[2] == "manager"
    assert check_answer("The secret code.", ["The secret code is 4898."],
                        "What is the secret code?")[0] == "4898"


def test_parallel_manager_sees_no_invented_or_echoed_reports_and_gets_the_exact_identifier():
    """Weak workers (seen: SmolLM2-135M) never say "not found": they echo the question's key or
    invent an identifier of the right shape. Only the quote of the needle's part reaches the
    manager, and the manager's garbled copy of it is repaired to the document's exact text."""
    code = "7f3a9c2e-55b1-4d0e-9a8f-1c2d3e4f5a6b"
    seen: list[str] = []

    def reader(req, index):
        user = req.messages[-1].content
        if req.messages[0].content == MANAGER_SYSTEM:
            seen.append(user)
            return "The value is 7f3a9c2e-55b1-4d0e-9a8f-1c2d3e4fffff."   # tail miscopied
        part = user.split("Part ", 1)[1]
        if code in part:
            return f"The value is {code}."
        return ("The value of key-0042 is: key-0042" if "Line 1:" in part
                else "The value is 00000000-55b1-4d0e-9a8f-000000000000.")

    doc = lines_document(40, 30, code=code)
    problem = Problem.from_text("What is the value of key-0042?", context=doc)
    result = asyncio.run(run(chunked_graph(chunk_tokens=120, overlap_tokens=30), problem,
                             reader_roles(ScriptedBackend(reader))))
    details = result.answer.details
    assert sum(details["found"]) >= 1 and not all(details["found"])
    assert len(seen) == 1 and seen[0].count("\n#") == sum(details["found"])
    assert "00000000" not in seen[0] and code in seen[0]
    assert code in result.answer.text and details["manager_text"] != result.answer.text
    verdicts = {c.details["verdict"] for c in result.answer.candidates}
    assert "repeats the question" in verdicts and any(v.startswith("not in its part") for v in
                                                       verdicts)
