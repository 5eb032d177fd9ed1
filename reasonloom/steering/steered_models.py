"""The steered model classes that vLLM builds inside its engine process: Llama, Mistral, Qwen2
and Qwen3 (every decoder whose attention ends in `o_proj` over the heads side by side).

Each is the stock vLLM class plus a forward pre-hook on each chosen layer's
`self_attn.o_proj`, whose input is the heads' outputs side by side (head h = columns
h*D ... (h+1)*D). `forward` sees the batch's input ids, computes the per-token step gate once
(ops.engine_step_gate, from the attention metadata of the forward context), and the hooks apply
ops.steer_heads with it. Settings come from `vllm_config.model_config.hf_config` (the
`reasonloom_steering` entry that engine_overrides puts into hf_overrides).

Needs eager mode (hooks and Python state are invisible to a compiled graph), one tensor- and
pipeline-parallel rank (head slicing per rank is not implemented), and no speculative decoding
(verify passes have several tokens per request and are treated as prefill: never steered).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

from reasonloom.steering.ops import (SeparatorMasks, engine_step_gate, head_gate, probe_logits,
                                     steer_heads)
from reasonloom.steering.vectors import SteeringSettings, load_tensors, read_manifest
from reasonloom.steering.vllm_plugin import CONFIG_KEY


class _LayerHeads:
    """One layer's selected heads and their vectors / probes, cast lazily to the activations'
    dtype and device (kept off the nn.Module so weight loading never sees them)."""

    def __init__(self, heads: torch.Tensor, vectors: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor):
        self.tensors = (heads, vectors, weight, bias)
        self._cast: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def on(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._cast:
            heads, *rest = self.tensors
            self._cast[key] = (heads.to(like.device),
                               *(t.to(like.device, like.dtype) for t in rest))
        return self._cast[key]


class HeadSteering:
    """The worker-side state of one steered engine: selected heads per layer, the vocab masks,
    the per-KV-slot separator memory, the current batch's gate and the counters."""

    def __init__(self, settings: SteeringSettings, vllm_config: Any, class_name: str):
        manifest = read_manifest(settings.vectors)
        tensors = load_tensors(settings.vectors)
        k = settings.top_k_heads or len(manifest.heads)
        self.strength = manifest.default_strength if settings.strength is None \
            else settings.strength
        self.gate = settings.gate or manifest.default_gate
        heads = tensors["heads"][:k]
        self.layers: dict[int, _LayerHeads] = {}
        for layer in sorted(set(heads[:, 0].tolist())):
            rows = (heads[:, 0] == layer).nonzero().flatten()
            self.layers[layer] = _LayerHeads(heads[rows, 1], tensors["vectors"][rows].float(),
                                             tensors["probe_weight"][rows].float(),
                                             tensors["probe_bias"][rows].float())
        model_config = vllm_config.model_config
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer,
                                                  trust_remote_code=model_config.trust_remote_code)
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        self.masks = SeparatorMasks(texts, settings.separator or manifest.separator,
                                    model_config.hf_config.vocab_size)
        self.block_size = vllm_config.cache_config.block_size
        self.slot_end_bits = torch.zeros(1, dtype=torch.int64)
        self.step = torch.zeros(0, dtype=torch.bool)
        self.any_step = False
        self.stats_file = Path(settings.stats_file) if settings.stats_file else None
        self.counts = {"forwards": 0, "decode_tokens": 0, "gated_tokens": 0, "head_steers": 0}
        self._head_steers = torch.zeros((), dtype=torch.int64)
        self.info = {"pid": os.getpid(), "class": class_name,
                     "heads": int(k), "layers": len(self.layers), "strength": self.strength,
                     "gate": self.gate, "separator": self.masks.separator}
        self.write_stats()

    # -- per forward ---------------------------------------------------------------------------
    def begin(self, input_ids: torch.Tensor | None, positions: torch.Tensor) -> None:
        """Compute the batch's per-token step gate (all False when there is no attention
        metadata: profiling and dummy runs)."""
        num_tokens = positions.shape[-1]
        meta = self._metadata()
        if input_ids is None or meta is None:
            self.step = torch.zeros(num_tokens, dtype=torch.bool, device=positions.device)
            self.any_step = False
            return
        if self.masks.contains.device != input_ids.device:
            self.masks.to(input_ids.device)
        self._fit_memory(meta.block_table, input_ids.device)
        self.step = engine_step_gate(input_ids, positions, meta.query_start_loc,
                                     meta.block_table, meta.slot_mapping, self.block_size,
                                     self.slot_end_bits, self.masks)
        # Most decode steps start no reasoning step anywhere in the batch (about 3 in 4 at
        # batch 16 on qwen05): the hooks then pass the heads through without touching them.
        self.any_step = bool(self.step.any())
        if self.stats_file is not None:
            from reasonloom.steering.ops import decode_tokens

            self.counts["forwards"] += 1
            self.counts["decode_tokens"] += int(decode_tokens(num_tokens,
                                                              meta.query_start_loc).sum())
            self.counts["gated_tokens"] += int(self.step.sum())

    def hook(self, layer: int):
        heads = self.layers[layer]

        def pre_hook(_module: torch.nn.Module, args: tuple) -> tuple | None:
            if not self.any_step:
                return None          # None: o_proj gets its input as it was
            x = args[0]
            index, vectors, weight, bias = heads.on(x)
            step = self.step[: x.shape[0]]
            gate = head_gate(step, probe_logits(x, index, weight, bias), self.gate)
            if self.stats_file is not None:
                self._head_steers += gate.sum().to(torch.int64).cpu()
            return (steer_heads(x, index, vectors, self.strength, gate), *args[1:])

        return pre_hook

    def end(self) -> None:
        if self.stats_file is not None:
            self.counts["head_steers"] = int(self._head_steers)
            self.write_stats()

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _metadata() -> Any | None:
        from vllm.forward_context import get_forward_context, is_forward_context_available

        if not is_forward_context_available():
            return None
        meta = get_forward_context().attn_metadata
        if not isinstance(meta, dict) or not meta:
            return None          # dummy runs, or micro-batched (DBO) lists: not steered
        first = next(iter(meta.values()))
        needed = ("query_start_loc", "block_table", "slot_mapping")
        return first if all(hasattr(first, name) for name in needed) else None

    def _fit_memory(self, block_table: torch.Tensor, device: torch.device) -> None:
        """One int64 per KV slot (+ a scratch entry), grown when the block table reaches past
        it (the KV cache size is known only after the memory profile)."""
        needed = (int(block_table.max()) + 1) * self.block_size + 1 if block_table.numel() else 1
        if self.slot_end_bits.numel() < needed or self.slot_end_bits.device != device:
            grown = torch.zeros(max(needed, self.slot_end_bits.numel()), dtype=torch.int64,
                                device=device)
            grown[: self.slot_end_bits.numel() - 1] = self.slot_end_bits[:-1].to(device)
            self.slot_end_bits = grown

    def write_stats(self) -> None:
        if self.stats_file is None:
            return
        tmp = self.stats_file.with_name(self.stats_file.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self.info, **self.counts}))
        os.replace(tmp, self.stats_file)


