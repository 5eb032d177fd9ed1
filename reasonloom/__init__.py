"""reasonloom: test-time reasoning strategies as nodes of one DAG, over real model backends.

Public names are loaded lazily (PEP 562): engine workers import our plugin and drafter
modules and must not drag in litellm or the whole package.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Problem": "reasonloom.orchestrator.types",
    "Candidate": "reasonloom.orchestrator.types",
    "Candidates": "reasonloom.orchestrator.types",
    "Answer": "reasonloom.orchestrator.types",
    "Message": "reasonloom.orchestrator.types",
    "Graph": "reasonloom.orchestrator.graph",
    "GraphError": "reasonloom.orchestrator.graph",
    "register_node": "reasonloom.orchestrator.registry",
    "Role": "reasonloom.orchestrator.roles",
    "RoleSpec": "reasonloom.orchestrator.roles",
    "Roles": "reasonloom.orchestrator.roles",
    "RetryPolicy": "reasonloom.orchestrator.roles",
    "BudgetSpec": "reasonloom.orchestrator.budget",
    "BudgetExceeded": "reasonloom.orchestrator.budget",
    "RunResult": "reasonloom.orchestrator.result",
    "RunFailed": "reasonloom.orchestrator.result",
    "RunContext": "reasonloom.orchestrator.context",
    "run": "reasonloom.orchestrator.scheduler",
    "load_recipe": "reasonloom.recipe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reasonloom' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
