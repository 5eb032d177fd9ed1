"""One in-process vLLM `AsyncLLM` per (model folder, engine arguments), started lazily,
shared by every node and role of the process, shut down at exit."""
from __future__ import annotations

import asyncio
import atexit
import hashlib
import json
import os
from typing import Any

from reasonloom.backends.errors import EngineStartError

# Prefix caching on by default: test-time strategies resend the same problem many times.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {"enable_prefix_caching": True, "max_model_len": 4096}

_ENGINES: dict[str, Any] = {}
_STARTING: dict[str, asyncio.Lock] = {}


def engine_key(model: str, engine_args: dict[str, Any]) -> str:
    body = json.dumps({"model": model, **engine_args}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _engine_reason(exc: BaseException) -> str:
    """The engine's own reason, one line: the innermost message that says something."""
    seen, reasons = exc, []
    while seen is not None:
        text = str(seen).strip().splitlines()
        if text:
            reasons.append(text[-1])
        seen = seen.__cause__ or seen.__context__
    return reasons[-1] if reasons else type(exc).__name__


def steering_engine_args(model: str, engine_args: dict[str, Any]) -> dict[str, Any]:
    """Translate our `reasonloom_steering` entry (a role's `steering:`) into hf_overrides that
    name the steered model class, plus eager mode (reasonloom/steering/vllm_plugin.py)."""
    if "reasonloom_steering" not in engine_args:
        return engine_args
    from reasonloom.steering.vllm_plugin import engine_overrides

    args = dict(engine_args)
    return engine_overrides(model, args.pop("reasonloom_steering"), args)


def _start_engine(model: str, engine_args: dict[str, Any]) -> Any:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = steering_engine_args(model, engine_args)
    args = AsyncEngineArgs(model=model, **engine_args)
    return AsyncLLM.from_engine_args(args)


async def get_engine(model: str, engine_args: dict[str, Any]) -> Any:
    key = engine_key(model, engine_args)
    if key in _ENGINES:
        return _ENGINES[key]
    lock = _STARTING.setdefault(key, asyncio.Lock())
    async with lock:
        if key not in _ENGINES:
            try:
                # Engine start blocks for ~20 s: keep the event loop (and other nodes) alive.
                _ENGINES[key] = await asyncio.to_thread(_start_engine, model, engine_args)
            except Exception as exc:
                raise EngineStartError(
                    f"vLLM engine for {model} failed to start: {_engine_reason(exc)}") from None
    return _ENGINES[key]


def shutdown_engines() -> None:
    while _ENGINES:
        _, engine = _ENGINES.popitem()
        try:
            engine.shutdown()
        except Exception:
            pass
        # AsyncLLM.__del__ would shut down again during interpreter teardown and fail noisily.
        engine.shutdown = lambda *args, **kwargs: None


atexit.register(shutdown_engines)
