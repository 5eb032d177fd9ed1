"""A graph of nodes with named, typed ports, validated when it is built."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import networkx as nx
from pydantic import BaseModel, ValidationError

from reasonloom.orchestrator.registry import NodeType, get_node_type

PROBLEM = "problem"   # the source name of the run's input


class GraphError(ValueError):
    """A graph that cannot run; `path` names the node/port (e.g. `nodes.judge.inputs.candidates`)."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Source:
    node: str            # PROBLEM or a node name
    port: str            # the producing port ("problem" for the run input)


@dataclass
class NodeSpec:
    name: str
    type: NodeType
    config: BaseModel
    # a port fed by several producers gets a list of sources (candidates are concatenated)
    inputs: dict[str, "Source | list[Source]"] = field(default_factory=dict)
    streaming: frozenset[str] = frozenset()   # input ports consumed as partial streams

    def sources(self) -> list[tuple[str, Source]]:
        return [(port, src) for port, ref in self.inputs.items()
                for src in (ref if isinstance(ref, list) else [ref])]


def _config_error(exc: ValidationError) -> tuple[str, tuple[str | int, ...]]:
    err = exc.errors()[0]
    return err["msg"], tuple(err["loc"])


class Graph:
    """Build with `add(name, type, config, inputs)`; `validate()` runs at the first `run`.

    Example:
        >>> g = Graph()
        >>> g.add("samples", "best_of_n", {"n": 4}, {"problem": "problem"})
        >>> g.add("vote", "majority", {}, {"candidates": "samples.candidates"})
        >>> g.set_output("vote")
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeSpec] = {}
        self.output: Source | None = None
        self._dag: nx.DiGraph | None = None

    def add(self, name: str, node_type: str, config: Mapping[str, Any] | BaseModel | None = None,
            inputs: Mapping[str, str | list[str]] | None = None) -> "Graph":
        if name in self.nodes:
            raise GraphError(f"node {name!r} is defined twice", ("nodes", name))
        if name == PROBLEM:
            raise GraphError(f"{PROBLEM!r} is reserved for the run's input", ("nodes", name))
        try:
            nt = get_node_type(node_type)
        except KeyError as exc:
            raise GraphError(str(exc.args[0]), ("nodes", name, "type")) from None
        if isinstance(config, BaseModel):
            cfg = config
        else:
            try:
                cfg = nt.config_model.model_validate(dict(config or {}))
            except ValidationError as exc:
                msg, loc = _config_error(exc)
                raise GraphError(msg, ("nodes", name, "params", *loc)) from None
        spec = NodeSpec(name, nt, cfg, streaming=frozenset(getattr(cfg, "stream_inputs", ())))
        for port, ref in (inputs or {}).items():
            if port not in nt.inputs:
                raise GraphError(f"node type {nt.name!r} has no input {port!r} "
                                 f"(inputs: {', '.join(nt.inputs)})", ("nodes", name, "inputs", port))
            path = ("nodes", name, "inputs", port)
            if isinstance(ref, (list, tuple)):
                if not ref:
                    raise GraphError("an input list needs at least one source", path)
                spec.inputs[port] = [self._parse_ref(r, port, (*path, i))
                                     for i, r in enumerate(ref)]
            else:
                spec.inputs[port] = self._parse_ref(ref, port, path)
        self.nodes[name] = spec
        self._dag = None
        return self

    def set_output(self, ref: str) -> "Graph":
        self.output = self._parse_ref(ref, "answer", ("output",))
        self._dag = None
        return self

    @staticmethod
    def _parse_ref(ref: str, port: str, path: tuple[str | int, ...]) -> Source:
        if not isinstance(ref, str) or not ref:
            raise GraphError(f"an input must name 'problem' or 'node.port', got {ref!r}", path)
        if ref == PROBLEM:
            return Source(PROBLEM, PROBLEM)
        node, _, out_port = ref.partition(".")
        return Source(node, out_port or "")

    def _resolve_port(self, src: Source, want: str, path: tuple[str | int, ...]) -> Source:
        """Fill an omitted output port: the one named like the input, else the only one of its type."""
        if src.node == PROBLEM or src.port:
            return src
        outputs = self.nodes[src.node].type.outputs
        if want in outputs:
            return Source(src.node, want)
        if len(outputs) == 1:
            return Source(src.node, next(iter(outputs)))
        raise GraphError(f"node {src.node!r} has several outputs ({', '.join(outputs)}): "
                         f"name one as '{src.node}.PORT'", path)

    def validate(self) -> nx.DiGraph:
        """Check references, port types and cycles; return the dependency DAG."""
        if self._dag is not None:
            return self._dag
        dag = nx.DiGraph()
        dag.add_nodes_from(self.nodes)
        for name, spec in self.nodes.items():
            nt = spec.type
            for port, want_type in nt.inputs.items():
                path = ("nodes", name, "inputs", port)
                if port not in spec.inputs:
                    if port in nt.optional_inputs:
                        continue
                    if want_type == "problem":   # the run's input is the natural default
                        spec.inputs[port] = Source(PROBLEM, PROBLEM)
                        continue
                    raise GraphError(f"node {name!r} is missing its input {port!r} ({want_type})",
                                     path)
                ref = spec.inputs[port]
                resolved = [self._check_source(name, port, want_type, src, path, dag)
                            for src in (ref if isinstance(ref, list) else [ref])]
                spec.inputs[port] = resolved if isinstance(ref, list) else resolved[0]
        try:
            cycle = nx.find_cycle(dag)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            loop = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            raise GraphError(f"the graph has a cycle: {loop}", ("nodes", cycle[0][0], "inputs"))
        if not self.nodes:
            raise GraphError("the graph has no nodes", ("nodes",))
        if self.output is None:   # default: the single sink
            sinks = [n for n in dag.nodes if dag.out_degree(n) == 0]
            if len(sinks) != 1:
                raise GraphError(f"name the output node (sinks: {', '.join(sinks)})", ("output",))
            self.output = Source(sinks[0], "")
        if self.output.node not in self.nodes:
            raise GraphError(f"output names a missing node {self.output.node!r}", ("output",))
        if not self.output.port:
            outs = self.nodes[self.output.node].type.outputs
            port = "answer" if "answer" in outs else next(iter(outs))
            self.output = Source(self.output.node, port)
        self._dag = dag
        return dag

    def _check_source(self, name: str, port: str, want_type: str, src: Source,
                      path: tuple[str | int, ...], dag: nx.DiGraph) -> Source:
        if src.node != PROBLEM and src.node not in self.nodes:
            raise GraphError(f"node {name!r} input {port!r} names a missing node "
                             f"{src.node!r}", path)
        src = self._resolve_port(src, port, path)
        have_type = ("problem" if src.node == PROBLEM
                     else self.nodes[src.node].type.outputs.get(src.port))
        if have_type is None:
            raise GraphError(f"node {src.node!r} has no output {src.port!r} (outputs: "
                             f"{', '.join(self.nodes[src.node].type.outputs)})", path)
        if "any" not in (want_type, have_type) and want_type != have_type:
            raise GraphError(f"port type mismatch: {src.node}.{src.port} gives "
                             f"{have_type} but {name}.{port} takes {want_type}", path)
        if src.node != PROBLEM:
            dag.add_edge(src.node, name)
        return src

    def to_mermaid(self) -> str:
        self.validate()
        lines = ["flowchart LR", "  problem([problem])"]
        for name, spec in self.nodes.items():
            lines.append(f"  {name}[\"{name}<br/>{spec.type.name}\"]")
        for name, spec in self.nodes.items():
            for port, src in spec.sources():
                lines.append(f"  {src.node} -->|{port}| {name}")
        return "\n".join(lines)
