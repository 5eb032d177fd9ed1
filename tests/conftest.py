"""Shared fixtures: ONE embedded vLLM engine per test session, one event loop to drive it."""
from __future__ import annotations

import asyncio
import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests check behaviour, not speed: a shared 2-core machine (CI, an engine test
# beside them) makes the 200 ms default deadline fail tests that are correct.
settings.register_profile("reasonloom", deadline=None)
settings.load_profile("reasonloom")

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
    from tests.support.vllm_server import ServerStartError, VLLMServer

    server = VLLMServer(tmp_path_factory.mktemp("vllm_server") / "server.log")
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(str(exc))
    try:
        yield server.base_url
    finally:
        server.stop()


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
