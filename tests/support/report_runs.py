"""Recorded runs for the report's tests: one small graph per strategy that has its own report
view, on scripted backends whose texts make each decision visible (a judge that prefers one
answer, workers that find a code in one chunk). `record_run` runs one with a run file, as
`reasonloom run` does, so `reasonloom report RUN_ID` can read it back; `bench_folder` makes
a small bench folder."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Callable

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.cli.main import main
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.result import RunFailed, RunResult
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Problem
from reasonloom.strategies.chunked_prompts import MANAGER_SYSTEM


def ranked_roles(backend: ScriptedBackend, names=("strong",), **own: ScriptedBackend) -> Roles:
    """Ranked roles, each cheaper than the one before, on `backend` unless given their own."""
    return Roles({n: Role(RoleSpec(name=n, price_in_per_m=1.0 / (i + 1),
                                   price_out_per_m=2.0 / (i + 1)), own.get(n, backend))
                  for i, n in enumerate(names)}, order=list(names))


def judge_of_sevens(req: GenerateRequest, index: int) -> str:
    """Samples answer 7, 3, 5, 7; as a pairwise judge it rates a solution saying 7 a 9, any
    other a 2 (V1's prompt asks for 'Rating A: x' and 'Rating B: y', A's label pre-filled)."""
    body = req.messages[-1].content
    if "### Solution A" not in body:
        return f"The answer is {[7, 3, 5, 7][index % 4]}."
    a, b = re.split(r"### Solution B", body.split("### Solution A", 1)[1])[:2]

    def rating(solution: str) -> int:
        return 9 if "answer is 7" in solution else 2

    return f" {rating(a)}\nRating B: {rating(b)}"


def _secret_reader(req: GenerateRequest, index: int) -> str:
    """A chunked worker reports the code only where its part shows it; the manager repeats it."""
    system, user = req.messages[0].content, req.messages[-1].content
    if system == MANAGER_SYSTEM:
        match = re.search(r"code is (\d+)", user)
        return f"The code is {match.group(1)}." if match else "unknown"
    match = re.search(r"secret code is (\d+)", user.split("Part ", 1)[1])
    return f"the secret code is {match.group(1)}" if match else "not found"


def _document(lines: int = 40, needle: int = 39) -> str:
    text = [f"Line {i}: the weather was mild and nothing happened." for i in range(lines)]
    text[needle] = f"Line {needle}: the secret code is 7391."
    return "\n".join(text)


def v1_run() -> tuple[Graph, Problem | str, Roles]:
    g = Graph()
    g.add("samples", "best_of_n", {"n": 4, "max_tokens": 16}, {"problem": "problem"})
    g.add("tournament", "v1_tournament", {"budget_multiplier": 2, "reasoning": False},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.set_output("tournament")
    return g, "What is 3 + 4?", ranked_roles(ScriptedBackend(judge_of_sevens))


def weaver_run() -> tuple[Graph, Problem | str, Roles]:
    g = Graph()
    g.add("samples", "best_of_n", {"n": 6, "max_tokens": 16}, {"problem": "problem"})
    g.add("weaver", "weaver", {"top_k": 3},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.set_output("weaver")
    backend = ScriptedBackend(lambda req, i: f"The answer is {[4, 4, 4, 9, 4, 2][i % 6]}.")
    return g, "What is 2 + 2?", ranked_roles(backend)


def evolve_run() -> tuple[Graph, Problem | str, Roles]:
    g = Graph().add("evolve", "evolve", {
        "population": 4, "group_size": 2, "loops": 3, "roles": ["strong", "cheap"],
        "scorer": "cheap", "cut_points": [50], "max_tokens": 16}).set_output("evolve")
    return g, "What is 2 + 3?", ranked_roles(ScriptedBackend(), ("strong", "cheap"))


def moa_run() -> tuple[Graph, Problem | str, Roles]:
    g = Graph()
    g.add("moa", "moa", {"mode": "staircase", "first_chunk_tokens": 16, "system": None,
                         "layers": [[{"role": "cheap", "max_tokens": 64}] * 3],
                         "aggregator": {"role": "strong", "max_tokens": 32}},
          {"problem": "problem"})
    g.set_output("moa")
    # proposers stream 40 words slowly; the aggregator's short answer ends before they do, so
    # it is re-prompted once every proposal is complete (the staircase's last step)
    proposers = ScriptedBackend(lambda req, i: " ".join(["four"] * 39) + " The answer is 4.",
                                chunk_chars=5, chunk_delay_s=0.005)
    aggregator = ScriptedBackend(lambda req, i: "The answer is 4.")
    return g, "What is 2 + 2?", ranked_roles(proposers, ("strong", "cheap"), strong=aggregator)


def chunked_run() -> tuple[Graph, Problem | str, Roles]:
    g = Graph()
    g.add("reader", "chunked", {"chunk_tokens": 120, "overlap_tokens": 20},
          {"problem": "problem"})
    g.set_output("reader")
    problem = Problem.from_text("What is the secret code?", context=_document())
    return g, problem, ranked_roles(ScriptedBackend(_secret_reader))


def failing_run() -> tuple[Graph, Problem | str, Roles]:
    """The samples node fails (its backend refuses every call): the run fails."""
    from reasonloom.backends.errors import BackendError

    g = Graph()
    g.add("samples", "best_of_n", {"n": 2, "max_tokens": 8}, {"problem": "problem"})
    g.add("vote", "majority", {}, {"candidates": "samples.candidates"})
    g.set_output("vote")
    backend = ScriptedBackend(faults=lambda req: BackendError("the scripted backend is down"))
    return g, "What is 1 + 1?", ranked_roles(backend)


SCENARIOS: dict[str, Callable[[], tuple[Graph, Problem | str, Roles]]] = {
    "v1_tournament": v1_run, "weaver": weaver_run, "evolve": evolve_run, "moa": moa_run,
    "chunked": chunked_run}


def record_run(scenario: str | Callable, run_id: str) -> RunResult:
    """Run a scenario with its own run file (REASONLOOM_HOME decides where); a failed run's
    partial result is returned rather than raised."""
    build = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    graph, problem, roles = build()
    try:
        return asyncio.run(run(graph, problem, roles, cache="record", run_id=run_id,
                               recipe=getattr(build, "__name__", None)))
    except RunFailed as exc:
        return exc.result


SCRIPTED_RECIPE = """
seed: 0
models:
  strong: {backend: scripted, price_in_per_m: 1.0, price_out_per_m: 2.0}
nodes:
  samples: {type: best_of_n, params: {n: %d, max_tokens: 16}}
  vote: {type: majority, inputs: {candidates: samples.candidates}}
output: vote
"""


def bench_folder(tmp_path: Path) -> Path:
    """`reasonloom bench` of two scripted recipes (3 votes, 1 sample) on four problems."""
    for name, n in (("vote3", 3), ("vote1", 1)):
        (tmp_path / f"{name}.yaml").write_text(SCRIPTED_RECIPE % n)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"id": i, "question": f"{i} + 0 = ?",
                                          "answer": str(i)}) for i in range(4)))
    out = tmp_path / "bench"
    assert main(["bench", str(tmp_path / "vote3.yaml"), str(tmp_path / "vote1.yaml"),
                 "--dataset", str(data), "--out", str(out)]) == 0
    return out
