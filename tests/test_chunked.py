"""Chunked long-context node: token splitting (property tests), the two modes' data flow on a
scripted backend, and refusing documents too long for the run before any call."""
from __future__ import annotations

import asyncio
import doctest
import functools
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from reasonloom.backends.errors import CapabilityMissing, ServerError
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.budget import Budget, BudgetSpec
from reasonloom.orchestrator.context import RunContext, RunState
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.result import RunFailed
from reasonloom.orchestrator.roles import Roles
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Problem
from reasonloom.strategies.chunked import (FALLBACK_MARGIN, ChunkedConfig, DocumentTooLong,
                                           check_reading, cut_document, plan_reading,
                                           split_tokens)
from reasonloom.strategies.chunked_prompts import MANAGER_SYSTEM

from chunked_support import chunked_graph, reader_roles, reading_context
from chunked_support import lines_document as _document

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
    ctx, role = reading_context(backend)
    doc = asyncio.run(cut_document(ctx, role, text, chunk, overlap))
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
    ctx, role = reading_context(ScriptedBackend())
    doc = asyncio.run(cut_document(ctx, role, text, chunk, overlap))
    assert not doc.exact and not ctx.state.ledger.records   # no tokenizer call was tried
    assert doc.chunk == max(1, int(chunk * FALLBACK_MARGIN)) and doc.overlap < doc.chunk
    rebuilt = doc.texts[0] + "".join(t[doc.overlap * 3:] for t in doc.texts[1:])
    assert rebuilt == text
    assert all(len(t) <= doc.chunk * 3 for t in doc.texts)


