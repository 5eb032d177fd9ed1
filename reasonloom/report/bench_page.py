"""The report of a bench folder (`reasonloom bench --out DIR`): the summary table, the
accuracy-vs-cost and accuracy-vs-tokens frontiers and latency (bench's own PNGs, inlined) and
the per-problem table (each recipe's answer, correctness, cost and time)."""
from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

from reasonloom.report.load import ReportError
from reasonloom.report.pages import render

PLOTS = (("accuracy_vs_cost.png", "accuracy vs. mean dollars per problem"),
         ("accuracy_vs_tokens.png", "accuracy vs. mean tokens per problem"),
         ("latency.png", "wall seconds per problem"))


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bench_view(folder: Path) -> dict[str, Any]:
    summary_file = folder / "summary.json"
    if not summary_file.exists():
        raise ReportError(f"{summary_file}: no such file (run `reasonloom bench ... --out "
                          f"{folder}` first)")
    summary = json.loads(summary_file.read_text())
    recipes = list(summary.get("recipes", {}))
    by_problem: dict[str, dict[str, Any]] = {}
    for row in _rows(folder / "results.jsonl"):
        total = (row.get("usage") or {}).get("total") or {}
        entry = by_problem.setdefault(str(row["id"]), {"id": row["id"], "gold": row.get("gold"),
                                                       "by_recipe": {}})
        entry["by_recipe"][row["recipe"]] = {
            "answer": row.get("answer"), "correct": row.get("correct"),
            "status": row.get("status"), "cost_usd": total.get("cost_usd"),
            "tokens": (total.get("prompt_tokens") or 0) + (total.get("completion_tokens") or 0),
            "wall_s": row.get("wall_s")}
    plots = [{"title": title, "data": base64.b64encode((folder / name).read_bytes()).decode()}
             for name, title in PLOTS if (folder / name).exists()]
    return {"summary": summary, "recipes": recipes, "problems": list(by_problem.values()),
            "plots": plots}


def render_bench_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write DIR/report.html (or `out`) for a bench folder; returns the path."""
    folder = Path(folder)
    html = render("bench.html.j2", folder=str(folder), bench=bench_view(folder),
                  made=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    path = Path(out) if out else folder / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
