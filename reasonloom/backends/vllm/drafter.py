"""Speculative drafting from sample history: DAS ("Beat the long tail: Distribution-Aware
Speculative Decoding", arXiv 2511.13841) carried over from RL rollouts to test-time sampling.

Samples of one problem (best-of-n, self-consistency, the waves of a tournament) write much the
same text, so a sample can be drafted from what its siblings, running or finished, and its own
prompt already say; the engine verifies every draft, so a bad draft costs time, never output.

- Problems: a batch row belongs to the problem whose prompt token span hashes to the same key.
- Sources, per problem: the prompt, the outputs of its `window` most recent finished samples
  (a sliding window: old samples are evicted, like DAS's window of recent iterations) and the
  outputs of its running samples, each output prefixed with the prompt's tail so that openings
  match too. Tokens enter the index as soon as they are verified (DAS's online insert).
- Index: hashed n-grams (`min_match` tokens -> every position that follows them); a match is
  extended backwards up to `max_match` tokens and the longest matches win.
- Draft: walk forward from the longest matches, one token at a time, by majority vote of the
  next tokens; stop when the winner holds less than `min_share` of the votes.
- Budget (length-aware, DAS's Long / Medium / Short classes): the expected output length is
  the median length of the problem's finished samples, or before any finished, the longest
  running sample (a lower bound); a sample already longer than that counts as its own length.
  Short (< `short_len`): no draft; medium (< `long_len`): `medium_k`; long: the full `k`.

Plain Python and numpy only: this module is imported inside every vLLM engine worker.

Example:
    >>> drafter = HistoryDrafter(DrafterConfig(k=4, short_len=4, long_len=8))
    >>> prompt = np.array([1, 2, 3], dtype=np.int32)
    >>> drafter.propose([np.r_[prompt, 7]], [1])   # nothing known about this problem yet
    [[]]
"""
from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class DrafterConfig:
    """Tunables; `k` is the engine's num_speculative_tokens (the largest draft)."""

    k: int = 4
    min_match: int = 2            # n-gram length that is indexed (shortest match that drafts)
    max_match: int = 8            # matches are extended backwards up to this many tokens
    window: int = 16              # finished samples kept per problem (older ones are evicted)
    short_len: int = 32           # expected output below this: no draft (DAS: Short class)
    long_len: int = 128           # expected output from this on: the full k (Long class)
    medium_k: int | None = None   # Medium class budget; None = k // 2 (at least 1)
    min_share: float = 0.5        # a drafted token needs this share of the votes
    match_factor: float = 2.0     # a draft is at most this many times the matched length
    max_occurrences: int = 64     # most recent occurrences of an n-gram that vote
    max_problems: int = 64        # problems kept (least recently used evicted)
    min_accept: float = 0.0       # draft a token only while its estimated chance of being
    #                               accepted (cumulative along the draft) is at least this:
    #                               what verifying one more token costs, relative to a row's
    #                               share of a step. 0 = off: on the 2-core CPU a draft token
    #                               costs ~1 ms against 8-20 ms a row-step, and replays on
    #                               tuning questions lost with any gate (benchmarks/accel.py)
    prior_accept: float = 0.8     # acceptance assumed before anything is measured ...
    prior_weight: float = 4.0     # ... worth this many observed draft tokens
    explore_every: int = 16       # a gated-off draft still goes out once in this many, so
    #                               the acceptance estimates keep learning

    def budget(self, expected_len: int) -> int:
        """The length-aware draft budget for a sample expected to write `expected_len`."""
        if expected_len < self.short_len:
            return 0
        if expected_len < self.long_len:
            return self.medium_k if self.medium_k is not None else max(1, self.k // 2)
        return self.k


class AcceptanceModel:
    """How often a drafted token is accepted, by the length of the match it continues (a
    token drafted after a longer match is likelier right). Counts are the engine's verdicts;
    a problem's model falls back on the engine-wide one (its `parent`) until it has data."""

    def __init__(self, cfg: DrafterConfig, parent: "AcceptanceModel | None" = None):
        self.cfg, self.parent = cfg, parent
        self.drafted = [0] * (cfg.max_match + 1)
        self.accepted = [0] * (cfg.max_match + 1)

    def rate(self, match: int) -> float:
        m = min(match, self.cfg.max_match)
        prior = self.parent.rate(m) if self.parent is not None else self.cfg.prior_accept
        w = self.cfg.prior_weight
        return (self.accepted[m] + w * prior) / (self.drafted[m] + w)

    def record(self, matches: Sequence[int], accepted: int) -> None:
        """Tokens before `accepted` were accepted, the one at `accepted` rejected, the rest
        never judged."""
        for j, match in enumerate(matches[:accepted + 1]):
            m = min(match, self.cfg.max_match)
            self.drafted[m] += 1
            self.accepted[m] += j < accepted
        if self.parent is not None:
            self.parent.record(matches, accepted)


class ProblemHistory:
    """One problem's sources: its prompt and its samples, under one n-gram index."""

    def __init__(self, prompt: list[int], cfg: DrafterConfig,
                 acceptance: AcceptanceModel | None = None):
        self.cfg = cfg
        self.acceptance = AcceptanceModel(cfg, acceptance)
        self.tail = prompt[-cfg.max_match:]          # prefixed to every sample's output
        self.seqs: dict[int, list[int]] = {}         # source id -> tokens
        self.index: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # gram -> (id, next pos)
        self.running: dict[int, int] = {}            # sample id -> output tokens so far
        self.finished: deque[int] = deque()
        self.finished_len: dict[int, int] = {}
        self._next_id = 0
        self._dead_entries = 0
        self._entries = 0
        self.prompt_id = self._add(list(prompt))

    # -- sources -----------------------------------------------------------------------
    def _add(self, tokens: list[int]) -> int:
        sid, self._next_id = self._next_id, self._next_id + 1
        self.seqs[sid] = []
        self._extend(sid, tokens)
        return sid

    def _extend(self, sid: int, new: Sequence[int]) -> None:
        seq, n = self.seqs[sid], self.cfg.min_match
        start = len(seq)
        seq.extend(new)
        # index the gram that ENDS just before each position p; (sid, p) says "what follows"
        for p in range(max(start, n - 1) + 1, len(seq) + 1):
            self.index.setdefault(tuple(seq[p - n:p]), []).append((sid, p))
            self._entries += 1

    def start_sample(self, output: Sequence[int]) -> int:
        sid = self._add(self.tail + list(output))
        self.running[sid] = len(output)
        return sid

    def extend_sample(self, sid: int, new: Sequence[int]) -> None:
        if sid in self.seqs:
            self._extend(sid, new)
            self.running[sid] = self.running.get(sid, 0) + len(new)

    def finish_sample(self, sid: int) -> None:
        """A sample ended: it joins the window of finished samples; the oldest leaves."""
        if sid not in self.running:
            return
        self.finished_len[sid] = self.running.pop(sid)
        self.finished.append(sid)
        while len(self.finished) > self.cfg.window:
            old = self.finished.popleft()
            self.finished_len.pop(old, None)
            self._dead_entries += len(self.seqs.pop(old, ()))
        if self._dead_entries > self._entries // 2:
            self._reindex()

    def _reindex(self) -> None:
        """Drop the evicted samples' index entries in one pass (lookups skip them till then)."""
        self.index, self._entries, self._dead_entries = {}, 0, 0
        for sid, seq in list(self.seqs.items()):
            self.seqs[sid] = []
            self._extend(sid, seq)

    # -- the length-aware budget --------------------------------------------------------
    def expected_length(self, own_len: int) -> int:
        """Median of the finished samples' lengths; before any finished, the longest running
        sample (a lower bound); never less than what this sample has already written."""
        if self.finished_len:
            return max(int(np.median(list(self.finished_len.values()))), own_len)
        return max([own_len, *self.running.values()])

    # -- drafting ---------------------------------------------------------------------------
    def draft(self, context_tail: list[int], budget: int, explore: bool = False
              ) -> tuple[list[int], list[int], bool]:
        """Continue `context_tail` (the last max_match tokens of a row) from the sources.
        Returns the draft, per drafted token the length of the match it continues, and whether
        the acceptance estimate held the draft back: a token goes out only while its cumulative
        estimated acceptance stays >= min_accept (the first one regardless when `explore`)."""
        cfg = self.cfg
        n = cfg.min_match
        if budget <= 0 or len(context_tail) < n:
            return [], [], False
        found = self.index.get(tuple(context_tail[-n:]))
        if not found:
            return [], [], False
        best, matches = 0, []
        for sid, p in found[-cfg.max_occurrences:]:
            seq = self.seqs.get(sid)
            if seq is None or p >= len(seq):      # evicted, or nothing follows yet
                continue
            m = n                                 # extend the match backwards
            while (m < len(context_tail) and p - m - 1 >= 0
                   and seq[p - m - 1] == context_tail[-m - 1]):
                m += 1
            if m > best:
                best, matches = m, [(seq, p)]
            elif m == best:
                matches.append((seq, p))
        budget = min(budget, int(cfg.match_factor * best))
        out: list[int] = []
        lengths: list[int] = []
        chance, held = 1.0, False
        while matches and len(out) < budget:
            votes = Counter(seq[p] for seq, p in matches)
            token, count = votes.most_common(1)[0]
            if count < cfg.min_share * len(matches):
                break
            chance *= self.acceptance.rate(best + len(out))
            if chance < cfg.min_accept and not (explore and not out):
                held = not out
                break
            out.append(token)
            lengths.append(best + len(out) - 1)
            matches = [(seq, p + 1) for seq, p in matches
                       if seq[p] == token and p + 1 < len(seq)]
        return out, lengths, held


@dataclass
class _Row:
    """What the drafter knows about the request in one batch row."""

    problem: ProblemHistory
    sid: int
    n: int                 # context length (prompt + verified output) at the last step
    last: tuple[int, ...]  # the tokens just before position n (siblings of one problem share
    #                        the head and often the length: one last token confused them)
    head: tuple[int, ...]  # the first tokens of the prompt
    output: int = 0        # output tokens so far

    def continues(self, context: np.ndarray, new: int) -> bool:
        """Whether `context` is this row's request, `new` verified tokens later."""
        n = len(context)
        return (n - new == self.n and n >= self.n
                and tuple(context[self.n - len(self.last):self.n].tolist()) == self.last
                and tuple(context[:len(self.head)].tolist()) == self.head)


@dataclass
class DraftStats:
    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    gated: int = 0            # drafts held back by the acceptance estimate
    # sample id -> (the problem, match lengths of what it drafted last step)
    pending: dict[int, tuple[ProblemHistory, list[int]]] = field(default_factory=dict)


class HistoryDrafter:
    """Tracks which request sits in which batch row (rows move when requests finish) and
    drafts each row from its problem's history. Stateless callers: feed every engine step."""

    def __init__(self, cfg: DrafterConfig | None = None):
        self.cfg = cfg or DrafterConfig()
        self.problems: OrderedDict[bytes, ProblemHistory] = OrderedDict()
        self.rows: dict[int, _Row] = {}
        self.stats = DraftStats()
        self.acceptance = AcceptanceModel(self.cfg)   # engine-wide, every problem's prior

    def problem_for(self, prompt: np.ndarray) -> ProblemHistory:
        key = hashlib.blake2b(np.ascontiguousarray(prompt).tobytes(), digest_size=16).digest()
        problem = self.problems.get(key)
        if problem is None:
            problem = self.problems[key] = ProblemHistory(prompt.tolist(), self.cfg,
                                                          self.acceptance)
            while len(self.problems) > self.cfg.max_problems:
                self.problems.popitem(last=False)   # rows still running keep their object
        self.problems.move_to_end(key)
        return problem

    def propose(self, contexts: Sequence[np.ndarray | None], new_counts: Sequence[int]
                ) -> list[list[int]]:
        """One engine step. `contexts[i]` = row i's prompt + verified output (None or an
        unscheduled row: no draft); `new_counts[i]` = tokens it verified this step (0 while
        its prompt is still being prefilled). Returns one draft (maybe empty) per row."""
        rows = self._match_rows(contexts, new_counts)
        drafts: list[list[int]] = []
        for i, (context, new) in enumerate(zip(contexts, new_counts)):
            row = rows.get(i)
            if row is None or context is None or new <= 0:
                drafts.append([])
                continue
            self._advance(row, context)
            budget = self.cfg.budget(row.problem.expected_length(row.output))
            tail = context[-self.cfg.max_match:].tolist()
            draft, lengths, held = row.problem.draft(tail, budget)
            if held:
                self.stats.gated += 1
                if self.stats.gated % self.cfg.explore_every == 0:
                    draft, lengths, _ = row.problem.draft(tail, budget, explore=True)
            if draft:
                self.stats.drafts += 1
                self.stats.draft_tokens += len(draft)
                self.stats.pending[row.sid] = (row.problem, lengths)
            drafts.append(draft)
        return drafts

    # -- row bookkeeping ---------------------------------------------------------------------
    def _match_rows(self, contexts: Sequence[np.ndarray | None], new_counts: Sequence[int]
                    ) -> dict[int, _Row]:
        kept: dict[int, _Row] = {}
        unplaced: list[int] = []
        for i, (context, new) in enumerate(zip(contexts, new_counts)):
            row = self.rows.get(i)
            if context is None:
                continue
            if new <= 0:   # still prefilling (or not scheduled): keep what we knew
                if row is not None and len(context) == row.n:
                    kept[i] = row
                continue
            if row is not None and row.continues(context, new):
                kept[i] = row
            else:
                unplaced.append(i)
        pool = [r for i, r in self.rows.items() if kept.get(i) is not r]
        for i in unplaced:
            context, new = contexts[i], new_counts[i]
            moved = next((r for r in pool if r.continues(context, new)), None)
            if moved is not None:       # a request moved rows (the batch was compacted)
                pool.remove(moved)
                kept[i] = moved
            else:
                kept[i] = self._start(context, new)
        for gone in pool:               # no longer in the batch: finished
            gone.problem.finish_sample(gone.sid)
            self.stats.pending.pop(gone.sid, None)
        self.rows = kept
        return kept

    def _start(self, context: np.ndarray, new: int) -> _Row:
        prompt_len = len(context) - new
        problem = self.problem_for(context[:prompt_len])
        output = context[prompt_len:].tolist()
        sid = problem.start_sample(output)
        return _Row(problem=problem, sid=sid, n=len(context), last=_last(context),
                    head=tuple(context[:8].tolist()), output=len(output))

    def _advance(self, row: _Row, context: np.ndarray) -> None:
        n = len(context)
        if n > row.n:
            pending = self.stats.pending.pop(row.sid, None)
            if pending:   # the engine verified `n - row.n` tokens: the accepted drafts + 1
                problem, lengths = pending
                accepted = min(len(lengths), n - row.n - 1)
                self.stats.accepted_tokens += accepted
                problem.acceptance.record(lengths, accepted)
            row.problem.extend_sample(row.sid, context[row.n:n].tolist())
            row.output += n - row.n
            row.n, row.last = n, _last(context)


def _last(context: np.ndarray) -> tuple[int, ...]:
    return tuple(context[-8:].tolist())
