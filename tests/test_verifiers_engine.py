"""V1 and Weaver end to end on the real embedded engine (small N, few tokens)."""
from __future__ import annotations

import asyncio
import math

import pytest

from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Problem

pytestmark = pytest.mark.engine


def addition_problems(count: int) -> list[Problem]:
    """One-digit additions from reasoning-gym (negative terms skipped)."""
    import reasoning_gym

    data = reasoning_gym.create_dataset("basic_arithmetic", size=40, seed=3, min_terms=2,
                                        max_terms=2, min_digits=1, max_digits=1,
                                        operators=("+",))
    items = [x for x in data if "-" not in x["question"]][:count]
    return [Problem.from_text(x["question"], id=i, gold=str(x["answer"]))
            for i, x in enumerate(items)]


def selection_graph() -> Graph:
    g = Graph()
    g.add("samples", "best_of_n", {"n": 4, "max_tokens": 24, "temperature": 0.8},
          {"problem": "problem"})
    g.add("v1", "v1_tournament", {"judge": "strong", "reasoning": False, "max_tokens": 16},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.add("weaver", "weaver", {"judge": "strong", "scorer": "cheap", "top_k": 2},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.set_output("v1")
    return g


def test_v1_and_weaver_select_from_real_samples_within_budget(embedded_roles, arun):
    problems = addition_problems(3)
    assert len(problems) == 3

    async def all_runs():
        return await asyncio.gather(*(run(selection_graph(), p, embedded_roles, seed=i)
                                      for i, p in enumerate(problems)))

    results = arun(all_runs())
    parsed = 0
    for result in results:
        samples = result.outputs["samples"]["candidates"]
        texts = {c.text for c in samples}
        v1 = result.outputs["v1"]["answer"]
        assert v1.text in texts
        assert v1.details["comparisons"] <= v1.details["budget"] == 12
        assert min(v1.details["degree"]) >= 2
        assert result.usage.by_node["v1"].calls == v1.details["comparisons"]
        parsed += v1.details["comparisons"] - v1.details["unparsed"]

        weaver = result.outputs["weaver"]
        assert weaver["answer"].text in texts
        assert len(weaver["candidates"]) == 2
        assert all(0.0 <= c.score <= 1.0 for c in weaver["candidates"])
        # the judge's P(yes) and the log-probs are prefill-only "score" calls
        assert result.usage.by_node["weaver"].completion_tokens == 0
        assert result.usage.by_node["weaver"].calls == 4 * 3

        for cand in weaver["candidates"]:   # the judge's P(yes) is a real probability
            p_yes = cand.details["verifier_scores"]["judge"]
            assert 0.0 < p_yes < 1.0 and not math.isnan(p_yes)
            assert cand.details["verifier_scores"]["logprob"] < 0.0
    assert parsed > 0   # the real judge's ratings were read, not only defaulted
