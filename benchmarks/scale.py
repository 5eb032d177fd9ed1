"""Scaling out: one role on two vLLM replicas, and `bench --ray` on a local Ray cluster.

(a) Two embedded-model vLLM OpenAI servers on loopback behind one role (`endpoints:`, litellm
    Router, per-problem affinity) against one server, same workload: the throughput ratio, the
    share of calls per replica, then a run in which one replica is SIGKILLed mid-run (does every
    problem still finish, and what did the failover cost?).
(b) The same `bench` of N problems (cache off) in-process and on a local Ray cluster (2
    workers on this machine's cores, one shared vLLM server): are the results identical, and
    what does Ray cost? Both arms run float32/eager so identical results are a fair claim.

    python benchmarks/scale.py --quick      # 8 problems for (a), 20 for (b)
    python benchmarks/scale.py              # 24 and 40

Never more than two engines are alive: (a)'s two servers are stopped before (b) starts its
in-process engine, which is shut down before the Ray arm starts its server.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._common import data_dir, machine, print_table, write_result  # noqa: E402

ROLE = """
seed: 0
models:
  strong:
    backend: openai
    model: SmolLM2-135M-Instruct
    {where}
    retry: {{max_attempts: 6, base_delay_s: 0.2, max_delay_s: 2}}
    options: {{n: false, timeout_s: 300}}
nodes:
  vote: {{type: self_consistency, params: {{n: 4, temperature: 0.7, max_tokens: {tokens}}}}}
output: vote
"""
EMBEDDED = """
seed: 0
models:
  strong:
    backend: embedded
    engine: {dtype: float32, enforce_eager: true, max_model_len: 2048}
nodes:
  vote: {type: self_consistency, params: {n: 2, temperature: 0.7, max_tokens: TOKENS}}
