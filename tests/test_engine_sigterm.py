"""A process killed with SIGTERM takes its in-process engine's core processes with it (without
the handler they outlive it, busy)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.engine

SCRIPT = """
import asyncio, os, time
from reasonloom.backends.vllm.backend import VLLMBackend
from reasonloom.backends.vllm.embedded import ensure_embedded_model
asyncio.run(VLLMBackend(str(ensure_embedded_model())).engine())
print("ready", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_shuts_the_engine_core_down_with_the_process():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert children, "the engine runs in a child process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM      # still dies of the signal
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [pid for pid in children if _alive(pid)]
    finally:
        proc.kill()
