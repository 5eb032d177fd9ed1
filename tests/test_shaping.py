"""Prefix-aware request shaping (reasonloom/prompts.py): the canonical layout, the run-level
`shaping` switch, n-sampling, and on the real engine, prompt tokens served from the cache."""
from __future__ import annotations

import asyncio

import pytest

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.context import SHAPING, RunContext, RunState
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Candidate, Problem
from reasonloom.recipe import Recipe
from reasonloom.prompts import canonical_order, with_candidates
from reasonloom.strategies.tournament import TournamentConfig, v1_tournament

PROBLEM = Problem.from_text("How many legs do 3 spiders have?")


class Recording(ScriptedBackend):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GenerateRequest] = []

    async def generate(self, req: GenerateRequest):
        self.requests.append(req)
        return await super().generate(req)


def roles_on(backend) -> Roles:
    return Roles({"strong": Role(RoleSpec(name="strong"), backend)}, order=["strong"])


def test_layout_puts_the_problem_before_candidates_and_the_instruction_last():
    on = with_candidates(PROBLEM, ["first", "second"], "Pick one.", shaping=True)[-1].content
    off = with_candidates(PROBLEM, ["first", "second"], "Pick one.", shaping=False)[-1].content
    question = PROBLEM.question
    assert on.index(question) < on.index("first") < on.index("second") < on.index("Pick one.")
    assert off.index("first") < off.index(question) < off.index("Pick one.")
    # on: two calls that show different candidates share everything up to the candidates
    other = with_candidates(PROBLEM, ["third"], "Pick one.", shaping=True)[-1].content
    assert other.startswith(on[:on.index("first")])


def test_canonical_order_sorts_shared_members_only_when_shaping():
    assert canonical_order((5, 1, 3), shaping=True) == [1, 3, 5]
    assert canonical_order((5, 1, 3), shaping=False) == [5, 1, 3]


def test_run_level_switch_reaches_prompt_helpers_and_sampling():
    def graph() -> Graph:
        return Graph().add("s", "best_of_n", {"n": 4, "max_tokens": 8},
                           {"problem": "problem"}).set_output("s")

    on, off = Recording(), Recording()
    asyncio.run(run(graph(), PROBLEM, roles_on(on), seed=0))
    result = asyncio.run(run(graph(), PROBLEM, roles_on(off), seed=0, shaping=False))
    assert [r.n for r in on.requests] == [4]                 # one n-sampling request
    assert [r.n for r in off.requests] == [1, 1, 1, 1]       # n separate requests
    assert len({r.seed for r in off.requests}) == 4          # each its own seed
    assert result.usage.total.calls == 4


def test_shaping_off_evolve_prompts_show_candidates_first():
    graph = Graph().add("e", "evolve", {"population": 4, "group_size": 3, "loops": 2,
                                        "max_tokens": 8}, {"problem": "problem"}).set_output("e")
    seen = {}
    for shaping in (True, False):
        backend = Recording()
        asyncio.run(run(graph, PROBLEM, roles_on(backend), seed=0, shaping=shaping))
        recombine = [r for r in backend.requests if "### Solution 1" in r.messages[-1].content]
        assert len(recombine) == 4
        seen[shaping] = [r.messages[-1].content for r in recombine]
    assert all(t.startswith(PROBLEM.question) for t in seen[True])
    assert all(t.startswith("### Solution 1") for t in seen[False])


def test_recipe_shaping_key_reads_on_and_off():
    text = """
models:
  strong: {backend: scripted}
nodes:
  s: {type: best_of_n, params: {n: 2, max_tokens: 8}, inputs: {problem: problem}}
output: s
shaping: %s
"""
    assert Recipe.from_text(text % "on").spec.shaping is True
    recipe = Recipe.from_text(text % "off")
    assert recipe.spec.shaping is False
    backend = Recording()
    asyncio.run(recipe.arun("What is 2 + 2?", roles=roles_on(backend)))
    assert [r.n for r in backend.requests] == [1, 1]


# -- real engine -----------------------------------------------------------------------------
LONG_PROBLEM = Problem.from_text(
    "A farmer keeps chickens, cows and spiders on a farm by a river. Every morning she counts "
    "the animals before feeding them: the chickens first, then the cows in the barn, then the "
    "spiders in the shed, which she counts by the webs in the corners. This morning there were "
    "4 chickens, 3 cows and 2 spiders, and no animal was missing or hiding. Chickens have two "
    "legs, cows have four legs and spiders have eight legs. How many legs are there on the farm "
    "in total this morning? Explain briefly, then give the number.")


@pytest.mark.engine
def test_shaping_serves_the_shared_problem_prefix_from_the_engine_cache(embedded, arun):
    roles = roles_on(embedded)
    cands = [Candidate(text=f"Counting gives {n} legs. The answer is {n}.") for n in
             (36, 40, 44, 48)]

    async def tournament(shaping: bool):
        # the node itself on fixed candidates, so both arms judge the same texts
        state = RunState(run_id=f"shaping-{shaping}", seed=0, roles=roles, shaping=shaping)
        token = SHAPING.set(shaping)
        try:
            await v1_tournament({"problem": LONG_PROBLEM, "candidates": cands},
                                TournamentConfig(budget=6, reasoning=False, max_tokens=4),
                                RunContext(state, "t"))
        finally:
            SHAPING.reset(token)
        return state.ledger.report().total

    on = arun(tournament(True))
    off = arun(tournament(False))
    assert on.calls == off.calls == 6
    assert off.prompt_tokens == pytest.approx(on.prompt_tokens, rel=0.02)   # same text
    assert on.cached_prompt_tokens > off.cached_prompt_tokens
    assert on.cached_prompt_tokens >= 5 * 64    # the problem prefix, on every call but the first
