"""The node-type registry: a new strategy is one file plus one `register_node` call."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from pydantic import BaseModel

NodeFn = Callable[..., Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class NodeType:
    name: str
    config_model: type[BaseModel]
    inputs: Mapping[str, str]    # port name -> port type
    outputs: Mapping[str, str]   # port name -> port type
    fn: NodeFn
    optional_inputs: frozenset[str] = frozenset()


_REGISTRY: dict[str, NodeType] = {}
# Modules that register node types when imported; recipes never import anything else.
_BUILTIN_MODULES = (
    "reasonloom.strategies.sampling",
    "reasonloom.strategies.evolve",
    "reasonloom.strategies.tournament",
    "reasonloom.strategies.moa",
    "reasonloom.strategies.chunked",
    "reasonloom.verifiers.weaver",
)
_builtins_loaded = False


def register_node(name: str, config_model: type[BaseModel], inputs: Mapping[str, str],
                  outputs: Mapping[str, str], optional_inputs: tuple[str, ...] = ()
                  ) -> Callable[[NodeFn], NodeFn]:
    """Decorator: `@register_node("evolve", EvolveConfig, {"problem": "problem"}, {...})`.

    The function is called as `await fn(inputs: dict, config, ctx: NodeContext)` and returns
    a dict of its outputs by port name.
    """

    def decorate(fn: NodeFn) -> NodeFn:
        _REGISTRY[name] = NodeType(name, config_model, dict(inputs), dict(outputs), fn,
                                   frozenset(optional_inputs))
        return fn

    return decorate


def load_builtin_nodes() -> None:
    """Import the shipped strategy modules (lazily: only a recipe or graph needs them)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    import importlib

    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real import error inside the module
                raise
    _builtins_loaded = True


def get_node_type(name: str) -> NodeType:
    if name not in _REGISTRY:
        load_builtin_nodes()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"unknown node type {name!r} (known: {known})")
    return _REGISTRY[name]


def node_types() -> dict[str, NodeType]:
    load_builtin_nodes()
    return dict(_REGISTRY)
