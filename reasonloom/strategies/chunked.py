"""Chunked long-context reading, one node with two modes:

* `parallel`: divide and conquer (Xu et al., "When Does Divide and Conquer Work for Long Context
  LLM? A Noise Decomposition Framework", arXiv 2506.16411): every worker reads one chunk of the
  document and extracts evidence or says "not found"; a manager combines the reports.
* `sequential`: Chain-of-Agents (Zhang et al., arXiv 2406.02818): worker i reads chunk i plus
  the notes of worker i-1 and writes new notes; the manager answers from the last notes.

The document is cut by TOKENS of the worker role's own tokenizer (through the run context:
recorded, retried) with a true overlap, and every token lands in a chunk (the reference code
cuts by characters and never reads the last ~(n-1)*2048 characters). By default the node is
the papers' algorithm and nothing more: every report reaches the manager, notes pass on as
written, the manager's answer is final. `evidence: quote` (a report must quote its part) and
`evidence: kv_lookup` (repairs for key-value retrieval only) are opt-in: chunked_evidence.py
and chunked_kv_lookup.py. `reduce: confidence` (opt-in, parallel) replaces the manager by the
most confident worker answer (DeepConf's lowest group confidence), for models that cannot
abstain on a part without the answer.

Example (a scripted backend cannot tokenize, so 3-character units stand in for tokens):
    >>> import asyncio
    >>> from reasonloom import Graph, Problem, Role, Roles, RoleSpec, run
    >>> from reasonloom.backends.scripted import ScriptedBackend
    >>> roles = Roles({"reader": Role(RoleSpec(name="reader"), ScriptedBackend())})
    >>> g = Graph().add("reader", "chunked", {"mode": "sequential", "chunk_tokens": 100,
    ...                                       "overlap_tokens": 10}).set_output("reader")
    >>> problem = Problem.from_text("How many words?", context="word " * 500)
    >>> details = asyncio.run(run(g, problem, roles)).answer.details
    >>> details["workers"], details["spans"][-1], details["document_tokens"]
    (12, [770, 834], 834)
"""
from __future__ import annotations

import asyncio
import math
import re
from typing import Literal, Sequence

from pydantic import BaseModel, Field, model_validator

from reasonloom.backends.base import Backend, GenerateRequest
from reasonloom.backends.errors import CapabilityMissing
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.roles import Role
from reasonloom.orchestrator.types import (Answer, Candidate, Candidates, FrozenModel, Message,
                                           Problem)
from reasonloom.strategies.chunked_evidence import Evidence, as_reported, quotes_its_part
from reasonloom.strategies.chunked_kv_lookup import (check_answer, kv_judge, kv_select,
                                                     kv_updates_notes, relevant_sentences)
from reasonloom.strategies.chunked_prompts import answer_messages, manager_messages, worker_messages
from reasonloom.strategies.trace_confidence import lowest_group_confidence

# Chat-template tokens per message (role markers, separators); the runtime's budget estimate
# uses the same figure.
MESSAGE_OVERHEAD = 8
# Re-encoding a decoded chunk inside a prompt can merge or split a token at its two edges.
SAFETY_TOKENS = 16
# Fallback for backends that cannot tokenize/detokenize (remote APIs): one "token" = 3
# characters (the seam's own estimate), and chunks use only this share of their token budget,
# because digits and identifiers can take more than one real token per 3 characters.
FALLBACK_CHARS_PER_TOKEN = 3
FALLBACK_MARGIN = 0.8


