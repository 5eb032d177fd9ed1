"""`reasonloom bench RECIPE... --dataset FILE` and `reasonloom bench compare DIR...`."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="+", metavar="RECIPE",
                   help="recipe files; or `compare DIR DIR ...` for earlier runs")
    p.add_argument("--dataset", metavar="FILE.jsonl|reasoning-gym:TASK")
    p.add_argument("--limit", type=int, metavar="N")
    p.add_argument("--concurrency", type=int, default=4, metavar="C")
    p.add_argument("--out", metavar="DIR", default="bench-out")
    p.add_argument("--grader", default="math", help="math | numeric | exact | mc | kv")
    p.add_argument("--fields", metavar="question=COL,answer=COL",
                   help="map other column names onto question/answer/context/id")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--cache", nargs="?", const="", metavar="PATH",
                   help="one call cache for every recipe and rerun (default "
                        "$REASONLOOM_HOME/cache.sqlite); cached calls are billed what they cost")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="shard the problems over a Ray cluster (ADDRESS: auto, HOST:6379, "
                        "ray://HOST:10001; none: a local cluster); embedded roles are served by "
                        "one shared vLLM server")
    p.add_argument("--powercap-root", default="/sys/class/powercap", help=argparse.SUPPRESS)


def _fail(message: str) -> int:
    print(f"reasonloom bench: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    if args.recipes[0] == "compare":
        return compare(args.recipes[1:])
    from reasonloom.bench.datasets import DatasetError, load_items
    from reasonloom.bench.graders import GRADERS
    from reasonloom.recipe import RecipeError, load_recipe

    if args.grader not in GRADERS:
        return _fail(f"--grader: unknown grader {args.grader!r} (graders: {', '.join(GRADERS)})")
    if not args.dataset:
        return _fail("--dataset is required")
    if args.concurrency < 1:
        return _fail("--concurrency must be at least 1")
    recipes = []
    for path in args.recipes:
        try:
            recipe = load_recipe(path, args.set)
        except RecipeError as exc:
            print(exc, file=sys.stderr)
            return 2
        recipes.append(recipe if args.cache is None else recipe.with_shared_cache(
            args.cache or None))
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        return _fail("two recipes share a file name; results are keyed by it")
    try:
        items = load_items(args.dataset, args.limit, args.fields)
    except DatasetError as exc:
        return _fail(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(args, "ray", None) is None:
        return asyncio.run(run_bench(recipes, items, args, out))
    from reasonloom.bench.ray_runner import RayBenchError

    try:
        return asyncio.run(run_bench(recipes, items, args, out))
    except RayBenchError as exc:
        return _fail(str(exc))


async def run_bench(recipes, items, args, out: Path) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from reasonloom.bench.energy import EnergyMeter
    from reasonloom.cli.console import status_console
    from reasonloom.bench.plots import write_all
    from reasonloom.report import render_bench_report
    from reasonloom.bench.runner import (bench_recipe, finished_ids, load_results,
                                         sample_energy, summarize)

    results_file = out / "results.jsonl"
    energy_file = out / "energy.json"
    energy = json.loads(energy_file.read_text()) if energy_file.exists() else {}
    console = status_console()   # stderr, also while an engine's start points fd 2 at its log
    for recipe in recipes:
        done_before = len([1 for r, _ in finished_ids(results_file) if r == recipe.name])
        stats = {"done": 0, "correct": 0, "dollars": 0.0, "tokens": 0, "t0": time.time()}
        meter = EnergyMeter(args.powercap_root)
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"),
                      TimeRemainingColumn(), console=console, transient=False,
                      redirect_stdout=False, redirect_stderr=False,
                      disable=not console.is_terminal) as progress:
            task = progress.add_task(recipe.name, total=len(items), completed=done_before,
                                     info="")

            def on_done(row) -> None:
                stats["done"] += 1
                stats["correct"] += row.correct
                total = row.usage.get("total", {})
                stats["dollars"] += total.get("cost_usd", 0.0)
                stats["tokens"] += total.get("prompt_tokens", 0) + total.get(
                    "completion_tokens", 0)
                rate = stats["tokens"] / max(time.time() - stats["t0"], 1e-9)
                progress.update(task, advance=1, info=(
                    f"acc {stats['correct'] / stats['done']:.2f} | ${stats['dollars']:.5f} | "
                    f"{rate:.0f} tok/s"))

            stop = asyncio.Event()
            meter.start()
            sampler = asyncio.create_task(sample_energy(meter, stop))
            if getattr(args, "ray", None) is not None:   # ray is imported only with --ray
                from reasonloom.bench.ray_runner import ray_bench_recipe

                ran = await ray_bench_recipe(recipe, items, args.grader, args.concurrency,
                                             results_file, on_done, address=args.ray,
                                             log_dir=out)
                console.print(f"ray: {len(ran['workers'])} workers on {ran['nodes']} node(s), "
                              f"{ran['wall_s']:.1f} s")
            else:
                await bench_recipe(recipe, items, args.grader, args.concurrency, results_file,
                                   on_done)
            stop.set()
            await sampler
        if meter.available and stats["done"]:
            # concurrent problems share the machine: energy is attributed per run, split evenly
            previous = energy.get(recipe.name, {"joules": 0.0, "problems": 0})
            energy[recipe.name] = {"joules": previous["joules"] + meter.joules,
                                   "problems": previous["problems"] + stats["done"]}
    energy_file.write_text(json.dumps(energy))
    rows = load_results(results_file)
    wanted = {str(it.id) for it in items}
    summaries, latencies = {}, {}
    for recipe in recipes:
        mine = [r for r in rows if r.recipe == recipe.name and str(r.id) in wanted]
        e = energy.get(recipe.name)
        joules = e["joules"] * len(mine) / e["problems"] if e and e["problems"] else None
        summaries[recipe.name] = summarize(mine, joules).model_dump()
        latencies[recipe.name] = [r.wall_s for r in mine]
    summary = {"recipes": summaries, "dataset": args.dataset, "limit": args.limit,
               "grader": args.grader}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_all(summaries, latencies, out)
    render_bench_report(out)
    print_table(summaries)
    print(f"wrote {out / 'results.jsonl'}, {out / 'summary.json'}, 3 plots and report.html")
    return 0


def print_table(summaries: dict) -> None:
    header = ("recipe", "acc", "95% CI", "$/problem", "tokens", "calls", "cached", "p50 s",
              "p90 s", "J")
    rows = []
    for name, s in summaries.items():
        rows.append((name, f"{s['accuracy']:.3f}", f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]",
                     f"{s['mean_cost_usd']:.6f}", f"{s['mean_tokens']:.0f}", f"{s['calls']:.1f}",
                     f"{s.get('cached_calls', 0.0):.1f}",
                     f"{s['p50_latency_s'] or 0:.1f}", f"{s['p90_latency_s'] or 0:.1f}",
                     "n/a" if s["joules_per_problem"] is None else f"{s['joules_per_problem']:.1f}"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))


def compare(dirs: list[str]) -> int:
    from reasonloom.bench.plots import scatter

    if not dirs:
        return _fail("compare needs at least one DIR")
    merged = {}
    for d in dirs:
        path = Path(d) / "summary.json"
        if not path.exists():
            return _fail(f"{path}: no such file (run `reasonloom bench ... --out {d}` first)")
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            return _fail(f"{path}: not JSON ({exc.msg})")
        for name, s in summary["recipes"].items():
            merged[f"{Path(d).name}/{name}"] = s
    print_table(merged)
    out = Path(dirs[0]) / "compare_accuracy_vs_cost.png"
    scatter(merged, "mean_cost_usd", "mean dollars per problem", out)
    print(f"wrote {out}")
    return 0
