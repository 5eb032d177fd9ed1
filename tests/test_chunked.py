"""Chunked long-context node: token splitting (property tests), the two modes' data flow on a
scripted backend, and refusing documents too long for the run before any call."""
from __future__ import annotations

import asyncio
import doctest
import functools
import math
import random
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.budget import Budget, BudgetSpec
from reasonloom.orchestrator.context import RunContext, RunState
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.result import RunFailed
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Problem
from reasonloom.strategies.chunked import (FALLBACK_MARGIN, ChunkedConfig, DocumentTooLong,
                                           check_reading, cut_document, plan_reading,
                                           split_tokens)
from reasonloom.strategies.chunked_evidence import ground_report
from reasonloom.strategies.chunked_prompts import MANAGER_SYSTEM

ROOT = Path(__file__).resolve().parents[1]


# -- split_tokens ------------------------------------------------------------------------------
@given(n=st.integers(0, 5000), chunk=st.integers(1, 600), data=st.data())
def test_chunks_cover_every_token_share_exactly_the_overlap_and_fit_the_budget(n, chunk, data):
    overlap = data.draw(st.integers(0, chunk - 1))
    spans = split_tokens(n, chunk, overlap)
    if n == 0:
        assert spans == []
        return
    covered = set()
    for start, end in spans:
        assert 0 <= start < end <= n
        assert end - start <= chunk
        covered.update(range(start, end))
    assert covered == set(range(n))
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 - s1 == overlap                 # exactly the overlap, no gap
        assert e1 > e0                            # every chunk brings new tokens
    assert len(spans) == max(1, math.ceil((n - overlap) / (chunk - overlap)))


def test_the_last_token_is_read_where_the_reference_split_drops_the_tail():
    # The reference cuts L/n characters per chunk and moves each start back by the overlap,
    # so the last (n-1)*overlap characters are never read. Here the last chunk ends at n.
    spans = split_tokens(10_000, 1000, 200)
    assert spans[-1][1] == 10_000 and len(spans) == math.ceil(9800 / 800)


@pytest.mark.parametrize("chunk,overlap", [(0, 0), (5, 5), (5, 7), (5, -1)])
def test_impossible_chunking_is_refused(chunk, overlap):
    with pytest.raises(ValueError):
        split_tokens(100, chunk, overlap)


# -- cutting real text ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _smollm_backend():
    from reasonloom.backends.vllm.backend import VLLMBackend
    from reasonloom.backends.vllm.embedded import model_dir

    if not (model_dir() / "tokenizer.json").exists():
        pytest.skip("embedded model not converted yet")
    return VLLMBackend(str(model_dir()))   # tokenizer only: no engine starts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from(
    "\n\t\u00e9\u4e2d"), min_size=0, max_size=400), chunk=st.integers(2, 40), data=st.data())
def test_document_chunks_by_real_tokens_cover_the_text_in_order(text, chunk, data):
    backend = _smollm_backend()
    overlap = data.draw(st.integers(0, chunk - 1))
    doc = asyncio.run(cut_document(backend, text, chunk, overlap))
    ids = backend.tokenizer.encode(text, add_special_tokens=False)
    assert doc.exact and doc.n_tokens == len(ids)
    assert doc.spans == split_tokens(len(ids), chunk, overlap)
    # The non-overlapping parts of the chunks are the document's tokens, all of them, in order.
    rejoined = [t for i, (s, e) in enumerate(doc.spans)
                for t in ids[s if i == 0 else doc.spans[i - 1][1]:e]]
    assert rejoined == ids
    if text.isascii():   # byte-level tokens of non-ASCII characters may straddle a cut
        position = 0
        for piece in doc.texts:
            # each piece starts inside what came before (overlap) and carries on from there;
            # with repeated characters take the start that reaches furthest
            starts = [i for i in range(max(0, position - len(piece)), position + 1)
                      if text.startswith(piece, i)]
            assert starts, piece
            position = starts[-1] + len(piece)
        assert position == len(text)


@given(text=st.text(min_size=1, max_size=600), chunk=st.integers(2, 50), data=st.data())
def test_character_fallback_covers_the_text_when_the_backend_cannot_tokenize(text, chunk, data):
    overlap = data.draw(st.integers(0, chunk - 1))
    doc = asyncio.run(cut_document(ScriptedBackend(), text, chunk, overlap))
    assert not doc.exact
    assert doc.chunk == max(1, int(chunk * FALLBACK_MARGIN)) and doc.overlap < doc.chunk
    rebuilt = doc.texts[0] + "".join(t[doc.overlap * 3:] for t in doc.texts[1:])
    assert rebuilt == text
    assert all(len(t) <= doc.chunk * 3 for t in doc.texts)


