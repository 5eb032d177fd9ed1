"""One in-process vLLM `AsyncLLM` per (model folder, engine arguments), started lazily,
shared by every node and role of the process, shut down at exit."""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import os
import signal
import threading
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from reasonloom.backends.errors import EngineStartError
from reasonloom.backends.vllm.cpu_defaults import cpu_engine_settings
from reasonloom.backends.vllm.engine_output import engine_output

# Prefix caching on by default: test-time strategies resend the same problem many times.
DEFAULT_ENGINE_ARGS: dict[str, Any] = {"enable_prefix_caching": True, "max_model_len": 4096}

_ENGINES: dict[str, Any] = {}
_STARTING: dict[str, asyncio.Lock] = {}
_SPAWN_ENV = threading.Lock()


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


class SpeculativeSpec(BaseModel):
    """A role's `speculative:` entry: `none | ngram | history`, or a mapping with `method` and
    its parameters. history = our drafter from earlier samples of the same problem
    (backends/vllm/drafter.py; its fields are DrafterConfig's); ngram = vLLM's prompt lookup."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["none", "ngram", "history"] = "none"
    num_speculative_tokens: int = Field(4, ge=1, le=16)
    prompt_lookup_min: int = Field(2, ge=1)        # ngram
    prompt_lookup_max: int = Field(4, ge=1)        # ngram
    window: int | None = Field(None, ge=1)         # history: the drafter's own defaults if unset
    short_len: int | None = Field(None, ge=0)
    long_len: int | None = Field(None, ge=0)
    medium_k: int | None = Field(None, ge=0)
    min_match: int | None = Field(None, ge=1)
    max_match: int | None = Field(None, ge=1)
    min_share: float | None = Field(None, ge=0, le=1)
    match_factor: float | None = Field(None, gt=0)
    min_accept: float | None = Field(None, ge=0, le=1)

    @classmethod
    def parse(cls, value: "str | dict[str, Any] | SpeculativeSpec | None") -> "SpeculativeSpec":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(method=value) if isinstance(value, str) else cls.model_validate(value)


def speculative_engine_args(engine_args: dict[str, Any]) -> dict[str, Any]:
    """Translate our `reasonloom_speculative` entry into vLLM's `speculative_config` (and the
    drafter's tunables into `hf_overrides`, which reaches the engine worker)."""
    if "reasonloom_speculative" not in engine_args:
        return engine_args
    args = dict(engine_args)
    spec = SpeculativeSpec.parse(args.pop("reasonloom_speculative"))
    k = spec.num_speculative_tokens
    if spec.method == "ngram":
        args["speculative_config"] = {"method": "ngram", "num_speculative_tokens": k,
                                      "prompt_lookup_min": spec.prompt_lookup_min,
                                      "prompt_lookup_max": spec.prompt_lookup_max}
    elif spec.method == "history":
        from reasonloom.backends.vllm.proposer import CLASS_PATH, CONFIG_KEY

        drafter = spec.model_dump(exclude_none=True, exclude={
            "method", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max"})
        args["speculative_config"] = {"method": "custom_class", "model": CLASS_PATH,
                                      "num_speculative_tokens": k}
        args["hf_overrides"] = {**(args.get("hf_overrides") or {}), CONFIG_KEY: drafter}
    return args


def steering_engine_args(model: str, engine_args: dict[str, Any]) -> dict[str, Any]:
    """Translate our `reasonloom_steering` entry (a role's `steering:`) into hf_overrides that
    name the steered model class, plus eager mode (reasonloom/steering/vllm_plugin.py)."""
    if "reasonloom_steering" not in engine_args:
        return engine_args
    from reasonloom.steering.vllm_plugin import engine_overrides

    args = dict(engine_args)
    return engine_overrides(model, args.pop("reasonloom_steering"), args)


def _start_engine(model: str, engine_args: dict[str, Any]) -> Any:
    # vLLM prints from its import on, in this process and the ones it spawns: all of it goes
    # to the engine's log (or stderr), never to stdout (engine_output.py)
    with engine_output():
        return _start_engine_quietly(model, engine_args)


def _start_engine_quietly(model: str, engine_args: dict[str, Any]) -> Any:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = speculative_engine_args(engine_args)
    engine_args = steering_engine_args(model, engine_args)
    settings = cpu_engine_settings(engine_args)
    args = AsyncEngineArgs(model=model, **settings.args)
    # The engine's processes read their thread binding and start method from the environment
    # they start with; one start at a time, so two roles' settings never mix.
    with _SPAWN_ENV, _environment(settings.env):
        config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
        with _environment(settings.start_env):
            return AsyncLLM.from_vllm_config(config, enable_log_requests=args.enable_log_requests,
                                             disable_log_stats=args.disable_log_stats)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
            _shut_down_on_sigterm()
    return _ENGINES[key]


def _shut_down_on_sigterm() -> None:
    """SIGTERM (kill, a job's time limit) ends Python without running atexit, and the engine
    core processes then live on, busy, with no one to serve. Where nothing else handles
    SIGTERM, shut the engines down first, then die of the signal as before."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum: int, _frame: Any) -> None:
        shutdown_engines()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)


def _shutdown(engine: Any) -> None:
    try:
        engine.shutdown()
    except Exception:
        pass
    # AsyncLLM.__del__ would shut down again during interpreter teardown and fail noisily.
    engine.shutdown = lambda *args, **kwargs: None


def shutdown_engines() -> None:
    while _ENGINES:
        _shutdown(_ENGINES.popitem()[1])


def shutdown_engine(model: str, engine_args: dict[str, Any]) -> bool:
    """Shut down the one engine for (model, engine arguments); False if none was running."""
    engine = _ENGINES.pop(engine_key(model, engine_args), None)
    if engine is not None:
        _shutdown(engine)
    return engine is not None


atexit.register(shutdown_engines)
