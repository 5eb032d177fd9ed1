"""`reasonloom validate | graph | models`: recipe checks that never start a model."""
from __future__ import annotations

import argparse
import asyncio
import sys

from reasonloom.recipe import RecipeError, load_recipe


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipes", nargs="+", metavar="RECIPE")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")


def add_graph_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("--out", metavar="FILE.png|FILE.mmd")


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE")


def validate_main(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.recipes:
        try:
            load_recipe(path, args.set)
        except RecipeError as exc:
            print(exc, file=sys.stderr)
            bad += 1
            continue
        print(f"{path}: ok")
    return 2 if bad else 0


def _load_or_exit(path: str):
    try:
        return load_recipe(path)
    except RecipeError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def graph_main(args: argparse.Namespace) -> int:
    recipe = _load_or_exit(args.recipe)
    mermaid = recipe.graph.to_mermaid()
    if not args.out:
        print(mermaid)
        return 0
    if args.out.endswith(".mmd"):
        with open(args.out, "w") as f:
            f.write(mermaid + "\n")
    elif args.out.endswith(".png"):
        draw_png(recipe, args.out)
    else:
        print(f"reasonloom graph: --out must end in .png or .mmd, got {args.out}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


def draw_png(recipe, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    dag = nx.DiGraph(recipe.graph.validate())
    dag.add_node("problem")
    for name, spec in recipe.graph.nodes.items():
        for _, src in spec.sources():
            dag.add_edge(src.node, name)
    for layer, nodes in enumerate(nx.topological_generations(dag)):
        for node in nodes:
            dag.nodes[node]["layer"] = layer
    pos = nx.multipartite_layout(dag, subset_key="layer")
    fig, ax = plt.subplots(figsize=(2.5 + 2 * len(dag), 3.5))
    labels = {n: n if n == "problem" else f"{n}\n({recipe.graph.nodes[n].type.name})"
              for n in dag}
    nx.draw_networkx(dag, pos, ax=ax, labels=labels, node_color="#cfe3ff", node_size=2600,
                     font_size=8, arrows=True)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def models_main(args: argparse.Namespace) -> int:
    recipe = _load_or_exit(args.recipe)
    from reasonloom.backends.base import GenerateRequest
    from reasonloom.orchestrator.types import Message

    async def probe(role) -> str:
        req = GenerateRequest(messages=(Message(role="user", content="Say OK."),), max_tokens=2)
        try:
            await asyncio.wait_for(role.backend.generate(req), 300)
            return "answers"
        except Exception as exc:   # report, don't crash: this command is a health check
            return f"does not answer: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"

    async def main() -> list[tuple[str, str]]:
        roles = recipe.build_roles()
        return [(name, await probe(roles[name])) for name in roles]

    failed = 0
    for name, status in asyncio.run(main()):
        cfg = recipe.spec.models[name]
        where = cfg.base_url or cfg.model or cfg.backend
        print(f"{name:12s} {cfg.backend:9s} {where:40s} ${cfg.price_in_per_m:g}/"
              f"${cfg.price_out_per_m:g} per M  {status}")
        failed += status != "answers"
    return 1 if failed else 0