# -- the two modes on a scripted backend ---------------------------------------------------------
def _document(n_lines: int, needle_line: int, code: str = "7391") -> str:
    lines = [f"Line {i}: the weather was mild and nothing happened." for i in range(n_lines)]
    lines[needle_line] = f"Line {needle_line}: the secret code is {code}."
    return "\n".join(lines)


def _reader(req, index) -> str:
    """Workers report the code only if their part shows it; the manager repeats a report."""
    system, user = req.messages[0].content, req.messages[-1].content
    if system == MANAGER_SYSTEM:
        match = re.search(r"code is (\d+)", user)
        return f"The code is {match.group(1)}." if match else "unknown"
    part = user.split("Part ", 1)[1]
    match = re.search(r"secret code is (\d+)", part)
    return f"the secret code is {match.group(1)}" if match else "not found"


def _roles(backend, **prices) -> Roles:
    return Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=1.0,
                                          price_out_per_m=2.0, **prices), backend),
                  "cheap": Role(RoleSpec(name="cheap", price_in_per_m=0.1), backend)},
                 order=["strong", "cheap"])


def _graph(**params) -> Graph:
    g = Graph()
    g.add("reader", "chunked", params, {"problem": "problem"})
    g.set_output("reader")
    return g


def _problem(context: str) -> Problem:
    return Problem.from_text("What is the secret code?", context=context)


def test_parallel_workers_report_their_chunk_and_the_manager_sees_only_found_reports():
    backend = ScriptedBackend(_reader)
    doc = _document(40, 39)            # the needle is the document's last line
    seen: list[str] = []

    def reader(req, index):
        if req.messages[0].content == MANAGER_SYSTEM:
            seen.append(req.messages[-1].content)
        return _reader(req, index)

    backend.responder = reader
    result = asyncio.run(run(_graph(chunk_tokens=120, overlap_tokens=20, worker_role="cheap",
                                    manager_role="strong"), _problem(doc), _roles(backend)))
    answer = result.answer
    assert answer.answer == "The code is 7391."
    found = answer.details["found"]
    assert found[-1] and not any(found[:-1])
    assert answer.candidates[-1].details["found"] and "7391" in answer.candidates[-1].text
    assert len(seen) == 1 and "not found" not in seen[0] and seen[0].count("#") == 1
    by_model = result.usage.by_model
    assert by_model["cheap"].calls == answer.details["workers"] and by_model["strong"].calls == 1


def test_sequential_workers_pass_their_notes_forward_and_the_manager_reads_the_last():
    prompts: list[str] = []

    def reader(req, index):
        user = req.messages[-1].content
        prompts.append(user)
        if req.messages[0].content == MANAGER_SYSTEM:
            return _reader(req, index)
        notes = re.search(r"Notes from the parts before:\n(.*?)\n\nPart", user, re.S).group(1)
        part = user.split("Part ", 1)[1]
        found = re.search(r"secret code is (\d+)", part)
        if found:
            return f"the secret code is {found.group(1)}"
        # carry the notes and quote this part's last line label (grounded in notes + part)
        label = re.findall(r"[a-z]{4,}", part.split("\n\nQuestion:")[0])[-1]
        return f"{notes}; {label}"

    backend = ScriptedBackend(reader)
    result = asyncio.run(run(_graph(mode="sequential", chunk_tokens=120, overlap_tokens=0),
                             _problem(_document(40, 5)), _roles(backend)))
    workers = result.answer.details["workers"]
    assert workers >= 3 and len(prompts) == workers + 1
    assert "(none: this is the first part)" in prompts[0]
    assert "the secret code is 7391" in prompts[1]             # worker 2 got worker 1's notes
    assert prompts[-1].count("; ") == workers - 1 and "Reports:" not in prompts[-1]
    assert result.answer.answer == "The code is 7391."


