"""Every shipped recipe runs as shipped on the embedded engine (the session's one engine)."""
from __future__ import annotations

from pathlib import Path

import pytest

from reasonloom.orchestrator.types import Problem
from tests.conftest import on_test_engine

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DOCUMENT = " ".join(f"Record {i}: the code for locker {i} is {1000 + 7 * i}." for i in range(40))


def problem_for(name: str) -> Problem:
    if name == "long_context":
        return Problem.from_text("What is the code for locker 37?", context=DOCUMENT, id=name)
    return Problem.from_text("Sam has 4 marbles and finds 3 more. How many marbles does Sam "
                             "have?", gold="7", id=name)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_runs_on_the_embedded_engine(path, arun):
    recipe = on_test_engine(path)
    result = arun(recipe.arun(problem_for(path.stem)))
    assert result.status == "ok" and result.answer is not None and result.answer.text.strip()
    summary = result.summary_json()
    usage = summary["usage"]
    assert usage["total"]["calls"] > 0 and usage["total"]["completion_tokens"] > 0
    assert set(usage["by_model"]) <= set(recipe.spec.models)
    assert set(usage["by_node"]) <= set(recipe.spec.nodes)
    assert sum(u["calls"] for u in usage["by_node"].values()) == usage["total"]["calls"]
    assert usage["total"]["cost_usd"] > 0