class ChunkedConfig(FrozenModel):
    """Split -> workers (parallel or sequential) -> manager. Defaults are the papers' where
    they have one: greedy decoding, a short manager answer (128 tokens), one model for all."""

    mode: Literal["parallel", "sequential"] = "parallel"   # D&C (2506.16411) | CoA (2406.02818)
    worker_role: str = "strongest"
    manager_role: str = "strongest"
    # Tokens of document per worker; None = the worker's context length - prompt - output.
    # Smaller chunks give a weak worker less to be distracted by (2506.16411's "model noise"
    # grows with the chunk), at the price of more workers and calls.
    chunk_tokens: int | None = Field(None, ge=1)
    # Tokens shared by consecutive chunks, so a fact cut at a boundary is whole in one chunk:
    # keep it at least as long as the longest fact (sentence, record) the question may need.
    # None = the papers': parallel 128 (the reference uses 2048 characters, ~500 tokens, with
    # 4k-token workers; 128 keeps more of a 2k window for new text), sequential 0
    # (Chain-of-Agents chunks do not overlap: the notes carry the context).
    overlap_tokens: int | None = Field(None, ge=0)
    max_workers: int = Field(64, ge=1)          # refuse longer documents before any call
    context_length: int | None = Field(None, ge=64)  # override the worker backend's window
    # Enough for a quoted sentence or a 36-character identifier (~33 SmolLM2 tokens) plus a
    # lead-in; the reference allows 2048 for reasoning reports.
    worker_max_tokens: int = Field(128, ge=1)
    manager_max_tokens: int = Field(128, ge=1)  # the reference's manager limit for QA/KV
    temperature: float = Field(0.0, ge=0)       # greedy, as the reference: extraction, not ideas
    worker_stop: tuple[str, ...] = ()           # e.g. ("\n",) when a report is one line
    # After the question; None = the default (chunked_prompts), "" = none.
    worker_instruction: str | None = None
    manager_instruction: str | None = None
    # With evidence: none, hide reports that say NOT FOUND from the parallel manager, and keep
    # a Chain-of-Agents worker's NOT FOUND from erasing the notes: a weak manager is distracted
    # by them (the paper's "aggregator noise"). Off = the papers (the reference shows them all).
    drop_not_found: bool = False
    # What counts as a report (chunked_evidence.py). "none" = the papers: every report. "quote"
    # (generic, opt-in): a report must quote its part, or it is dropped; not for tasks whose
    # reports compute rather than quote (counts, sums, summaries). "kv_lookup" (key-value
    # retrieval ONLY, opt-in): "quote" plus repairs of garbled identifiers, asked keys turned
    # into their records, and a manager answer that repeats the question replaced by a record's
    # text (chunked_kv_lookup.py); `details.answered_by` says when the answer is not the
    # manager's own.
    evidence: Literal["none", "quote", "kv_lookup"] = "none"
    stream_answer: bool = False                 # stream the manager's answer to the caller
    # How the parallel reports become the answer. "manager" (the papers): a manager reads
    # them. "confidence" (opt-in, any document; needs token log-probs): every worker answers
    # the question from its part, asked after the part and with no way to say NOT FOUND (a
    # small model offered NOT FOUND says it even when its part holds the answer), and the
    # answer is the report whose lowest windowed token confidence is highest (DeepConf's group
    # confidence, arXiv 2508.15260): a worker whose part holds the answer copies it with more
    # certainty than one that guesses. No manager call.
    reduce: Literal["manager", "confidence"] = "manager"
    confidence_window: int = Field(8, ge=1)     # tokens per group (answers are short)

    @property
    def overlap(self) -> int:
        if self.overlap_tokens is not None:
            return self.overlap_tokens
        return 128 if self.mode == "parallel" else 0

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> "ChunkedConfig":
        if self.chunk_tokens is not None and self.overlap >= self.chunk_tokens:
            raise ValueError(f"overlap_tokens ({self.overlap}) must be smaller than "
                             f"chunk_tokens ({self.chunk_tokens})")
        if self.reduce == "confidence" and (self.mode != "parallel" or self.evidence != "none"):
            raise ValueError("reduce: confidence needs mode: parallel and evidence: none "
                             "(it picks one worker's answer; there is no manager to read notes "
                             "or checked reports)")
        return self


class DocumentTooLong(ValueError):
    """The document cannot be read within the node's limits or the run's budget."""