def test_sequential_notes_survive_not_found_and_made_up_reports():
    """CoA's weak spot: a later worker that finds nothing, or invents, must not erase the notes."""
    calls = []

    def reader(req, index):
        user = req.messages[-1].content
        calls.append(user)
        if req.messages[0].content == MANAGER_SYSTEM:
            return _reader(req, index)
        part = user.split("Part ", 1)[1]
        found = re.search(r"secret code is (\d+)", part)
        if found:
            return f"the secret code is {found.group(1)}"
        return "NOT FOUND" if len(calls) % 2 else "the secret code is 1234"   # 1234 is nowhere

    backend = ScriptedBackend(reader)
    result = asyncio.run(run(_graph(mode="sequential", chunk_tokens=120, overlap_tokens=0),
                             _problem(_document(40, 2)), _roles(backend)))
    verdicts = [c.details["verdict"] for c in result.answer.candidates]
    assert verdicts[0] == "quoted" and "not in its part: 1234" in verdicts
    assert result.answer.answer == "The code is 7391."


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

    doc = _document(40, 30, code=code)
    problem = Problem.from_text("What is the value of key-0042?", context=doc)
    result = asyncio.run(run(_graph(chunk_tokens=120, overlap_tokens=30), problem,
                             _roles(ScriptedBackend(reader))))
    details = result.answer.details
    assert sum(details["found"]) >= 1 and not all(details["found"])
    assert len(seen) == 1 and seen[0].count("\n#") == sum(details["found"])
    assert "00000000" not in seen[0] and code in seen[0]
    assert code in result.answer.text and details["manager_text"] != result.answer.text
    verdicts = {c.details["verdict"] for c in result.answer.candidates}
    assert "repeats the question" in verdicts and any(v.startswith("not in its part") for v in
                                                       verdicts)


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


# -- refusing what the run cannot afford ----------------------------------------------------------
def _refused(graph: Graph, roles: Roles, backend: ScriptedBackend, **kwargs) -> str:
    with pytest.raises(RunFailed) as info:
        asyncio.run(run(graph, _problem(_document(400, 399)), roles, **kwargs))
    assert backend.calls == 0
    message = str(info.value)
    assert "\n" not in message and "DocumentTooLong" in message
    return message


def test_more_workers_than_max_workers_fails_in_one_line_before_any_call():
    backend = ScriptedBackend(_reader)
    message = _refused(_graph(chunk_tokens=200, overlap_tokens=20, max_workers=4),
                       _roles(backend), backend)
    assert "max_workers=4" in message and "node reader" in message


def test_a_document_beyond_the_token_budget_fails_in_one_line_before_any_call():
    backend = ScriptedBackend(_reader)
    message = _refused(_graph(chunk_tokens=2000, overlap_tokens=100), _roles(backend), backend,
                       budget=BudgetSpec(tokens=3000))
    assert "token budget of 3000" in message


def test_a_document_beyond_the_dollar_budget_fails_in_one_line_before_any_call():
    backend = ScriptedBackend(_reader)
    message = _refused(_graph(chunk_tokens=2000, overlap_tokens=100), _roles(backend), backend,
                       budget=BudgetSpec(dollars=0.001))
    assert "$" in message


def test_a_chunk_larger_than_the_worker_window_is_refused_before_any_call():
    backend = ScriptedBackend(_reader)
    message = _refused(_graph(chunk_tokens=2000, overlap_tokens=100, context_length=1024),
                       _roles(backend), backend)
    assert "1024-token window" in message


def test_overlap_must_be_smaller_than_the_chunk():
    with pytest.raises(ValueError):
        ChunkedConfig(chunk_tokens=64, overlap_tokens=64)


def test_a_problem_without_a_document_is_refused():
    backend = ScriptedBackend(_reader)
    with pytest.raises(RunFailed, match="no context document"):
        asyncio.run(run(_graph(chunk_tokens=100, overlap_tokens=0),
                        Problem.from_text("What is the code?"), _roles(backend)))


def test_docstring_example_runs():
    import reasonloom.strategies.chunked as chunked_module

    assert doctest.testmod(chunked_module).failed == 0


