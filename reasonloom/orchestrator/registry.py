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
# Packages declare their node modules in this entry-point group (reasonloom's own list is
# reasonloom/nodes.py), so the orchestrator loads node types without importing a layer above.
NODE_ENTRY_POINTS = "reasonloom.nodes"
_entry_points_loaded = False


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


def load_node_modules() -> None:
    """Import every module in the `reasonloom.nodes` entry-point group, once (lazily: only a
    recipe or graph needs them)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    from importlib.metadata import entry_points

    for entry in entry_points(group=NODE_ENTRY_POINTS):
        entry.load()
    _entry_points_loaded = True


def get_node_type(name: str) -> NodeType:
    if name not in _REGISTRY:
        load_node_modules()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or (
            f"none: no `{NODE_ENTRY_POINTS}` entry point; reinstall with `pip install -e .`")
        raise KeyError(f"unknown node type {name!r} (known: {known})")
    return _REGISTRY[name]

