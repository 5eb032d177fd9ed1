"""YAML with positions: every mapping key and value keeps its line and column, so a recipe
error can point at `FILE:LINE:COL`."""
from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[str | int, ...]
SAFE_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
MAX_VALUES = 100_000   # a recipe has hundreds; an alias bomb has billions


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.line, self.col = line, col


def load_with_positions(text: str) -> tuple[Any, dict[Path_, tuple[int, int]]]:
    """Parse YAML safely; return the data and a map path -> (line, col), 1-based."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(f"YAML syntax: {problem}", line, col) from None
    positions: dict[Path_, tuple[int, int]] = {}
    visited = [0]

    def walk(node: yaml.Node | None, path: Path_) -> Any:
        if node is None:
            return None
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
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
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = key_node.value
                out[key] = walk(value_node, (*path, key))
                positions[(*path, key)] = (key_node.start_mark.line + 1,
                                           key_node.start_mark.column + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, (*path, i)) for i, item in enumerate(node.value)]
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        finally:
            loader.dispose()

    try:
        data = walk(root, ())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlSyntaxError(f"YAML: {getattr(exc, 'problem', exc)}", line, col) from None
    return data, positions


def position_of(positions: dict[Path_, tuple[int, int]], path: Path_) -> tuple[int, int]:
    """The position of `path`, or of its nearest ancestor that the file has."""
    path = tuple(path)
    while path and path not in positions:
        path = path[:-1]
    return positions.get(path, (1, 1))
