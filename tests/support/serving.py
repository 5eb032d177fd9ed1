"""Starting `reasonloom serve` for tests: as a subprocess (what users run) or as uvicorn in a
thread of the test process (when a test must look inside: backends, run counters)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

# Scripted recipes (`backend: scripted`): the echo responder repeats the last message, so a
# stream's text says which request it belongs to.
ECHO = """
description: scripted echo, streamed
seed: 0
models:
  strong:
    backend: scripted
    options: {{responder: echo, chunk_chars: {chunk_chars}, chunk_delay_s: {delay}}}
    price_in_per_m: 1.0
    price_out_per_m: 2.0
    concurrency: {concurrency}
nodes:
  answer:
    type: generate
    params: {{n: 1, stream_answer: true, max_tokens: 64, temperature: 0.7}}
output: answer
"""
VOTE = """
description: majority vote over four scripted samples (the last node selects)
seed: 0
models:
  strong: {backend: scripted, price_in_per_m: 1.0, price_out_per_m: 2.0}
nodes:
  samples:
    type: best_of_n
    params: {n: 4, max_tokens: 32}
  vote:
    type: majority
    inputs: {candidates: samples.candidates}
output: vote
"""
# An OpenAI endpoint nobody listens on, one attempt: every run fails (the 500 path).
BROKEN = """
seed: 0
models:
  strong: {backend: openai, model: x, base_url: "http://127.0.0.1:9/v1", retry: {max_attempts: 1}}
nodes:
  answer:
    type: generate
    params: {n: 1, stream_answer: true, max_tokens: 8}
output: answer
"""


def write_scripted_recipes(folder: Path, concurrency: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "echo.yaml").write_text(ECHO.format(chunk_chars=4, delay=0.01,
                                                  concurrency=concurrency))
    (folder / "slow.yaml").write_text(ECHO.format(chunk_chars=1, delay=0.1,
                                                  concurrency=concurrency))
    (folder / "vote.yaml").write_text(VOTE)
    (folder / "broken.yaml").write_text(BROKEN)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, deadline_s: float = 60, proc: subprocess.Popen | None = None,
                 log: Path | None = None) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not healthy in time")


class ServeProcess:
    """`reasonloom serve` as a subprocess; `.base` is `http://127.0.0.1:PORT`, `.log` its output."""

    def __init__(self, recipes: Path, log: Path, *, api_key: str | None = None,
                 max_running: int = 16, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ}
        env.pop("REASONLOOM_API_KEY", None)
        if api_key:
            env["REASONLOOM_API_KEY"] = api_key   # the variable, not an argument: ps shows those
        cmd = [sys.executable, "-m", "reasonloom.cli.main", "serve", "--recipes", str(recipes),
               "--port", str(self.port), "--max-running", str(max_running), *extra]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        try:
            wait_healthy(self.base, 90, self.proc, log)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait_s)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue


async def stop_sse_watchers() -> None:
    """sse-starlette leaves one shutdown watcher polling on each loop it served; a loop that
    outlives its server (the test session's) would be closed with it still pending."""
    watchers = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "")
                == "_shutdown_watcher"]
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)


class ThreadServer:
    """uvicorn on its own loop in a thread of this process (its engines live on that loop)."""

    def __init__(self, app: Any):
        import uvicorn

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_healthy(self.base, 30)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.run_until_complete(stop_sse_watchers())
            self.loop.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
