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