output: vote
"""


def load_items(limit: int):
    from reasonloom.bench.datasets import load_items as load

    return load(str(data_dir() / "mawps_addsub.jsonl"), limit)


async def run_arm(recipe, items, on_start=None) -> dict:
    """Every problem at once (the role's throttle limits calls in flight); the ledger's calls
    arrive as events, with the replica that served each."""
    from reasonloom.orchestrator.types import Problem

    roles = recipe.build_roles()
    backend = roles.pick("strong").backend
    calls: list[dict] = []

    async def one(item):
        problem = Problem.from_text(item.question, id=item.id)
        keep = (lambda e: calls.append(dict(e.data)) if e.kind == "call_finished" else None)
        return await recipe.arun(problem, roles=roles, subscribers=[keep])

    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(one(it)) for it in items]
    if on_start is not None:
        await on_start(calls, backend)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.monotonic() - t0
    await backend.aclose()
    ok = [r for r in results if not isinstance(r, BaseException) and r.status == "ok"]
    tokens = sum(r.usage.total.completion_tokens for r in ok)
    return {"wall_s": round(wall, 2), "problems_ok": len(ok), "problems": len(items),
            "completion_tokens": tokens, "tok_per_s": round(tokens / wall, 1),
            "calls_ok": sum(c["ok"] for c in calls), "calls_failed": sum(not c["ok"] for c in calls),
            "served_by": dict(Counter(c["served_by"] for c in calls if c["ok"])),
            "failed_on": dict(Counter(c["served_by"] for c in calls if not c["ok"]))}


def replicas_part(n_problems: int, tokens: int, logs: Path) -> dict:
    from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model
    from reasonloom.backends.vllm.backend import whole_prompt_prefill
    from reasonloom.backends.vllm.engine import DEFAULT_ENGINE_ARGS
    from reasonloom.bench.ray_runner import EngineServer
    from reasonloom.recipe import Recipe

    items = load_items(n_problems)
    # float32 and eager as the tests run it: no torch.compile at start (minutes on 2 cores);
    # whole-prompt prefill as the in-process engine: a seeded request split by chunked prefill
    # crashes the CPU worker
    engine = whole_prompt_prefill({**DEFAULT_ENGINE_ARGS, "max_model_len": 2048,
                                   "dtype": "float32", "enforce_eager": True})
    t0 = time.monotonic()
    servers = []
    try:
        for i in range(2):   # both start at once, then both must answer
            servers.append(EngineServer(str(ensure_embedded_model()), MODEL_NAME, engine,
                                        logs / f"replica{i}.log", wait=False))
        for server in servers:
            server.wait_healthy()
        start_s = time.monotonic() - t0
        a, b = (s.base_url for s in servers)

        def recipe(where: str) -> Recipe:
            return Recipe.from_text(ROLE.format(where=where, tokens=tokens), "scale.yaml")

        one_recipe = recipe(f'base_url: "{a}"')
        # a dead replica sits out for the rest of the run; the probe runs every second
        two_recipe = recipe(f'endpoints: [{{base_url: "{a}"}}, {{base_url: "{b}"}}]\n'
                            f'    routing: {{allowed_fails: 0, cooldown_s: 120, '
                            f'health_check_s: 1}}')
        for url in (a, b):   # each server's first requests are slow (compiling, allocating)
            asyncio.run(run_arm(recipe(f'base_url: "{url}"'), items[:2]))
        single = asyncio.run(run_arm(one_recipe, items))
        double = asyncio.run(run_arm(two_recipe, items))
        killed: dict = {}

        async def kill_b(calls, backend):
            # B dies without warning 40% into the run (the two-replica arm's wall time), while
            # it has calls in flight: every call starts at once here, so B's run together
            t0, wall = time.monotonic(), double["wall_s"]
            while time.monotonic() - t0 < 0.8 * wall and not (
                    time.monotonic() - t0 >= 0.4 * wall and backend.in_flight.get("replica1")):
                await asyncio.sleep(0.01)
            killed["after_s"] = round(time.monotonic() - t0, 1)
            killed["in_flight_on_b"] = backend.in_flight["replica1"]
            killed["calls_done"] = sum(c["ok"] for c in calls)
            os.killpg(servers[1].proc.pid, signal.SIGKILL)

        failover = asyncio.run(run_arm(two_recipe, items, kill_b))
        failover.update(killed)
    finally:
        for server in servers:
            server.stop()
    share = {url.split(":")[-1].split("/")[0]: n for url, n in double["served_by"].items()}
    return {"server_start_s": round(start_s, 1), "one_server": single, "two_replicas": double,
            "failover": failover, "calls_per_replica": share,
            "two_replica_throughput_ratio": round(double["tok_per_s"] / single["tok_per_s"], 3),
            "failover_completed": (failover["problems_ok"] == len(items)
                                   and failover["calls_ok"] == len(items) * 4)}


def rows_of(results_file: Path) -> dict:
    import json

    out = {}
    for line in results_file.read_text().splitlines():
        row = json.loads(line)
        out[str(row["id"])] = (row["answer_text"], row["answer"], row["correct"], row["status"],
                               row["usage"]["total"]["completion_tokens"])
    return out


def ray_part(n_problems: int, tokens: int, work: Path) -> dict:
    from reasonloom.backends.vllm.engine import shutdown_engines
    from reasonloom.bench.ray_runner import connect, ray_bench_recipe
    from reasonloom.bench.runner import bench_recipe, run_problem
    from reasonloom.recipe import Recipe

    (work / "recipe").mkdir(parents=True, exist_ok=True)
    source = work / "recipe" / "scale_ray.yaml"
    source.write_text(EMBEDDED.replace("TOKENS", str(tokens)))
    recipe = Recipe.load(source)
    items = load_items(n_problems)
    plain_file, ray_file = work / "plain.jsonl", work / "ray.jsonl"

    async def plain() -> tuple[float, float]:
        t0 = time.monotonic()
        warm = items[0].model_copy(update={"id": "warm-up"})
        await run_problem(recipe, recipe.build_roles(), warm, "math")   # starts the engine
        engine_s = time.monotonic() - t0
        wall = await bench_recipe(recipe, items, "math", 4, plain_file, lambda row: None)
        return engine_s, wall

    engine_s, plain_wall = asyncio.run(plain())
    shutdown_engines()   # the in-process engine goes before the Ray arm's server starts
    import ray

    t0 = time.monotonic()
    cluster = connect("local")
    ray_init_s = time.monotonic() - t0
    t0 = time.monotonic()
    ran = asyncio.run(ray_bench_recipe(recipe, items, "math", 4, ray_file, lambda row: None,
                                       log_dir=work))
    ray_total = time.monotonic() - t0
    ray.shutdown()
    want, got = rows_of(plain_file), rows_of(ray_file)
    differ = sorted(k for k in want if want[k] != got.get(k))
    return {"problems": len(items), "cluster": cluster, "ray_init_s": round(ray_init_s, 1),
            "engine_start_s_in_process": round(engine_s, 1),
            "server_start_s": round(ray_total - ran["wall_s"], 1),
            "plain_bench_s": round(plain_wall, 1), "ray_bench_s": round(ran["wall_s"], 1),
            "ray_workers_used": len(ran["workers"]), "workers": ran["workers"],
            "ray_identical_results": not differ and len(got) == len(want), "differ": differ,
            "ray_overhead_ratio": round(ran["wall_s"] / plain_wall, 3),
            "ray_overhead_ratio_with_startup": round(
                (ray_init_s + ray_total) / (engine_s + plain_wall), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", choices=["replicas", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    # (problems, max tokens) for (a) and (b): small, the 2 cores are shared with other work
    (n_a, tokens_a), (n_b, tokens_b) = ((8, 24), (20, 16)) if args.quick else ((24, 64), (40, 32))
    work = Path(tempfile.mkdtemp(prefix="reasonloom-scale-"))
    t0 = time.monotonic()
    a = replicas_part(n_a, tokens_a, work) if args.skip != "replicas" else {}
    if a:   # kept even if (b) fails
        write_result("scale", {"machine": machine(), "quick": args.quick, "replicas": a})
    b = ray_part(n_b, tokens_b, work / "ray") if args.skip != "ray" else {}
    if a:
        print_table([(arm, a[arm]["problems_ok"], a[arm]["calls_ok"], a[arm]["calls_failed"],
                      a[arm]["wall_s"], a[arm]["tok_per_s"], a[arm]["served_by"])
                     for arm in ("one_server", "two_replicas", "failover")],
                    ("arm", "problems ok", "calls ok", "failed", "wall s", "tok/s", "served by"))
        print(f"\ntwo replicas / one server throughput: {a['two_replica_throughput_ratio']}x; "
              f"failover completed: {a['failover_completed']}\n")
    if b:
        print_table([("in-process", b["plain_bench_s"], b["engine_start_s_in_process"], "-"),
                     ("ray", b["ray_bench_s"], b["server_start_s"], b["ray_init_s"])],
                    ("arm", "bench s", "engine/server start s", "ray init s"))
        print(f"\nray: {b['ray_workers_used']} workers, identical results: "
              f"{b['ray_identical_results']}, overhead {b['ray_overhead_ratio']}x "
              f"({b['ray_overhead_ratio_with_startup']}x with start-up)")
    payload = {"machine": machine(), "quick": args.quick, "total_s": round(time.monotonic() - t0),
               "two_replica_throughput_ratio": a.get("two_replica_throughput_ratio"),
               "calls_per_replica": a.get("calls_per_replica"),
               "failover_completed": a.get("failover_completed"),
               "ray_identical_results": b.get("ray_identical_results"),
               "ray_workers_used": b.get("ray_workers_used"),
               "ray_overhead_ratio": b.get("ray_overhead_ratio"),
               "replicas": a, "ray": b}
    print(f"wrote {write_result('scale', payload)}")


if __name__ == "__main__":
    main()
