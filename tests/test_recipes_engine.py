"""Every shipped recipe runs end to end on the embedded engine (the session's one engine),
shrunk through `--set` overrides: fewer samples, loops and tokens than shipped, the same graph,
roles and node types. That the overrides still validate is checked without an engine."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from reasonloom.orchestrator.types import Problem
from reasonloom.recipe import load_recipe
from tests.conftest import on_test_engine

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DOCUMENT = " ".join(f"Record {i}: the code for locker {i} is {1000 + 7 * i}." for i in range(40))
# Upper bounds on a node's size parameters for a smoke run (a parameter is never raised).
SMOKE_CAPS = {"n": 3, "loops": 2, "max_tokens": 32, "worker_max_tokens": 32,
              "manager_max_tokens": 32, "judge_max_tokens": 8, "max_workers": 4,
              "particles": 2, "max_steps": 2, "step_tokens": 16, "warmup": 2}


def problem_for(name: str) -> Problem:
    if name == "long_context":
        return Problem.from_text("What is the code for locker 37?", context=DOCUMENT, id=name)
    return Problem.from_text("Sam has 4 marbles and finds 3 more. How many marbles does Sam "
                             "have?", gold="7", id=name)


def capped(params: Any) -> Any:
    """`params` with every size parameter in SMOKE_CAPS lowered to its cap, at any depth."""
    if isinstance(params, dict):
        return {key: min(value, SMOKE_CAPS[key]) if key in SMOKE_CAPS
                and isinstance(value, int) and not isinstance(value, bool) else capped(value)
                for key, value in params.items()}
    if isinstance(params, list):
        return [capped(item) for item in params]
    return params


def smoke_overrides(path: Path) -> list[str]:
    """`--set nodes.NAME.params=...` for each node whose parameters the caps lower."""
    nodes = yaml.safe_load(path.read_text())["nodes"]
    return [f"nodes.{name}.params={json.dumps(capped(node.get('params', {})))}"
            for name, node in nodes.items()
            if capped(node.get("params", {})) != node.get("params", {})]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_smoke_overrides_shrink_every_recipe_and_still_validate(path):
    overrides = smoke_overrides(path)
    assert overrides, f"{path.name}: nothing to shrink (add its size parameter to SMOKE_CAPS)"
    load_recipe(path, overrides)


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_runs_on_the_embedded_engine(path, arun):
    recipe = on_test_engine(path, smoke_overrides(path))
    result = arun(recipe.arun(problem_for(path.stem)))
    assert result.status == "ok" and result.answer is not None and result.answer.text.strip()
    summary = result.summary_json()
    usage = summary["usage"]
    assert usage["total"]["calls"] > 0 and usage["total"]["completion_tokens"] > 0
    assert set(usage["by_model"]) <= set(recipe.spec.models)
    assert set(usage["by_node"]) <= set(recipe.spec.nodes)
    assert sum(u["calls"] for u in usage["by_node"].values()) == usage["total"]["calls"]
    assert usage["total"]["cost_usd"] > 0
