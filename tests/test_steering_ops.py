"""CREST ops: the head intervention and the per-token step gate (pure torch, no engine)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonloom.steering.ops import (SeparatorMasks, decode_tokens, engine_step_gate, head_gate,
                                     probe_logits, sequence_step_starts, steer_heads)

HEADS, DIM = 4, 8


def _unit(rows: int, seed: int) -> torch.Tensor:
    v = torch.randn(rows, DIM, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=-1, keepdim=True)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), tokens=st.integers(1, 9))
def test_zero_strength_returns_the_input_bit_for_bit(seed, tokens):
    x = torch.randn(tokens, HEADS * DIM, generator=torch.Generator().manual_seed(seed)) * 3
    x[0, :DIM] = 0.0                                         # a zero head output stays exact too
    index = torch.tensor([0, 2])
    gate = torch.ones(tokens, 2)
    out = steer_heads(x, index, _unit(2, seed), 0.0, gate)
    assert torch.equal(out, x)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), strength=st.floats(-8, 8).filter(lambda s: abs(s) > 1e-3))
def test_steering_keeps_each_heads_norm_and_leaves_other_heads_alone(seed, strength):
    x = torch.randn(5, HEADS * DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    index = torch.tensor([1, 3])
    vectors = _unit(2, seed + 1).double()
    out = steer_heads(x, index, vectors, strength, torch.ones(5, 2, dtype=torch.float64))
    before, after = x.view(5, HEADS, DIM), out.view(5, HEADS, DIM)
    assert torch.allclose(after.norm(dim=-1), before.norm(dim=-1), rtol=1e-9, atol=1e-12)
    assert torch.equal(after[:, [0, 2]], before[:, [0, 2]])
    assert not torch.allclose(after[:, [1, 3]], before[:, [1, 3]])


def test_minus_one_removes_the_component_along_the_vector():
    x = torch.randn(3, HEADS * DIM, dtype=torch.float64)
    v = _unit(1, 7).double()
    v = v / v.norm(dim=-1, keepdim=True)                    # unit in float64, not just float32
    out = steer_heads(x, torch.tensor([2]), v, -1.0, torch.ones(3, 1, dtype=torch.float64))
    head = out.view(3, HEADS, DIM)[:, 2]
    assert torch.allclose(head @ v[0], torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_ungated_tokens_are_untouched_and_gated_ones_change():
    x = torch.randn(4, HEADS * DIM)
    gate = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    out = steer_heads(x, torch.tensor([0]), _unit(1, 3), -4.0, gate)
    assert torch.equal(out[[0, 2]], x[[0, 2]])
    assert not torch.equal(out[1], x[1]) and not torch.equal(out[3], x[3])


def test_step_and_probe_gate_needs_both_a_step_start_and_a_firing_probe():
    x = torch.randn(3, HEADS * DIM)
    weight = torch.zeros(2, DIM)
    bias = torch.tensor([5.0, -5.0])                         # head A always fires, head B never
    logits = probe_logits(x, torch.tensor([0, 1]), weight, bias)
    step = torch.tensor([True, False, True])
    both = head_gate(step, logits, "step_and_probe")
    assert both.tolist() == [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    assert head_gate(step, logits, "step").tolist() == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]


# -- the gate: which tokens start a step -----------------------------------------------------

# A toy vocabulary shaped like GPT-2 byte-level BPE: "\n\n" may be one token or two.
VOCAB = ["a", ".", "\n", "\n\n", "Wait", " b", ".\n", "\n\nc", "x\n"]
A, DOT, NL, NLNL, WAIT, B, DOTNL, NLNLC, XNL = range(len(VOCAB))
MASKS = SeparatorMasks(VOCAB, "\n\n")


def test_a_separator_split_over_two_tokens_is_found_at_its_second_token():
    ids = torch.tensor([A, DOT, NL, NL, WAIT, B, NLNL, A, DOTNL, NL, A, NL, A, XNL, A])
    starts = sequence_step_starts(ids, MASKS).tolist()
    assert [i for i, s in enumerate(starts) if s] == [3, 6, 9]


def _engine_batch(rows: list[list[int]], positions: list[list[int]], block_size: int = 4):
    """Flat batch tensors for requests whose KV blocks are laid out one request after another."""
    flat_ids = torch.tensor([t for r in rows for t in r])
    flat_pos = torch.tensor([p for ps in positions for p in ps])
    starts = [0]
    for r in rows:
        starts.append(starts[-1] + len(r))
    blocks_per_req = 4
    table = torch.arange(len(rows) * blocks_per_req).view(len(rows), blocks_per_req)
    slots = torch.tensor([int(table[i, p // block_size]) * block_size + p % block_size
                          for i, ps in enumerate(positions) for p in ps])
    return flat_ids, flat_pos, torch.tensor(starts), table, slots


def test_gate_fires_only_at_decode_step_starts_in_a_batch_mixing_prefill_and_decode():
    block_size = 4
    memory = torch.zeros(3 * 4 * block_size + 1, dtype=torch.int64)
    # Step 1: three prompts prefilled together (request 2's prompt contains a separator).
    prompts = [[A, DOT, NL], [A, B], [NL, NL, A]]
    batch = _engine_batch(prompts, [list(range(len(p))) for p in prompts], block_size)
    gate = engine_step_gate(batch[0], batch[1], batch[2], batch[3], batch[4], block_size,
                            memory, MASKS)
    assert not gate.any(), "prefill tokens are never gated, separator or not"
    # Step 2: requests 0 and 1 decode one token each while request 2 is prefilled again as a
    # new prompt chunk of two tokens that complete a separator ("\n" + "\n").
    rows = [[NL], [NLNL], [NL, NL]]
    positions = [[3], [2], [3, 4]]
    batch = _engine_batch(rows, positions, block_size)
    gate = engine_step_gate(batch[0], batch[1], batch[2], batch[3], batch[4], block_size,
                            memory, MASKS)
    # request 0: previous token "\n" (written at prefill) + "\n" -> a step starts;
    # request 1: the "\n\n" token itself; request 2: a prompt chunk, never gated.
    assert gate.tolist() == [True, True, False, False]
    # Step 3: every request decodes; only a token completing a separator fires.
    rows = [[WAIT], [A], [NL]]
    positions = [[4], [3], [5]]
    batch = _engine_batch(rows, positions, block_size)
    gate = engine_step_gate(batch[0], batch[1], batch[2], batch[3], batch[4], block_size,
                            memory, MASKS)
    # request 2: its previous token (position 4, "\n") came from the prompt chunk of step 2.
    assert gate.tolist() == [False, False, True]


def test_decode_rows_are_those_with_one_query_token_and_padding_is_excluded():
    query_start_loc = torch.tensor([0, 1, 4, 5])             # 1 decode, a 3-token chunk, 1 decode
    assert decode_tokens(7, query_start_loc).tolist() == [True, False, False, False, True,
                                                          False, False]


def test_predecessor_across_a_block_boundary_is_read_from_the_block_table():
    block_size = 2
    memory = torch.zeros(20 + 1, dtype=torch.int64)
    table = torch.tensor([[7, 3, 0, 0]])                     # blocks out of order on purpose
    ids, pos = torch.tensor([A, NL]), torch.tensor([0, 1])
    engine_step_gate(ids, pos, torch.tensor([0, 2]), table, torch.tensor([14, 15]), block_size,
                     memory, MASKS)
    gate = engine_step_gate(torch.tensor([NL]), torch.tensor([2]), torch.tensor([0, 1]), table,
                            torch.tensor([6]), block_size, memory, MASKS)
    assert gate.tolist() == [True]
