"""Graceful degradation: declared-optional calls may fail; the result says what was dropped."""
from __future__ import annotations

import asyncio

import pytest

from reasonloom.backends.errors import BadRequest
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.result import RunFailed
from reasonloom.orchestrator.roles import RetryPolicy, Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.seeds import derive_seed


def _roles(bad_samples: set[int]) -> Roles:
    bad_seeds = {derive_seed(0, "vote", "samples", i) for i in bad_samples}

    def faults(req):
        return BadRequest("this sample's prompt is rejected") if req.seed in bad_seeds else None

    backend = ScriptedBackend(supports_n=False, faults=faults)
    spec = RoleSpec(name="strong", retry=RetryPolicy(base_delay_s=0.001))
    return Roles({"strong": Role(spec, backend)})


def test_a_strategy_continues_with_the_samples_it_has_and_reports_the_dropped_one():
    g = Graph().add("vote", "self_consistency", {"n": 8, "may_fail": 1})
    result = asyncio.run(run(g, "2+2?", _roles({3})))
    assert result.answer.details["samples"] == 7
    assert [d["call_key"] for d in result.dropped] == ["samples/3"]
    assert "BadRequest" in result.dropped[0]["error"]


def test_more_failures_than_declared_fail_the_node():
    g = Graph().add("vote", "self_consistency", {"n": 8, "may_fail": 1})
    with pytest.raises(RunFailed, match="2 of 8 calls failed, 1 allowed"):
        asyncio.run(run(g, "2+2?", _roles({1, 5})))
