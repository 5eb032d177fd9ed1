"""Shared fixtures: ONE embedded vLLM engine per test session, one event loop to drive it."""
from __future__ import annotations

import asyncio
import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

# float32 + eager: exact-equality claims need a batch-invariant setting (DESIGN.md).
EMBEDDED_ENGINE_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 4096}


@pytest.fixture(scope="session")
def session_loop():
    """The engine's output handler lives on one loop: every engine test runs on this one."""
    loop = asyncio.new_event_loop()
    yield loop
    from reasonloom.backends.vllm.engine import shutdown_engines

    shutdown_engines()
    loop.close()


@pytest.fixture(scope="session")
def arun(session_loop):
    return session_loop.run_until_complete


@pytest.fixture(scope="session")
def embedded_spec():
    from reasonloom.backends.factory import BackendSpec

    return BackendSpec(backend="embedded", engine=EMBEDDED_ENGINE_ARGS)


@pytest.fixture(scope="session")
def embedded(embedded_spec, arun):
    """The session's embedded VLLMBackend (engine started once, shared by every test)."""
    from reasonloom.backends.factory import build_backend

    backend = build_backend(embedded_spec)
    arun(backend.engine())
    return backend


@pytest.fixture
def embedded_roles(embedded):
    """Two ranked roles ('strong' 8x the price of 'cheap') on the one embedded engine."""
    from reasonloom.orchestrator.roles import Role, Roles, RoleSpec

    return Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=0.8,
                                          price_out_per_m=3.2), embedded),
                  "cheap": Role(RoleSpec(name="cheap", price_in_per_m=0.1,
                                         price_out_per_m=0.4), embedded)},
                 order=["strong", "cheap"])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """ONE vLLM OpenAI-compatible server subprocess per session (the session's second engine),
    serving the embedded model in float32/eager; yields its base_url (`http://.../v1`)."""
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model

    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm_server") / "server.log"
    # `python -m`: the `vllm` console script fails under vllm-cpu.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(ensure_embedded_model()), "--served-model-name", MODEL_NAME,
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
           "--port", str(port), "--host", "127.0.0.1"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)   # its own group: killed as one

    def log_tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])

    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy within 240 s:\n{log_tail()}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def on_test_engine(path, extra=()):
    """Load a recipe with every embedded role pointed at the session's one engine (same engine
    arguments, so no second in-process engine starts)."""
    import json as _json

    import yaml as _yaml

    from reasonloom.recipe import load_recipe

    raw = _yaml.safe_load(open(path))
    overrides = [f"models.{name}.engine={_json.dumps(EMBEDDED_ENGINE_ARGS)}"
                 for name, role in raw["models"].items()
                 if role.get("backend", "embedded") == "embedded"]
    return load_recipe(path, [*overrides, *extra])