# -- the shipped recipe ----------------------------------------------------------------------------
def test_long_context_recipe_accepts_32k_token_documents_within_its_budget():
    recipe_mod = pytest.importorskip("reasonloom.recipe")
    _smollm_backend()
    recipe = recipe_mod.load_recipe(ROOT / "recipes" / "long_context.yaml")
    (name, node), = recipe.spec.nodes.items()
    assert node.type == "chunked"
    cfg = ChunkedConfig(**node.params)
    roles = recipe.build_roles()             # backends are lazy: no engine starts here
    worker, manager = roles.pick(cfg.worker_role), roles.pick(cfg.manager_role)
    filler = "The archive lists shipment 4412 from Oslo, arriving on a rainy Tuesday. "
    tokenizer = worker.backend.tokenizer
    per_line = len(tokenizer.encode(filler, add_special_tokens=False))

    def check(n_tokens: int) -> int:
        ctx = RunContext(RunState(run_id="t", seed=0, roles=roles,
                                  budget=Budget(recipe.spec.budget)), name)
        question = "Which shipment arrived from Bergen, and on which day?"
        chunk, overlap, base = plan_reading(question, worker, cfg, name)
        doc = asyncio.run(cut_document(worker.backend, filler * (n_tokens // per_line),
                                       chunk, overlap))
        return check_reading(doc, question, base, worker, manager, cfg, ctx)

    assert check(32_000) <= recipe.spec.budget.tokens
    with pytest.raises(DocumentTooLong):
        check(96_000)


def test_the_manager_reads_the_reports_and_sentences_that_mention_what_is_asked():
    from reasonloom.strategies.chunked import ChunkedConfig, select_evidence
    from reasonloom.strategies.chunked_evidence import Evidence, relevant_sentences

    question = "What is the secret code?"
    reports = ["The cat slept on the warm stones.", "The secret code is 4898."]
    evidence = [Evidence(text=r, grounded=True, reason="quoted") for r in reports]
    assert select_evidence(reports, evidence, ChunkedConfig(), question) == [(1, reports[1])]
    # nothing mentions the question: every verified report stays
    assert len(select_evidence(reports[:1], evidence[:1], ChunkedConfig(), question)) == 1
    assert relevant_sentences("Rain was expected. The secret code is 4898.", question) \
        == "The secret code is 4898."
    assert relevant_sentences("Rain was expected.", question) == "Rain was expected."


def _uuid(i: int) -> str:
    return str(uuid.UUID(int=random.Random(i).getrandbits(128)))


KEYS = [_uuid(i) for i in range(3)]
KEY, GOLD = _uuid(10), _uuid(11)
VALUES = {**{k: _uuid(20 + i) for i, k in enumerate(KEYS)}, KEY: GOLD}


def _json_line(keys: list[str]) -> str:
    return "{" + ", ".join(f'"{k}": "{VALUES[k]}"' for k in keys) + "}"


def test_a_quoted_fragment_is_shown_as_the_record_it_was_copied_from():
    """A weak worker copies a value without its key; the manager reads the part's own record
    (the JSON line is cut into records because it is longer than one sentence should be)."""
    from reasonloom.strategies.chunked_evidence import segments

    part = _json_line([KEYS[0], KEY, KEYS[1], KEYS[2]])
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
    doc = f"{filler}\n{_json_line([KEYS[0], KEY, KEYS[1]])}\n{filler}"
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
    result = asyncio.run(run(_graph(chunk_tokens=150, overlap_tokens=40), problem,
                             _roles(ScriptedBackend(reader))))
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
    result = asyncio.run(run(_graph(mode="sequential", chunk_tokens=120, overlap_tokens=overlap),
                             problem, _roles(ScriptedBackend(reader))))
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
    holding = ground_report(echo, [_json_line([KEYS[0], KEY, KEYS[1], KEYS[2]])], question)
    assert holding.grounded and holding.reason == "points at the asked code"
    assert holding.text == holding.source == f'"{KEY}": "{GOLD}",'
    elsewhere = ground_report(echo, [_json_line(KEYS)], question)
    assert not elsewhere.grounded and elsewhere.reason == "quotes nothing of its part"
    # prose words of the question are no pointer: only codes nobody writes by chance
    assert not ground_report("the secret code", ["The secret code is 4898."],
                             "What is the secret code?").grounded


def test_a_question_naming_a_code_is_mentioned_only_by_reports_naming_that_code():
    from reasonloom.strategies.chunked_evidence import mentions_the_question

    question = f'Key: "{KEY}"\nThe value associated with the specified key is:'
    assert not mentions_the_question(f"The value associated with the specified key is {GOLD}",
                                     question)
    assert mentions_the_question(f'"{KEY}": "{GOLD}",', question)
    assert mentions_the_question("The secret code is 4898.", "What is the secret code?")


def test_sequential_notes_take_the_source_record_when_only_it_names_the_asked_key():
    filler = " ".join(f"Filler sentence {i} says little." for i in range(90))
    doc = f'{filler} {_json_line([KEYS[0], KEY, KEYS[1]])} {filler}'
    result, notes_seen = _read_in_sequence(
        doc, lambda part: f"The value is {GOLD}." if GOLD in part else "not found", overlap=40)
    assert f'"{KEY}": "{GOLD}"' in notes_seen[-1] and GOLD in result.answer.text


def test_a_manager_answer_that_repeats_the_question_gives_way_to_what_the_evidence_adds():
    from reasonloom.strategies.chunked_evidence import check_answer

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
