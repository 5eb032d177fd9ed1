"""Runtime overhead per node and calls in flight, on a scripted backend (issue: DAG runtime).

(a) a 10,000-node random DAG, every node making one model call through the runtime (ledger,
    budget and event bus on; trace writer and cache off; graph building excluded), against the
    same graph on bare asyncio tasks; the backend awaits asyncio.sleep(0).
(b) fan-out: 1 source -> 9,998 independent nodes -> 1 sink, concurrency limit 10,000, the
    backend awaits asyncio.sleep(0.05): how many calls are in flight at once.
(c) where the time goes: the bare DAG, then the bare DAG calling the backend directly (its
    pydantic reply types), then calling ctx.generate (the call pipeline: seed, budget, role
    limiter, ledger, events; under a run's collector setting) without the scheduler, then the
    full runtime: the least CPU time per node of each, and what each layer adds.

    python benchmarks/overhead.py --quick
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, print_table, python_version, write_result  # noqa: E402
from reasonloom.backends.base import GenerateRequest  # noqa: E402
from reasonloom.backends.scripted import ScriptedBackend  # noqa: E402
from reasonloom.orchestrator.budget import Budget, BudgetSpec  # noqa: E402
from reasonloom.orchestrator.context import RunContext, RunState  # noqa: E402
from reasonloom.orchestrator.events import EventBus  # noqa: E402
from reasonloom.orchestrator.gc_tuning import run_gc_thresholds  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.registry import register_node  # noqa: E402
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Candidate, Candidates, FrozenModel, Message  # noqa: E402

REQUEST = GenerateRequest(messages=(Message(role="user", content="q"),), max_tokens=4)


class OneCall(FrozenModel):
    pass


@register_node("bench_one_call", OneCall, inputs={"problem": "problem", "upstream": "any"},
               outputs={"candidates": "candidates"}, optional_inputs=("upstream",))
async def one_call(inputs, cfg, ctx):
    gen = await ctx.generate("strongest", REQUEST, "call")
    return {"candidates": Candidates([Candidate(text=gen.samples[0].text)])}


def quick_answer(req, index):
    return "ok"


def random_dag(nodes: int, seed: int = 0) -> list[list[int]]:
    """Each node depends on up to 3 earlier nodes (a random DAG in topological order)."""
    rng = random.Random(seed)
    return [rng.sample(range(i), min(i, rng.randint(0, 3))) for i in range(nodes)]


def build_graph(parents: list[list[int]]) -> Graph:
    g = Graph()
    for i, ps in enumerate(parents):
        g.add(f"n{i}", "bench_one_call", {},
              {"upstream": [f"n{p}.candidates" for p in ps]} if ps else {})
    sinks = set(range(len(parents))) - {p for ps in parents for p in ps}
    g.add("sink", "bench_one_call", {}, {"upstream": [f"n{i}.candidates" for i in sorted(sinks)]})
    g.set_output("sink")
    g.validate()
    return g


def roles(delay: float, concurrency: int) -> tuple[Roles, ScriptedBackend]:
    backend = ScriptedBackend(quick_answer, delay_s=delay)
    spec = RoleSpec(name="strong", concurrency=concurrency, price_in_per_m=1, price_out_per_m=2)
    return Roles({"strong": Role(spec, backend)}), backend


async def bare_asyncio(parents: list[list[int]], delay: float) -> None:
    """The same DAG as plain tasks awaiting their parents and one sleep each."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in parents]

    async def node(i: int) -> None:
        for p in parents[i]:
            await futures[p]
        await asyncio.sleep(delay)
        futures[i].set_result(i)

    await asyncio.gather(*(node(i) for i in range(len(parents))))


async def bare_with_backend(parents: list[list[int]], delay: float) -> None:
    """Layer 1: the bare DAG, each node calling the backend directly (its reply types)."""
    backend = ScriptedBackend(quick_answer, delay_s=delay)
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in parents]

    async def node(i: int) -> None:
        for p in parents[i]:
            await futures[p]
        gen = await backend.generate(REQUEST)
        futures[i].set_result(Candidates([Candidate(text=gen.samples[0].text)]))

    await asyncio.gather(*(node(i) for i in range(len(parents))))


async def bare_with_pipeline(parents: list[list[int]], delay: float) -> None:
    """Layer 2: the bare DAG, each node calling ctx.generate (seed, budget, throttle, ledger,
    events: the call pipeline) on one run state, with no scheduler."""
    role_set, _ = roles(delay, len(parents))
    events = EventBus()
    events.subscribe(lambda e: None)
    state = RunState(run_id="r", seed=0, roles=role_set, budget=Budget(BudgetSpec(tokens=10**12)),
                     events=events)
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in parents]

    async def node(i: int) -> None:
        for p in parents[i]:
            await futures[p]
        out = await one_call({}, OneCall(), RunContext(state, f"n{i}"))
        futures[i].set_result(out)

    with run_gc_thresholds():   # the collector setting every run has (gc_tuning.py)
        await asyncio.gather(*(node(i) for i in range(len(parents))))
        state.ledger.report()


