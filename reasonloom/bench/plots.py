"""Frontier and latency plots (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter(summaries: Mapping[str, dict], x_key: str, x_label: str, out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in summaries.items():
        lo, hi = s["ci95"]
        below, above = max(0.0, s["accuracy"] - lo), max(0.0, hi - s["accuracy"])
        ax.errorbar([s[x_key]], [s["accuracy"]], yerr=[[below], [above]],
                    fmt="o", capsize=3, label=name)
        ax.annotate(name, (s[x_key], s["accuracy"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def latency(latencies: Mapping[str, list[float]], out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(latencies)
    ax.boxplot([latencies[n] or [0.0] for n in names])
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=8)
    ax.set_ylabel("wall seconds per problem")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_all(summaries: Mapping[str, dict], latencies: Mapping[str, list[float]],
              out_dir: Path) -> list[Path]:
    paths = [out_dir / "accuracy_vs_cost.png", out_dir / "accuracy_vs_tokens.png",
             out_dir / "latency.png"]
    scatter(summaries, "mean_cost_usd", "mean dollars per problem", paths[0])
    scatter(summaries, "mean_tokens", "mean tokens per problem", paths[1])
    latency(latencies, paths[2])
    return paths
