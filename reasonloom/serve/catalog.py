"""The recipes a server offers as models, and how a request's parameters reach a recipe.

Request parameters become recipe overrides on the node that writes the answer (the "final
stage"): the output node's own field, or the field of its `aggregator` sub-stage (MoA). For
`max_tokens` a selecting output node (majority, a judge) passes the cap on to the nodes that
generate its candidates, since the answer it returns is one of their texts. A recipe with no
such field cannot honour the parameter, and the request gets a 400 that says so.
"""
from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel

from reasonloom.orchestrator.budget import BudgetSpec
from reasonloom.orchestrator.graph import PROBLEM
from reasonloom.orchestrator.roles import Roles
from reasonloom.recipe import Recipe, RecipeError
from reasonloom.serve.protocol import ApiError, ChatRequest

# A node's own last stage, where its answer is written (MoA's aggregator).
SUBSTAGES = ("aggregator",)
_VARIANTS_KEPT = 64


def _param_path(config_model: type[BaseModel], name: str) -> str | None:
    fields = config_model.model_fields
    if name in fields:
        return name
    for sub in SUBSTAGES:
        annotation = fields[sub].annotation if sub in fields else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
                and name in annotation.model_fields:
            return f"{sub}.{name}"
    return None


def final_stage_paths(recipe: Recipe, name: str, through_selectors: bool) -> list[str]:
    """Override paths (`nodes.N.params.X`) that set `name` on the answer's final stage;
    raises ApiError(400) when the recipe has none."""
    graph = recipe.graph
    assert graph.output is not None
    paths: list[str] = []
    todo, seen = [graph.output.node], set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        spec = graph.nodes[node]
        path = _param_path(spec.type.config_model, name)
        if path is not None:
            paths.append(f"nodes.{node}.params.{path}")
            continue
        upstream = [src.node for src in spec.inputs.values() if src.node != PROBLEM]
        if not through_selectors or not upstream:
            raise ApiError(400, f"recipe {recipe.name!r} cannot honour {name}: node {node!r} "
                           f"({spec.type.name}) has no {name} parameter", param=name,
                           code="unsupported_parameter")
        todo.extend(upstream)
    return sorted(paths)


def tighter_budget(recipe: BudgetSpec, request: BudgetSpec | None) -> BudgetSpec:
    """A request may tighten the recipe's budget, never loosen it."""
    if request is None:
        return recipe
    merged = {}
    for name in ("tokens", "dollars", "seconds"):
        values = [v for v in (getattr(recipe, name), getattr(request, name)) if v is not None]
        merged[name] = min(values) if values else None
    return BudgetSpec(**merged)


@dataclass
class ServedRecipe:
    """One recipe file served as a model; variants with request overrides are cached."""

    name: str
    path: Path
    text: str
    recipe: Recipe
    roles: Roles
    _variants: OrderedDict = field(default_factory=OrderedDict)
    _paths: dict[tuple[str, bool], list[str] | ApiError] = field(default_factory=dict)

    @property
    def output_node(self) -> str:
        assert self.recipe.graph.output is not None
        return self.recipe.graph.output.node

    def _stage_paths(self, name: str, through_selectors: bool) -> list[str]:
        key = (name, through_selectors)
        if key not in self._paths:
            try:
                self._paths[key] = final_stage_paths(self.recipe, name, through_selectors)
            except ApiError as exc:
                self._paths[key] = exc
        found = self._paths[key]
        if isinstance(found, ApiError):
            raise found
        return found

    def overrides_for(self, req: ChatRequest) -> tuple[str, ...]:
        out: list[str] = []
        wanted = (("max_tokens", req.answer_tokens, True), ("temperature", req.temperature, False),
                  ("top_p", req.top_p, False))
        for name, value, through_selectors in wanted:
            if value is not None:
                out += [f"{p}={json.dumps(value)}" for p in self._stage_paths(name,
                                                                              through_selectors)]
        return tuple(out)

    def for_request(self, req: ChatRequest) -> Recipe:
        overrides = self.overrides_for(req)
        if not overrides:
            return self.recipe
        if overrides in self._variants:
            self._variants.move_to_end(overrides)
            return self._variants[overrides]
        try:
            variant = Recipe.from_text(self.text, str(self.path), overrides)
        except RecipeError as exc:   # e.g. a value the node's config rejects
            raise ApiError(400, f"recipe {self.name!r} rejects the request: {exc.message}",
                           param=exc.path.rsplit(".", 1)[-1]) from None
        self._variants[overrides] = variant
        while len(self._variants) > _VARIANTS_KEPT:
            self._variants.popitem(last=False)
        return variant

    def budget_for(self, req: ChatRequest) -> BudgetSpec:
        return tighter_budget(self.recipe.spec.budget, req.x_reasonloom_budget)


class Catalog:
    """Every `*.yaml` recipe of a folder, by file name without `.yaml`."""

    def __init__(self, recipes: Iterable[ServedRecipe]):
        self.recipes = {r.name: r for r in recipes}

    def get(self, name: str) -> ServedRecipe:
        if name not in self.recipes:
            raise ApiError(404, f"the model {name!r} does not exist (models: "
                           f"{', '.join(sorted(self.recipes)) or 'none'})", param="model",
                           code="model_not_found")
        return self.recipes[name]

    @classmethod
    def from_dir(cls, folder: str | Path, warn=None,
                 server_keys: Iterable[str] = ()) -> "Catalog":
        """Loads every recipe; one that does not load is skipped with one line on stderr, and
        so is one whose role would send the server's own key upstream (under another name)."""
        warn = warn or (lambda line: print(line, file=sys.stderr))
        server_keys = set(server_keys)
        served = []
        for path in sorted(Path(folder).glob("*.y*ml")):
            if path.suffix not in (".yaml", ".yml"):
                continue
            try:
                recipe = Recipe.load(path)
                reused = _reuses_server_key(recipe, server_keys)
                if reused:
                    warn(f"reasonloom serve: skipping {path}: models.{reused}.api_key_env holds "
                         f"the server's own key")
                    continue
                roles = recipe.build_roles()
            except RecipeError as exc:
                warn(f"reasonloom serve: skipping {exc}")
                continue
            except Exception as exc:   # a backend that cannot be built (missing key, ...)
                warn(f"reasonloom serve: skipping {path}: {type(exc).__name__}: {exc}")
                continue
            served.append(ServedRecipe(path.stem, path, path.read_text(encoding="utf-8"),
                                       recipe, roles))
        return cls(served)


def _reuses_server_key(recipe: Recipe, server_keys: set[str]) -> str | None:
    """The role whose key variable holds one of the server's keys, if any."""
    for name, role in recipe.spec.models.items():
        names = [role.api_key_env, *(e.api_key_env for e in role.endpoints or ())]
        if any(env and os.environ.get(env) in server_keys for env in names):
            return name
    return None
