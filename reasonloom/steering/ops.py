"""CREST's intervention and its per-token gate as pure, branchless torch functions.

The intervention (arXiv 2512.24574, the released `norm_threshold` mode, moved to the heads):
for each selected head h with unit vector v_h and strength lambda, at gated tokens,
    o_h <- o_h + lambda * (o_h . v_h) * v_h,   then rescaled to the original norm of o_h.
With lambda = -1 this removes the component along v_h and renormalises: a rotation of o_h in
span{o_h, v_h}. lambda = 0 returns the input bit for bit (the rescale factor is ||o||/||o|| = 1).

The gate is per TOKEN. A token "starts a step" when its INPUT token completes a step separator
("\\n\\n" by default): the separator either lies inside the token, or begins at the end of the
previous token and ends inside this one (GPT-2-style tokenizers split ".\\n\\nThen" into
".", "\\n", "\\n", "Then", so the one-token test alone would almost never fire). Only decode
tokens are gated, never prompt prefill tokens, and decode and prefill rows may share a batch:
the reference code decides per batch ("max query length > 1" switches steering off for every
row), which silently disables it under chunked prefill; we do not.

Everything here is mask arithmetic (no data-dependent Python branches, no boolean indexing), so
the same code would survive tracing; it runs eagerly inside the vLLM worker.
"""
from __future__ import annotations

from typing import Sequence

import torch