class _CharTokenizer(ScriptedBackend):
    """A backend whose tokens are characters, whose first tokenizer call of each kind fails
    with a retryable server error, and which counts its tokenizer calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.failed: set[str] = set()

    @property
    def capabilities(self):
        return super().capabilities.model_copy(update={"tokenize": True})

    def _flaky(self, kind: str) -> None:
        if kind not in self.failed:
            self.failed.add(kind)
            raise ServerError(f"{kind} hiccup")

    async def tokenize(self, text):
        self._flaky("tokenize")
        return [ord(c) for c in text]

    async def detokenize(self, ids):
        self._flaky("detokenize")
        return "".join(chr(i) for i in ids)


def test_the_document_is_cut_by_the_roles_tokens_through_recorded_retried_calls():
    text = _document(40, 39)
    ctx, role = reading_context(_CharTokenizer())
    doc = asyncio.run(cut_document(ctx, role, text, 300, 30))
    assert doc.exact and doc.n_tokens == len(text) and doc.spans == split_tokens(len(text),
                                                                                   300, 30)
    assert doc.texts == [text[s:e] for s, e in doc.spans]
    # tokenize, then one detokenize call for every chunk: each failed once and was retried
    records = [(r.kind, r.call_key, r.ok, r.prompt_tokens + r.completion_tokens)
               for r in ctx.state.ledger.records]
    assert records == [("tokenize", "tokenize", False, 0), ("tokenize", "tokenize", True, 0),
                       ("tokenize", "detokenize", False, 0), ("tokenize", "detokenize", True, 0)]
    result = asyncio.run(run(chunked_graph(chunk_tokens=300, overlap_tokens=30,
                                           worker_role="cheap", manager_role="strong"),
                             _problem(text), reader_roles(_CharTokenizer(_reader))))
    details, usage = result.answer.details, result.usage.by_model["cheap"]
    assert details["exact_tokens"] and details["spans"] == [list(s) for s in doc.spans]
    # the tokenizer's attempts are in the ledger (above), not in the model-call counts
    assert usage.calls == details["workers"] and usage.failed_calls == 0


def test_a_backend_that_tokenizes_but_cannot_detokenize_falls_back_to_characters():
    class NoDecode(_CharTokenizer):
        async def detokenize(self, ids):
            raise CapabilityMissing("no /detokenize")

    backend = NoDecode(_reader)
    ctx, role = reading_context(backend)
    doc = asyncio.run(cut_document(ctx, role, "word " * 300, 100, 10))
    assert not doc.exact and doc.chunk == int(100 * FALLBACK_MARGIN)
    # tokenize failed once (retried); detokenize's CapabilityMissing is recorded, not retried
    assert [(r.call_key, r.ok) for r in ctx.state.ledger.records] == [
        ("tokenize", False), ("tokenize", True), ("detokenize", False)]


# -- the two modes on a scripted backend ---------------------------------------------------------
def _reader(req, index) -> str:
    """Workers report the code only if their part shows it; the manager repeats a report."""
    system, user = req.messages[0].content, req.messages[-1].content
    if system == MANAGER_SYSTEM:
        match = re.search(r"code is (\d+)", user)
        return f"The code is {match.group(1)}." if match else "unknown"
    part = user.split("Part ", 1)[1]
    match = re.search(r"secret code is (\d+)", part)
    return f"the secret code is {match.group(1)}" if match else "not found"


def _problem(context: str) -> Problem:
    return Problem.from_text("What is the secret code?", context=context)


def test_by_default_the_parallel_manager_reads_every_report_as_the_paper_does():
    seen: list[str] = []

    def reader(req, index):
        if req.messages[0].content == MANAGER_SYSTEM:
            seen.append(req.messages[-1].content)
        return _reader(req, index)

    result = asyncio.run(run(chunked_graph(chunk_tokens=120, overlap_tokens=20),
                             _problem(_document(40, 39)), reader_roles(ScriptedBackend(reader))))
    details = result.answer.details
    assert details["evidence"] == "none" and details["shown"] == list(range(details["workers"]))
    assert seen[0].count("not found") == details["workers"] - 1
    assert result.answer.text == "The code is 7391." and details["answered_by"] == "manager"


def test_drop_not_found_shows_the_manager_only_the_reports_that_found_something():
    backend = ScriptedBackend(_reader)
    doc = _document(40, 39)            # the needle is the document's last line
    seen: list[str] = []

    def reader(req, index):
        if req.messages[0].content == MANAGER_SYSTEM:
            seen.append(req.messages[-1].content)
        return _reader(req, index)

    backend.responder = reader
    result = asyncio.run(run(chunked_graph(chunk_tokens=120, overlap_tokens=20, worker_role="cheap",
                                           manager_role="strong", drop_not_found=True),
                             _problem(doc), reader_roles(backend)))
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
    result = asyncio.run(run(chunked_graph(mode="sequential", chunk_tokens=120, overlap_tokens=0),
                             _problem(_document(40, 5)), reader_roles(backend)))
    workers = result.answer.details["workers"]
    assert workers >= 3 and len(prompts) == workers + 1
    assert "(none: this is the first part)" in prompts[0]
    assert "the secret code is 7391" in prompts[1]             # worker 2 got worker 1's notes
    assert prompts[-1].count("; ") == workers - 1 and "Reports:" not in prompts[-1]
    assert result.answer.answer == "The code is 7391."


def test_with_quote_evidence_sequential_notes_survive_not_found_and_made_up_reports():
    """CoA's weak spot: a later worker that finds nothing, or invents, must not erase the notes
    (evidence: quote, opt-in)."""
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
    result = asyncio.run(run(chunked_graph(mode="sequential", chunk_tokens=120, overlap_tokens=0,
                                           evidence="quote"),
                             _problem(_document(40, 2)), reader_roles(backend)))
    verdicts = [c.details["verdict"] for c in result.answer.candidates]
    assert verdicts[0] == "quoted" and "not in its part: 1234" in verdicts
    assert result.answer.answer == "The code is 7391."


def _refused(graph: Graph, roles: Roles, backend: ScriptedBackend, **kwargs) -> str:
    with pytest.raises(RunFailed) as info:
        asyncio.run(run(graph, _problem(_document(400, 399)), roles, **kwargs))
    assert backend.calls == 0
    message = str(info.value)
    assert "\n" not in message and "DocumentTooLong" in message
    return message


def test_more_workers_than_max_workers_fails_in_one_line_before_any_call():
    backend = ScriptedBackend(_reader)
    message = _refused(chunked_graph(chunk_tokens=200, overlap_tokens=20, max_workers=4),
                       reader_roles(backend), backend)
    assert "max_workers=4" in message and "node reader" in message


def test_a_document_beyond_the_token_budget_fails_in_one_line_before_any_call():
    backend = ScriptedBackend(_reader)
    message = _refused(chunked_graph(chunk_tokens=2000, overlap_tokens=100), reader_roles(backend), backend,
                       budget=BudgetSpec(tokens=3000))
    assert "token budget of 3000" in message


def test_a_document_beyond_the_dollar_budget_fails_in_one_line_before_any_call():
    backend = ScriptedBackend(_reader)
    message = _refused(chunked_graph(chunk_tokens=2000, overlap_tokens=100), reader_roles(backend), backend,
                       budget=BudgetSpec(dollars=0.001))
    assert "$" in message


def test_a_chunk_larger_than_the_worker_window_is_refused_before_any_call():
    backend = ScriptedBackend(_reader)
    message = _refused(chunked_graph(chunk_tokens=2000, overlap_tokens=100, context_length=1024),
                       reader_roles(backend), backend)
    assert "1024-token window" in message


def test_overlap_must_be_smaller_than_the_chunk():
    with pytest.raises(ValueError):
        ChunkedConfig(chunk_tokens=64, overlap_tokens=64)


def test_a_problem_without_a_document_is_refused():
    backend = ScriptedBackend(_reader)
    with pytest.raises(RunFailed, match="no context document"):
        asyncio.run(run(chunked_graph(chunk_tokens=100, overlap_tokens=0),
                        Problem.from_text("What is the code?"), reader_roles(backend)))


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
        doc = asyncio.run(cut_document(ctx, worker, filler * (n_tokens // per_line),
                                       chunk, overlap))
        return check_reading(doc, question, base, worker, manager, cfg, ctx)

    assert check(32_000) <= recipe.spec.budget.tokens
    with pytest.raises(DocumentTooLong):
        check(96_000)


def _guessing_reader(req, index) -> str:
    """Every worker answers: the code where its part shows it, a guess elsewhere."""
    match = re.search(r"secret code is (\d+)", req.messages[-1].content)
    return f"The code is {match.group(1)}." if match else f"The code is {1000 + len(req.messages[-1].content) % 97}."


def _sure_where_shown(req, index, position) -> float:
    """Confident copying where the part shows the code, unsure guessing elsewhere."""
    return 4.0 if "secret code is" in req.messages[-1].content else 1.5 + 0.1 * (position % 3)


def test_reduce_confidence_answers_with_the_most_confident_worker_and_calls_no_manager():
    backend = ScriptedBackend(_guessing_reader, confidence=_sure_where_shown)
    text = _document(40, 33)
    result = asyncio.run(run(chunked_graph(chunk_tokens=120, overlap_tokens=20,
                                           reduce="confidence", worker_role="cheap",
                                           manager_role="strong"),
                             _problem(text), reader_roles(backend)))
    answer, by_model = result.answer, result.usage.by_model
    assert answer.text == "The code is 7391." and answer.details["workers"] >= 5
    guesses = {c.text for c in answer.candidates} - {answer.text}
    assert guesses   # the other workers guessed; the confident copy won
    best = answer.details["shown"][0]
    assert answer.details["confidences"][best] == max(answer.details["confidences"])
    assert all(c.text.startswith("The code is") for c in answer.candidates)   # nobody abstains
    assert "strong" not in by_model and by_model["cheap"].calls == answer.details["workers"]


def test_reduce_confidence_without_log_probs_fails_in_one_line_before_any_call():
    backend = ScriptedBackend(_guessing_reader, logprobs=False)
    with pytest.raises(RunFailed) as info:
        asyncio.run(run(chunked_graph(chunk_tokens=120, overlap_tokens=20, reduce="confidence"),
                        _problem(_document(40, 33)), reader_roles(backend)))
    assert "needs token log-probs" in str(info.value) and "\n" not in str(info.value)
    assert backend.calls == 0


def test_reduce_confidence_refuses_chain_of_agents():
    with pytest.raises(ValueError, match="reduce: confidence needs mode: parallel"):
        ChunkedConfig(mode="sequential", reduce="confidence")


def test_reduce_confidence_reserves_no_manager_call_and_runs_within_what_it_reserves():
    backend = ScriptedBackend(_guessing_reader, confidence=_sure_where_shown)
    ctx, worker = reading_context(backend)
    text, question = _document(40, 33), _problem("").question

    def worst(**params) -> tuple[int, int, ChunkedConfig]:
        cfg = ChunkedConfig(chunk_tokens=120, overlap_tokens=20, **params)
        chunk, overlap, base = plan_reading(question, worker, cfg, "reader")
        doc = asyncio.run(cut_document(ctx, worker, text, chunk, overlap))
        return check_reading(doc, question, base, worker, worker, cfg, ctx), len(doc.spans), cfg

    with_manager, workers, cfg = worst()
    alone, _, _ = worst(reduce="confidence")
    assert with_manager - alone >= cfg.manager_max_tokens + workers * cfg.worker_max_tokens
    result = asyncio.run(run(chunked_graph(chunk_tokens=120, overlap_tokens=20,
                                           reduce="confidence", worker_role="cheap"),
                             _problem(text), reader_roles(backend),
                             budget=BudgetSpec(tokens=alone)))
    assert result.answer.text == "The code is 7391."