# -- splitting (pure) ------------------------------------------------------------------------
def split_tokens(n_tokens: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open token spans [start, end): ceil((n - overlap) / (chunk - overlap)) chunks of at
    most `chunk` tokens, consecutive ones sharing exactly `overlap`, the last one ending at n."""
    if chunk < 1 or not 0 <= overlap < chunk:
        raise ValueError(f"need chunk >= 1 and 0 <= overlap < chunk (chunk={chunk}, "
                         f"overlap={overlap})")
    if n_tokens <= 0:
        return []
    stride = chunk - overlap
    workers = max(1, math.ceil((n_tokens - overlap) / stride))
    return [(i * stride, min(i * stride + chunk, n_tokens)) for i in range(workers)]


def chunk_budget(context_length: int, prompt_tokens: int, reserved_output: int) -> int:
    """Document tokens one worker can read: its window less its prompt and its answer."""
    return context_length - prompt_tokens - reserved_output - SAFETY_TOKENS


class CutDocument(BaseModel):
    """The document as chunks: token spans, their texts, and whether tokens were exact."""

    n_tokens: int
    chunk: int           # in the units of `spans`
    overlap: int
    spans: list[tuple[int, int]]
    texts: list[str]
    exact: bool          # False = the character fallback (the backend cannot tokenize)

    def layout(self) -> dict:
        """How the document was cut, as every answer's details report it."""
        return {"document_tokens": self.n_tokens, "exact_tokens": self.exact,
                "chunk_tokens": self.chunk, "overlap_tokens": self.overlap,
                "workers": len(self.spans), "spans": [list(s) for s in self.spans]}


def _fallback_units(text: str) -> list[str]:
    step = FALLBACK_CHARS_PER_TOKEN
    return [text[i:i + step] for i in range(0, len(text), step)]


async def cut_document(ctx: RunContext, role: Role, text: str, chunk: int, overlap: int
                       ) -> CutDocument:
    """Cut by the role's own tokens, through ctx (two recorded calls: tokenize, detokenize);
    a backend that cannot tokenize and detokenize (it says so in capabilities, or raises
    CapabilityMissing) gets 3-character units and chunks shrunk by FALLBACK_MARGIN (an
    estimate, said in `exact`)."""
    if role.backend.capabilities.tokenize:
        try:
            ids = await ctx.tokenize(role, text, "tokenize")
            spans = split_tokens(len(ids), chunk, overlap)
            texts = await ctx.detokenize(role, [ids[s:e] for s, e in spans], "detokenize")
            return CutDocument(n_tokens=len(ids), chunk=chunk, overlap=overlap, spans=spans,
                               texts=texts, exact=True)
        except CapabilityMissing:
            pass
    units = _fallback_units(text)
    small = max(1, int(chunk * FALLBACK_MARGIN))
    overlap = min(overlap, small - 1)
    spans = split_tokens(len(units), small, overlap)
    return CutDocument(n_tokens=len(units), chunk=small, overlap=overlap, spans=spans,
                       exact=False, texts=["".join(units[s:e]) for s, e in spans])


def prompt_tokens(backend: Backend, messages: Sequence[Message]) -> int:
    return sum(backend.estimate_tokens(m.content) + MESSAGE_OVERHEAD for m in messages)


# -- the plan and its checks (before any call) ----------------------------------------------
def plan_reading(question: str, worker: Role, cfg: ChunkedConfig, where: str
                 ) -> tuple[int, int, int]:
    """(chunk tokens, overlap, worker prompt tokens without the chunk) for this worker role."""
    empty = (answer_messages(question, "", cfg.worker_instruction) if cfg.reduce == "confidence"
             else worker_messages(question, "", 0, 1, cfg.mode, cfg.worker_instruction))
    # Chain-of-Agents prompts also carry the previous notes: at most one worker output.
    base = prompt_tokens(worker.backend, empty) + (cfg.worker_max_tokens
                                                   if cfg.mode == "sequential" else 0)
    window = cfg.context_length or worker.backend.capabilities.context_length
    if cfg.chunk_tokens is not None:
        chunk = cfg.chunk_tokens
        if window is not None and chunk_budget(window, base, cfg.worker_max_tokens) < chunk:
            raise DocumentTooLong(
                f"{where}: chunk_tokens={chunk} + a {base}-token prompt + {cfg.worker_max_tokens}"
                f" output tokens do not fit role {worker.name}'s {window}-token window")
    else:
        if window is None:
            raise DocumentTooLong(f"{where}: role {worker.name} does not report its context "
                                  "length: set chunk_tokens or context_length")
        chunk = chunk_budget(window, base, cfg.worker_max_tokens)
    if chunk <= cfg.overlap:
        raise DocumentTooLong(f"{where}: only {chunk} document tokens fit a worker prompt, not "
                              f"more than overlap_tokens={cfg.overlap}")
    return chunk, cfg.overlap, base


# Tokens of one evidence line besides the report itself ("#12: ", the line break).
EVIDENCE_LINE_TOKENS = 8


def manager_room(question: str, manager: Role, cfg: ChunkedConfig) -> tuple[int, int | None]:
    """(manager prompt tokens without evidence, tokens left for evidence or None = no limit)."""
    base = prompt_tokens(manager.backend, manager_messages(question, [], cfg.mode,
                                                           cfg.manager_instruction))
    window = manager.backend.capabilities.context_length
    if window is None:
        return base, None
    return base, window - base - cfg.manager_max_tokens - SAFETY_TOKENS


def check_reading(doc: CutDocument, question: str, base: int, worker: Role, manager: Role,
                  cfg: ChunkedConfig, ctx: RunContext) -> int:
    """Refuse, in one line and before any call, a document the node or the run cannot afford.
    Returns the worst-case tokens the reading may reserve."""
    where = f"node {ctx.node}"
    workers = len(doc.spans)
    size = f"the document has {doc.n_tokens} tokens{'' if doc.exact else ' (estimated)'}"
    if workers > cfg.max_workers:
        raise DocumentTooLong(f"{where}: {size}: {workers} workers of {doc.chunk}-token chunks "
                              f"(overlap {doc.overlap}) exceed max_workers={cfg.max_workers}")
    per_report = cfg.worker_max_tokens + EVIDENCE_LINE_TOKENS
    manager_base, room = manager_room(question, manager, cfg)
    shown = workers if cfg.mode == "parallel" else 1
    manager_out = cfg.manager_max_tokens
    if cfg.reduce == "confidence":     # no manager call: nothing of its window to check
        manager_base, room, shown, manager_out = 0, None, 0, 0
    if room is not None:
        if room < per_report:
            raise DocumentTooLong(f"{where}: role {manager.name}'s window cannot hold one "
                                  f"report of up to {cfg.worker_max_tokens} tokens")
        # More reports than the manager's window holds: it reads the first that fit (in
        # document order) and the answer's details say how many were left out.
        shown = min(shown, room // per_report)
    manager_prompt = manager_base + shown * per_report
    worker_in = sum(base + e - s for s, e in doc.spans)
    worker_out = workers * cfg.worker_max_tokens
    total = worker_in + worker_out + manager_prompt + manager_out
    budget = ctx.state.budget
    spec = budget.spec
    if spec.tokens is not None and budget.spent_tokens + total > spec.tokens:
        raise DocumentTooLong(
            f"{where}: {size}: reading it may take {total} tokens ({workers} workers + manager), "
            f"more than the {spec.tokens - budget.spent_tokens} left of the run's token budget "
            f"of {spec.tokens}")
    dollars = (worker.spec.cost(worker_in, worker_out)
               + manager.spec.cost(manager_prompt, manager_out))
    if spec.dollars is not None and budget.spent_dollars + dollars > spec.dollars:
        raise DocumentTooLong(
            f"{where}: {size}: reading it may cost ${dollars:.4f}, more than the "
            f"${spec.dollars - budget.spent_dollars:.4f} left of the run's budget")
    return total


# -- the algorithm ----------------------------------------------------------------------------
def short_answer(text: str) -> str | None:
    """The manager's first non-empty line, without an "Answer:" label."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\W*(final\s+)?answer\s*(is)?\s*[:\-]?\s*", "", line.strip(),
                      flags=re.IGNORECASE).strip()
        if line:
            return line
    return None


def judge(report: str, sources: Sequence[str], question: str, cfg: ChunkedConfig) -> Evidence:
    """The report as the manager may read it, and whether it counts (cfg.evidence)."""
    if cfg.evidence == "kv_lookup":
        return kv_judge(report, sources, question, cfg.mode)
    if cfg.evidence == "quote":
        return quotes_its_part(report, sources, question)
    return as_reported(report)


def select_evidence(reports: Sequence[str], evidence: Sequence[Evidence], cfg: ChunkedConfig,
                    question: str = "") -> list[tuple[int, str]]:
    """What the parallel manager reads: every report (the papers); with drop_not_found or
    evidence: quote, the reports that count; kv_lookup narrows them further."""
    if cfg.evidence == "kv_lookup":
        return kv_select(reports, evidence, question)
    if cfg.evidence == "quote" or cfg.drop_not_found:
        return [(i, e.text) for i, e in enumerate(evidence) if e.grounded]
    return list(enumerate(reports))


def updates_notes(new: Evidence, notes: str | None, question: str, cfg: ChunkedConfig) -> bool:
    """Chain-of-Agents: each worker's notes replace the last (the paper); a report that does
    not count (NOT FOUND with drop_not_found, an unverified quote) leaves them as they were."""
    if cfg.evidence == "kv_lookup":
        return kv_updates_notes(new, notes, question)
    return new.grounded or (cfg.evidence == "none" and not cfg.drop_not_found)


def fit_evidence(shown: list[tuple[int, str]], room: int | None, manager: Role
                 ) -> list[tuple[int, str]]:
    """The first reports that fit the manager's window (document order)."""
    if room is None:
        return shown
    fitted, used = [], 0
    for i, text in shown:
        used += manager.backend.estimate_tokens(text) + EVIDENCE_LINE_TOKENS
        if used > room:
            break
        fitted.append((i, text))
    return fitted


async def read_document(problem: Problem, cfg: ChunkedConfig, ctx: RunContext) -> Answer:
    if not (problem.context or "").strip():
        raise ValueError(f"node {ctx.node}: the problem has no context document to read "
                         "(Problem.context / a dataset row's `context` field)")
    question = problem.question
    worker, manager = ctx.roles.pick(cfg.worker_role), ctx.roles.pick(cfg.manager_role)
    if cfg.reduce == "confidence" and not worker.backend.capabilities.logprobs:
        raise CapabilityMissing(f"node {ctx.node}: reduce: confidence needs token log-probs, "
                                f"which role {worker.name}'s backend does not give")
    chunk, overlap, base = plan_reading(question, worker, cfg, f"node {ctx.node}")
    doc = await cut_document(ctx, worker, problem.context, chunk, overlap)
    worst = check_reading(doc, question, base, worker, manager, cfg, ctx)
    total = len(doc.spans)
    ctx.emit("chunked_plan", mode=cfg.mode, document_tokens=doc.n_tokens, workers=total,
             chunk_tokens=doc.chunk, overlap_tokens=doc.overlap, exact_tokens=doc.exact,
             worst_case_tokens=worst)
    if cfg.reduce == "confidence":
        return await most_confident_report(question, doc, worker, cfg, ctx)

    def request(messages: tuple[Message, ...], max_tokens: int, stop: tuple[str, ...] = ()
                ) -> GenerateRequest:
        return GenerateRequest(messages=messages, temperature=cfg.temperature,
                               max_tokens=max_tokens, stop=stop)

    async def read(i: int, notes: str | None = None) -> str:
        messages = worker_messages(question, doc.texts[i], i, total, cfg.mode,
                                   cfg.worker_instruction, notes)
        req = request(messages, cfg.worker_max_tokens, cfg.worker_stop)
        return (await ctx.generate(worker, req, f"worker{i}")).texts[0].strip()

    if cfg.mode == "parallel":   # map: every chunk at once (the role's throttle bounds it)
        reports = list(await asyncio.gather(*(read(i) for i in range(total))))
        evidence = [judge(r, [doc.texts[i]], question, cfg) for i, r in enumerate(reports)]
        shown = select_evidence(reports, evidence, cfg, question)
    else:                        # Chain-of-Agents: one pass, notes CU_i handed forward
        reports, evidence, notes, last = [], [], None, -1
        for i in range(total):
            reports.append(await read(i, notes))
            evidence.append(judge(reports[-1], [doc.texts[i], notes or ""], question, cfg))
            if updates_notes(evidence[-1], notes, question, cfg):
                notes, last = evidence[-1].text, i
        shown = [(last, notes)] if notes else []
    if cfg.evidence == "kv_lookup":
        shown = [(i, relevant_sentences(text, question)) for i, text in shown]
    manager_base, room = manager_room(question, manager, cfg)
    fitted = fit_evidence(shown, room, manager)
    req = request(manager_messages(question, fitted, cfg.mode, cfg.manager_instruction),
                  cfg.manager_max_tokens)
    if cfg.stream_answer:
        raw = ""
        async for delta in ctx.stream(manager, req, "manager", answer=True):
            raw += delta.text
    else:
        raw = (await ctx.generate(manager, req, "manager")).texts[0]
    text, repairs, answered_by = raw.strip(), [], "manager"
    if cfg.evidence == "kv_lookup" and fitted:
        text, repairs, answered_by = check_answer(text, [t for _, t in fitted], question)
    candidates = [Candidate(text=r, role=worker.name,
                            details={"chunk": i, "span": list(doc.spans[i]), "found": e.grounded,
                                     "evidence": e.text, "verdict": e.reason,
                                     "repaired": e.repaired})
                  for i, (r, e) in enumerate(zip(reports, evidence))]
    answer = Answer(text=text, answer=short_answer(text), candidates=candidates,
                    details={"mode": cfg.mode, "evidence": cfg.evidence, **doc.layout(),
                             "found": [e.grounded for e in evidence],
                             "shown": [i for i, _ in fitted],
                             "left_out": len(shown) - len(fitted),
                             "manager_text": raw.strip(), "answer_repairs": repairs,
                             "answered_by": answered_by})
    ctx.publish_best(answer)
    return answer


async def most_confident_report(question: str, doc: CutDocument, worker: Role,
                                cfg: ChunkedConfig, ctx: RunContext) -> Answer:
    """reduce: confidence. Every worker answers from its part; the answer is the report with
    the highest lowest-group confidence."""
    async def answer(i: int):
        req = GenerateRequest(messages=answer_messages(question, doc.texts[i],
                                                       cfg.worker_instruction),
                              temperature=cfg.temperature, max_tokens=cfg.worker_max_tokens,
                              stop=cfg.worker_stop, confidence_k=5)
        return (await ctx.generate(worker, req, f"worker{i}")).samples[0]

    samples = list(await asyncio.gather(*(answer(i) for i in range(len(doc.spans)))))
    scores = [lowest_group_confidence(s.confidences or [0.0], cfg.confidence_window)
              for s in samples]
    best = max(range(len(samples)), key=lambda i: scores[i])
    text = samples[best].text.strip()
    candidates = [Candidate(text=s.text.strip(), role=worker.name,
                            details={"chunk": i, "span": list(doc.spans[i]),
                                     "confidence": round(scores[i], 4), "found": i == best})
                  for i, s in enumerate(samples)]
    answer_ = Answer(text=text, answer=short_answer(text), candidates=candidates,
                     details={"mode": cfg.mode, "reduce": "confidence", "evidence": "none",
                              **doc.layout(), "confidences": [round(x, 4) for x in scores],
                              "shown": [best],
                              "manager_text": text, "answer_repairs": [],
                              "answered_by": f"worker {best} (most confident)"})
    ctx.publish_best(answer_)
    return answer_


@register_node("chunked", ChunkedConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def chunked(inputs: dict, cfg: ChunkedConfig, ctx: RunContext) -> dict:
    answer = await read_document(inputs["problem"], cfg, ctx)
    return {"answer": answer, "candidates": Candidates(answer.candidates)}