def steer_heads(heads_out: torch.Tensor, head_index: torch.Tensor, vectors: torch.Tensor,
                strength: float | torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The intervention on the input of o_proj (the heads' outputs side by side).

    heads_out: [T, H*D]; head_index: [K] heads of this layer; vectors: [K, D] unit vectors;
    gate: [T, K] in {0, 1} (float). Returns a new [T, H*D] tensor; heads not in head_index
    and ungated (token, head) pairs are returned unchanged, exactly.
    """
    tokens, dim = heads_out.shape[0], vectors.shape[-1]
    per_head = heads_out.reshape(tokens, -1, dim)
    o = per_head.index_select(1, head_index)                       # [T, K, D]
    coef = (o * vectors).sum(-1, keepdim=True)                     # o . v
    steered = o + (strength * gate).unsqueeze(-1) * coef * vectors
    norm = torch.linalg.vector_norm(o, dim=-1, keepdim=True)
    new_norm = torch.linalg.vector_norm(steered, dim=-1, keepdim=True)
    # ||o|| / ||o'||: exactly 1 where nothing changed; a zero vector stays zero.
    scale = norm / new_norm.clamp_min(torch.finfo(new_norm.dtype).tiny)
    return per_head.index_copy(1, head_index, steered * scale).reshape(heads_out.shape)


def probe_logits(heads_out: torch.Tensor, head_index: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """Each selected head's linear probe on its own output: [T, K] logits of
    P(the step that starts here is a verification / backtracking step)."""
    tokens, dim = heads_out.shape[0], weight.shape[-1]
    o = heads_out.reshape(tokens, -1, dim).index_select(1, head_index)
    return (o * weight).sum(-1) + bias


def head_gate(step_start: torch.Tensor, logits: torch.Tensor, gate: str) -> torch.Tensor:
    """[T, K] float gate: `step` = every selected head at step-start tokens; `step_and_probe` =
    only the heads whose probe fires (logit > 0, i.e. p > 0.5) there."""
    step = step_start.to(logits.dtype).unsqueeze(-1)
    if gate == "step":
        return step.expand_as(logits)
    return step * (logits > 0).to(logits.dtype)


# -- which tokens start a step ----------------------------------------------------------------

class SeparatorMasks:
    """Vocab-sized lookups for the separator test, precomputed once per tokenizer.

    contains[v]: token v holds the whole separator. end_bits[v]: bit k-1 set when token v ends
    with separator[:k]; start_bits[v]: bit k-1 set when token v starts with separator[k:]
    (k = 1 .. len-1). A token completes a separator when it contains it, or when
    end_bits[previous] & start_bits[token] != 0. Separators spread over three or more tokens
    are not detected.
    """

    def __init__(self, token_texts: Sequence[str], separator: str, vocab_size: int | None = None):
        if not separator:
            raise ValueError("the step separator must not be empty")
        if len(separator) > 63:
            raise ValueError("the step separator must be shorter than 64 characters")
        size = max(vocab_size or 0, len(token_texts))
        contains, end_bits, start_bits = [False] * size, [0] * size, [0] * size
        for token_id, text in enumerate(token_texts):
            contains[token_id] = separator in text
            for k in range(1, len(separator)):
                if text.endswith(separator[:k]):
                    end_bits[token_id] |= 1 << (k - 1)
                if text and text.startswith(separator[k:]):
                    start_bits[token_id] |= 1 << (k - 1)
        self.separator = separator
        self.contains = torch.tensor(contains, dtype=torch.bool)
        self.end_bits = torch.tensor(end_bits, dtype=torch.int64)
        self.start_bits = torch.tensor(start_bits, dtype=torch.int64)

    def to(self, device: torch.device | str) -> "SeparatorMasks":
        self.contains = self.contains.to(device)
        self.end_bits = self.end_bits.to(device)
        self.start_bits = self.start_bits.to(device)
        return self


def completes_separator(input_ids: torch.Tensor, previous_end_bits: torch.Tensor,
                        masks: SeparatorMasks) -> torch.Tensor:
    """[T] bool: the input token completes a separator, given the previous token's end bits."""
    return masks.contains[input_ids] | ((previous_end_bits & masks.start_bits[input_ids]) != 0)


def sequence_step_starts(token_ids: torch.Tensor, masks: SeparatorMasks) -> torch.Tensor:
    """The same test along one whole sequence (calibration): [N] bool."""
    previous = torch.zeros_like(token_ids)
    previous[1:] = masks.end_bits[token_ids[:-1]]
    return completes_separator(token_ids, previous, masks)


def request_index(num_tokens: int, query_start_loc: torch.Tensor) -> torch.Tensor:
    """[T] the batch row (request) of each flat token; padding tokens get the last row."""
    tokens = torch.arange(num_tokens, device=query_start_loc.device)
    rows = torch.searchsorted(query_start_loc[1:].contiguous(), tokens, right=True)
    return rows.clamp(max=query_start_loc.numel() - 2)


def decode_tokens(num_tokens: int, query_start_loc: torch.Tensor) -> torch.Tensor:
    """[T] bool: the token belongs to a request that computes exactly one token this step
    (a decode row); prompt-chunk rows and padding are False. Known edge: a prompt whose only
    uncached token is its last one is scheduled as a one-token chunk and counts as decode."""
    tokens = torch.arange(num_tokens, device=query_start_loc.device)
    lengths = query_start_loc[1:] - query_start_loc[:-1]
    rows = request_index(num_tokens, query_start_loc)
    return (lengths[rows] == 1) & (tokens < query_start_loc[-1])


def previous_slots(positions: torch.Tensor, rows: torch.Tensor, block_table: torch.Tensor,
                   block_size: int) -> torch.Tensor:
    """[T] the KV-cache slot that holds each token's predecessor (position - 1) in its own
    request, read from the paged block table (the predecessor of a decode token was written
    by an earlier step)."""
    previous = (positions - 1).clamp(min=0)
    blocks = block_table[rows, previous // block_size].to(positions.dtype)
    return blocks * block_size + previous % block_size


def engine_step_gate(input_ids: torch.Tensor, positions: torch.Tensor,
                     query_start_loc: torch.Tensor, block_table: torch.Tensor,
                     slot_mapping: torch.Tensor, block_size: int, slot_end_bits: torch.Tensor,
                     masks: SeparatorMasks) -> torch.Tensor:
    """Per-token step gate for one engine forward over a flat batch that may mix prefill and
    decode rows. Reads the predecessor's separator bits from `slot_end_bits` (one entry per KV
    slot, plus one trailing scratch entry) and then records this batch's tokens there, so the
    next step can see them. Returns [T] bool: decode token AND input token completes a
    separator."""
    num_tokens = input_ids.shape[0]
    rows = request_index(num_tokens, query_start_loc)
    scratch = slot_end_bits.numel() - 1
    prev = previous_slots(positions[:num_tokens], rows, block_table, block_size).clamp(0, scratch)
    gate = decode_tokens(num_tokens, query_start_loc) & completes_separator(
        input_ids, slot_end_bits[prev], masks)
    slots = slot_mapping[:num_tokens].to(torch.int64)
    slots = torch.where((slots >= 0) & (slots < scratch), slots, torch.full_like(slots, scratch))
    slot_end_bits.index_put_((slots,), masks.end_bits[input_ids])
    return gate
