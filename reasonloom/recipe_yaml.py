"""YAML with positions: every mapping key and value keeps its line and column, so a recipe
error can point at `FILE:LINE:COL`."""
from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[str | int, ...]
SAFE_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
MAX_VALUES = 100_000   # a recipe has hundreds; an alias bomb has billions
MAX_DEPTH = 100        # a recipe nests ~6 deep; PyYAML's composer recurses once per level
MAX_CHARS = 1 << 20    # 1 MiB of YAML
MAX_INT_DIGITS = 30    # seeds and token counts; 5,000 digits is an attack, not a setting


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.line, self.col = line, col


def load_with_positions(text: str) -> tuple[Any, dict[Path_, tuple[int, int]]]:
    """Parse YAML safely; return the data and a map path -> (line, col), 1-based."""
    if len(text) > MAX_CHARS:
        raise YamlSyntaxError(f"YAML: over {MAX_CHARS} characters", 1, 1)
    try:
        _check_depth(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(f"YAML syntax: {problem}", line, col) from None
    positions: dict[Path_, tuple[int, int]] = {}
    visited = [0]

    active: set[int] = set()   # nodes being walked: an alias back to one is a cycle

    def walk(node: yaml.Node | None, path: Path_) -> Any:
        if node is None:
            return None
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if id(node) in active:
            raise YamlSyntaxError("YAML: a recursive alias (an anchor used inside itself)",
                                  line, col)
        positions.setdefault(path, (line, col))
        visited[0] += 1
        if visited[0] > MAX_VALUES:   # aliases of aliases ("billion laughs") expand forever
            raise YamlSyntaxError(f"YAML: more than {MAX_VALUES} values once aliases are "
                                  f"expanded", line, col)
        # Recipes are data: a tag on a mapping or a list (`!!python/object/apply:os.system
        # {...}`) is refused, not read as a plain dict. Scalars go through SafeLoader below,
        # which refuses every tag it has no safe constructor for.
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in SAFE_TAGS:
            raise YamlSyntaxError(f"YAML: tag {node.tag!r} is not allowed in a recipe "
                                  f"(recipes are data)", line, col)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            active.add(id(node))
            try:
                return walk_collection(node, path)
            finally:
                active.discard(id(node))
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_DIGITS:
            raise YamlSyntaxError(f"YAML: an integer of {len(node.value)} characters (at most "
                                  f"{MAX_INT_DIGITS})", line, col)
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except (ValueError, OverflowError) as exc:
            raise YamlSyntaxError(f"YAML: {str(exc)[:120]}", line, col) from None
        finally:
            loader.dispose()

    def walk_collection(node: yaml.Node, path: Path_) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, (*path, i)) for i, item in enumerate(node.value)]
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlSyntaxError("YAML: a key must be a plain name, not a list or a "
                                      "mapping", *where)
            key = key_node.value
            if key in out:
                first = positions[(*path, key)]
                raise YamlSyntaxError(f"YAML: duplicate key {key!r} (first at line {first[0]}, "
                                      f"column {first[1]})", *where)
            positions[(*path, key)] = where
            out[key] = walk(value_node, (*path, key))
            positions[(*path, key)] = where
        return out

    try:
        data = walk(root, ())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(f"YAML: {getattr(exc, 'problem', exc)}", line, col) from None
    return data, positions


def _check_depth(text: str) -> None:
    """Refuse deep nesting from the event stream (iterative) before the composer recurses."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise YamlSyntaxError(f"YAML: nested more than {MAX_DEPTH} levels deep",
                                      mark.line + 1, mark.column + 1)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def position_of(positions: dict[Path_, tuple[int, int]], path: Path_) -> tuple[int, int]:
    """The position of `path`, or of its nearest ancestor that the file has."""
    path = tuple(path)
    while path and path not in positions:
        path = path[:-1]
    return positions.get(path, (1, 1))