class _Steered:
    """Mixed in before a stock vLLM causal LM: CREST head steering at the input of the chosen
    layers' o_proj (`self.model.layers[i].self_attn.o_proj`, the same path in every class
    below)."""

    def __init__(self, *, vllm_config: Any, prefix: str = "", **kwargs: Any):
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        from vllm.distributed import get_pp_group, get_tensor_model_parallel_world_size

        if get_tensor_model_parallel_world_size() > 1 or get_pp_group().world_size > 1:
            raise NotImplementedError("head steering runs on one tensor/pipeline-parallel rank")
        raw = getattr(vllm_config.model_config.hf_config, CONFIG_KEY, None)
        if not isinstance(raw, dict):
            raise ValueError(f"{type(self).__name__} needs hf_overrides[{CONFIG_KEY!r}]")
        self.steering = HeadSteering(SteeringSettings.model_validate(raw), vllm_config,
                                     type(self).__name__)
        for layer in self.steering.layers:
            self.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(
                self.steering.hook(layer))

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: Any = None, inputs_embeds: torch.Tensor | None = None
                ) -> Any:
        self.steering.begin(input_ids, positions)
        out = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)
        self.steering.end()
        return out


class SteeredLlamaForCausalLM(_Steered, LlamaForCausalLM):
    """`LlamaForCausalLM` with CREST head steering."""


class SteeredMistralForCausalLM(_Steered, MistralForCausalLM):
    """`MistralForCausalLM` with CREST head steering."""


class SteeredQwen2ForCausalLM(_Steered, Qwen2ForCausalLM):
    """`Qwen2ForCausalLM` with CREST head steering."""


class SteeredQwen3ForCausalLM(_Steered, Qwen3ForCausalLM):
    """`Qwen3ForCausalLM` with CREST head steering."""
