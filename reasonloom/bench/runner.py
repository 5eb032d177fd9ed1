"""Run recipes over benchmark items: concurrent problems under the recipes' own throttles,
one JSON line per finished problem (so a re-run with the same --out resumes), a summary."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from reasonloom.bench.datasets import Item
from reasonloom.bench.energy import EnergyMeter
from reasonloom.bench.graders import grade
from reasonloom.bench.stats import percentile, wilson_ci95


class ProblemResult(BaseModel):
    recipe: str
    id: str | int
    answer_text: str | None
    answer: str | None
    gold: str | None
    correct: bool
    usage: dict[str, Any]
    wall_s: float
    ttft_s: float | None
    status: str
    error: str | None = None


class RecipeSummary(BaseModel):
    accuracy: float
    ci95: tuple[float, float]
    problems: int
    mean_cost_usd: float              # what every call cost, cached ones at their price
    mean_tokens: float                # live and cached calls' tokens alike
    calls: float                      # mean model calls per problem
    cached_calls: float = 0.0         # of those, answered from a call cache
    mean_cached_cost_usd: float = 0.0     # the cached calls' share of mean_cost_usd
    p50_latency_s: float | None
    p90_latency_s: float | None
    joules_per_problem: float | None  # None: no energy counter on this machine
    accuracy_per_wh: float | None


def finished_ids(results_file: Path) -> set[tuple[str, str]]:
    done: set[tuple[str, str]] = set()
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue   # a line cut by a kill: that problem runs again
            done.add((row["recipe"], str(row["id"])))
    return done


def load_results(results_file: Path) -> list[ProblemResult]:
    rows = []
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            try:
                rows.append(ProblemResult.model_validate_json(line))
            except ValueError:
                continue
    return rows


async def run_problem(recipe, roles, item: Item, grader: str) -> ProblemResult:
    from reasonloom.orchestrator.budget import BudgetExceeded
    from reasonloom.orchestrator.result import RunFailed
    from reasonloom.orchestrator.types import Problem

    problem = Problem.from_text(item.question, id=item.id, context=item.context,
                                gold=item.answer)
    t0 = time.time()
    try:
        result = await recipe.arun(problem, roles=roles)
        status, error = "ok", None
    except BudgetExceeded as exc:
        result, status, error = exc.partial, "budget_exceeded", str(exc)
    except RunFailed as exc:
        result, status, error = exc.result, "failed", str(exc)
    answer = result.answer if result is not None else None
    text = answer.text if answer else None
    extracted = answer.answer if answer else None
    correct = False
    if text is not None and item.answer is not None:
        if item.checker is not None:   # reasoning-gym: the task's own checker
            correct = float(item.checker(extracted if extracted is not None else text)) >= 1.0
        else:
            correct = grade(grader, text, extracted, item.answer)
    usage = result.usage.model_dump(mode="json") if result is not None else {}
    return ProblemResult(recipe=recipe.name, id=item.id, answer_text=text, answer=extracted,
                         gold=item.answer, correct=correct, usage=usage,
                         wall_s=time.time() - t0, ttft_s=result.ttft_s if result else None,
                         status=status, error=error)


async def bench_recipe(recipe, items: list[Item], grader: str, concurrency: int,
                       results_file: Path, on_done: Callable[[ProblemResult], None]
                       ) -> float:
    """Runs the items not yet in `results_file`; returns the wall seconds spent."""
    done = finished_ids(results_file)
    todo = [it for it in items if (recipe.name, str(it.id)) not in done]
    roles = recipe.build_roles()
    gate = asyncio.Semaphore(concurrency)
    t0 = time.time()

    async def one(item: Item) -> None:
        async with gate:
            row = await run_problem(recipe, roles, item, grader)
        with results_file.open("a", encoding="utf-8") as f:   # append: nothing is lost
            f.write(row.model_dump_json() + "\n")
        on_done(row)

    await asyncio.gather(*(one(it) for it in todo))
    return time.time() - t0


def summarize(rows: list[ProblemResult], joules: float | None) -> RecipeSummary:
    n = len(rows)
    correct = sum(r.correct for r in rows)
    totals = [r.usage.get("total", {}) for r in rows]
    latencies = [r.wall_s for r in rows]
    joules_per = joules / n if joules is not None and n else None
    acc = correct / n if n else 0.0
    return RecipeSummary(
        accuracy=acc, ci95=wilson_ci95(correct, n), problems=n,
        mean_cost_usd=sum(t.get("cost_usd", 0.0) + t.get("replayed_cost_usd", 0.0)
                          for t in totals) / max(n, 1),
        mean_tokens=sum(t.get("prompt_tokens", 0) + t.get("completion_tokens", 0)
                        + t.get("replayed_prompt_tokens", 0)
                        + t.get("replayed_completion_tokens", 0) for t in totals) / max(n, 1),
        calls=sum(t.get("calls", 0) for t in totals) / max(n, 1),
        cached_calls=sum(t.get("cached_calls", 0) for t in totals) / max(n, 1),
        mean_cached_cost_usd=sum(t.get("replayed_cost_usd", 0.0) for t in totals) / max(n, 1),
        p50_latency_s=percentile(latencies, 50), p90_latency_s=percentile(latencies, 90),
        joules_per_problem=joules_per,
        accuracy_per_wh=(acc / (joules_per / 3600)) if joules_per else None)


async def sample_energy(meter: EnergyMeter, stop: asyncio.Event) -> None:
    """RAPL counters wrap within minutes under load: sample often enough to see every wrap."""
    while not stop.is_set():
        meter.sample()
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