def cpu_per_node(fn, parents: list[list[int]], repeats: int, collect: bool = True) -> float:
    """The least process CPU time per node over `repeats` runs (least: what load adds is
    never negative); collect=False pauses Python's cyclic garbage collector meanwhile."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        if not collect:
            gc.disable()
        c0 = time.process_time()
        try:
            asyncio.run(fn(parents, 0.0))
        finally:
            gc.enable()
        best = min(best, time.process_time() - c0)
    return best / len(parents) * 1e6


async def full_runtime(parents: list[list[int]], delay: float) -> None:
    """Layer 3: the runtime itself (scheduler, events, ledger report) on the same DAG."""
    role_set, _ = roles(delay, len(parents))
    await run(GRAPHS[len(parents)], "q", role_set, budget=BudgetSpec(tokens=10**12),
              subscribers=[lambda e: None])


GRAPHS: dict[int, Graph] = {}   # built once, outside the timing


def time_runtime(graph: Graph, delay: float, concurrency: int) -> tuple[float, ScriptedBackend]:
    role_set, backend = roles(delay, concurrency)
    events_seen = []
    gc.collect()
    backend.cpu_s = time.process_time()
    t0 = time.perf_counter()

    async def timed() -> None:   # returns None: asyncio.run's teardown reprs the task's result
        # the event bus is on: one cheap subscriber counts events
        await run(graph, "q", role_set, budget=BudgetSpec(tokens=10**12),
                  subscribers=[lambda e: events_seen.append(1)])

    asyncio.run(timed())
    wall = time.perf_counter() - t0
    backend.cpu_s = time.process_time() - backend.cpu_s
    return wall, backend


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nodes", type=int, default=10_000)
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    n = args.nodes

    parents = random_dag(n)
    graph = build_graph(parents)
    runtime_s, bare_s, runtime_cpu, bare_cpu = [], [], [], []
    for _ in range(repeats):
        wall, backend = time_runtime(graph, 0.0, n)
        runtime_s.append(wall)
        runtime_cpu.append(backend.cpu_s)
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        asyncio.run(bare_asyncio(parents, 0.0))
        bare_s.append(time.perf_counter() - t0)
        bare_cpu.append(time.process_time() - c0)
    per_node = statistics.median(runtime_s) / (n + 1) * 1e6
    per_node_bare = statistics.median(bare_s) / n * 1e6

    fan = Graph()
    fan.add("source", "bench_one_call", {})
    for i in range(n - 2):
        fan.add(f"w{i}", "bench_one_call", {}, {"upstream": "source.candidates"})
    fan.add("sink", "bench_one_call", {}, {"upstream": [f"w{i}.candidates" for i in range(n - 2)]})
    fan.set_output("sink")
    fan.validate()
    fan_wall, backend = time_runtime(fan, 0.05, 10_000)

    cpu_node = statistics.median(runtime_cpu) / (n + 1) * 1e6
    cpu_node_bare = statistics.median(bare_cpu) / n * 1e6
    # where the microseconds go: each layer added to the bare DAG, least CPU time of the runs
    GRAPHS[len(parents)] = graph
    steps = {"bare asyncio": bare_asyncio, "+ backend reply types": bare_with_backend,
             "+ call pipeline (ctx.generate)": bare_with_pipeline,
             "+ scheduler (full runtime)": full_runtime}
    layers = {name: cpu_per_node(fn, parents, repeats) for name, fn in steps.items()}
    # Python's cyclic garbage collector scans every live object of a 10,000-node run
    layers_no_gc = {name: cpu_per_node(fn, parents, repeats, collect=False)
                    for name, fn in steps.items()}
    rows = [("runtime (ledger+budget+events)", f"{per_node:.1f}", f"{cpu_node:.1f}",
             f"{statistics.median(runtime_s):.2f}"),
            ("bare asyncio tasks", f"{per_node_bare:.1f}", f"{cpu_node_bare:.1f}",
             f"{statistics.median(bare_s):.2f}")]
    print(f"(a) {n}-node random DAG, one call per node, median of {repeats}")
    print_table(rows, ("arm", "wall us/node", "cpu us/node", "wall s"))
    names = list(layers)
    print("\nwhere the time goes (least CPU us/node of the runs)")
    print_table([(name, f"{layers[name]:.1f}",
                  "-" if k == 0 else f"{layers[name] - layers[names[k - 1]]:+.1f}",
                  f"{layers_no_gc[name]:.1f}",
                  "-" if k == 0 else f"{layers_no_gc[name] - layers_no_gc[names[k - 1]]:+.1f}")
                 for k, name in enumerate(names)],
                ("layer", "cpu us/node", "added", "gc paused", "added"))
    print(f"\n(b) fan-out 1 -> {n - 2} -> 1, 50 ms calls, limit 10,000: max in flight "
          f"{backend.max_in_flight}, wall {fan_wall:.2f}s")
    path = write_result("overhead", keep_previous=True, payload={
        "overhead_us_per_node": round(per_node, 2),
        "overhead_us_per_node_bare": round(per_node_bare, 2),
        # process CPU time: steadier than wall time when other work shares the cores
        "cpu_us_per_node": round(cpu_node, 2), "cpu_us_per_node_bare": round(cpu_node_bare, 2),
        "load_average_1m": os.getloadavg()[0],
        "layers_cpu_us_per_node": {k: round(v, 2) for k, v in layers.items()},
        "layers_cpu_us_per_node_gc_paused": {k: round(v, 2) for k, v in layers_no_gc.items()},
        "max_in_flight": backend.max_in_flight, "nodes": n, "fanout_wall_s": round(fan_wall, 3),
        "repeats": repeats, "python": python_version(), "machine": machine(),
        "targets": {"overhead_us_per_node": "<= 40", "max_in_flight": ">= 5000"}})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
