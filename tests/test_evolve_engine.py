"""Squeeze Evolve against the real embedded engine (two priced roles on one SmolLM2)."""
from __future__ import annotations

import random

import pytest

from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Problem

pytestmark = pytest.mark.engine


def test_two_roles_recombine_and_every_confidence_read_is_a_prefill_score(embedded_roles, arun):
    rng = random.Random(7)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    problem = Problem.from_text(f"What is {a} + {b}?", gold=str(a + b))
    g = Graph().add("evolve", "evolve", {
        "population": 4, "group_size": 2, "loops": 2, "cut_points": [50],
        "scorer": "cheap", "temperature": 0.7, "max_tokens": 40,
    }).set_output("evolve")
    events = []
    result = arun(run(g, problem, embedded_roles, seed=3, subscribers=[events.append]))
    calls = [e.data for e in events if e.kind == "call_finished"]

    details = result.answer.details
    assert details["fitness"] == "confidence"
    assert details["routing"]["strong"] > 0 and details["routing"]["cheap"] > 0
    loop2 = details["loops"][1]
    assert len(loop2["groups"]) == 4 and all(len(set(g)) == 2 for g in loop2["groups"])
    # the least confident groups went to the strong role
    strong = [f for f, r in zip(loop2["fitness"], loop2["routes"]) if r == "strong"]
    cheap = [f for f, r in zip(loop2["fitness"], loop2["routes"]) if r == "cheap"]
    assert max(strong) <= min(cheap)
    # recombinations: one generate call per group, by the role it was routed to
    recombined = [c["role"] for c in calls if c["call_kind"] == "generate"][1:]
    assert sorted(recombined) == sorted(loop2["routes"])
    scores = [c for c in calls if c["call_kind"] == "score"]
    scored_members = {i for grp in loop2["groups"] for i in grp}
    assert len(scores) >= len(scored_members)
    assert all(c["completion_tokens"] == 0 and c["prompt_tokens"] > 0 and c["role"] == "cheap"
               for c in scores)
    assert len(result.answer.candidates) == 4
    assert result.usage.by_model["strong"].calls >= 1 + details["routing"]["strong"]
