"""What the chunked node makes of its workers' reports on its default path (the papers:
nothing is checked, nothing is rewritten) and with the generic, opt-in `evidence: quote`
(a report must quote its part; one that does not is dropped, never repaired). Scripted backend."""
from __future__ import annotations

import asyncio

import pytest

from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Problem
from reasonloom.strategies.chunked import ChunkedConfig
from reasonloom.strategies.chunked_evidence import quotes_its_part
from reasonloom.strategies.chunked_prompts import MANAGER_SYSTEM

from chunked_support import GOLD, KEY, KEYS, chunked_graph, json_line, reader_roles

PART = "The museum opened in 1932. Its first director was Ana Ruiz. Code 7391."


@pytest.mark.parametrize("report,grounded,reason", [
    ("NOT FOUND", False, "not found"),
    ("The director is key-0042.", False, "quotes nothing of its part"),
    ("The code is 4821.", False, "not in its part: 4821"),
    ("The code is 7392.", False, "not in its part: 7392"),   # a near copy is not repaired
    ("Its first director was Ana Ruiz.", True, "quoted"),
    ("The museum opened in 1932.", True, "quoted"),
])
def test_a_quote_counts_only_if_its_words_stand_in_its_part(report, grounded, reason):
    verdict = quotes_its_part(report, [PART], "Who was the first director? (key-0042)")
    assert verdict.grounded is grounded and verdict.reason == reason
    assert verdict.text == report and not verdict.repaired   # never rewritten


def test_the_papers_overlap_is_128_tokens_for_parallel_workers_and_none_for_a_chain():
    assert ChunkedConfig().overlap == 128
    assert ChunkedConfig(mode="sequential").overlap == 0
    assert ChunkedConfig(mode="sequential", overlap_tokens=40).overlap == 40
    assert ChunkedConfig().evidence == "none" and not ChunkedConfig().drop_not_found


def _kv_document() -> str:
    filler = " ".join(f"Filler sentence number {i} says little." for i in range(60))
    return f"{filler}\n{json_line([KEYS[0], KEY, KEYS[1]])}\n{filler}"


def _echoing_manager(seen: list[str]):
    """Workers: the part holding the key repeats the key (no value); others copy a UUID that
    is nowhere in the document. The manager repeats the question's key."""
    def reader(req, index):
        user = req.messages[-1].content
        if req.messages[0].content == MANAGER_SYSTEM:
            seen.append(user)
            return f"The value is {KEY}."
        part = user.split("Part ", 1)[1].split("\n\nQuestion:")[0]
        return f"The value is {KEY}." if KEY in part else \
            "The value is 00000000-55b1-4d0e-9a8f-000000000000."
    return reader


@pytest.mark.parametrize("evidence", ["none", "quote"])
def test_without_kv_lookup_the_answer_is_the_managers_own_and_no_line_replaces_it(evidence):
    """The kv-only repairs would turn the key-repeating report into its record and the
    manager's echo into the gold value; the default and `quote` paths must not."""
    seen: list[str] = []
    problem = Problem.from_text(f'What is the value of key "{KEY}"?', context=_kv_document())
    result = asyncio.run(run(chunked_graph(chunk_tokens=150, overlap_tokens=40, evidence=evidence),
                             problem, reader_roles(ScriptedBackend(_echoing_manager(seen)))))
    details = result.answer.details
    assert result.answer.text == f"The value is {KEY}." and GOLD not in result.answer.text
    assert details["answered_by"] == "manager" and details["answer_repairs"] == []
    assert GOLD not in seen[0]                       # no record was put in a report's place
    if evidence == "none":
        assert "00000000-55b1" in seen[0]            # the papers: every report is shown
    else:                                            # quote: the invented UUID is dropped
        assert "00000000-55b1" not in seen[0]
        assert not any(details["found"])             # repeating the key quotes nothing new
