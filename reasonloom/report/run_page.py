"""The report of one run: per problem, the graph with each node's status, time, calls, tokens
and dollars, then each node's candidates and the view that explains its choice (views.py)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from reasonloom.orchestrator.run_summary import RunSummary, summary_html
from reasonloom.report.charts import graph_svg
from reasonloom.report.load import ReportError, load_problem_run, run_files
from reasonloom.report.pages import render
from reasonloom.report.views import candidate_rows, explain

__all__ = ["ReportError", "node_table", "problem_view", "render_run_report"]

DECISION_EVENTS = {"tournament_round", "evolve_loop", "evolve_fallback", "moa_segment",
                   "chunked_plan", "error"}


def _refs(ref: str | list[str]) -> list[str]:
    return ref if isinstance(ref, list) else [ref]


def node_table(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each node of the graph: type, status, seconds, calls, tokens and dollars (from the
    ledger's records), in the graph's order."""
    started, ended, status, errors = {}, {}, {}, {}
    for e in record["events"]:
        node = e.get("node")
        if e["event"] == "node_started":
            started[node] = e["t"]
        elif e["event"] == "node_finished":
            ended[node], status[node] = e["t"], "ok"
        elif e["event"] == "node_failed":
            ended[node], status[node], errors[node] = e["t"], "failed", e.get("error")
    rows = []
    for name, spec in record["graph"]["nodes"].items():
        calls = [c for c in record["calls"] if c["node"] == name]
        state = status.get(name) or ("running" if name in started else "not run")
        if state == "running" and record["summary"]["status"] != "ok":
            state = "cancelled"
        seconds = ended[name] - started[name] if name in ended and name in started else None
        rows.append({"name": name, "type": spec["type"], "status": state, "seconds": seconds,
                     "calls": len(calls), "cached": sum(c["cache_hit"] for c in calls),
                     "prompt_tokens": sum(c["prompt_tokens"] for c in calls),
                     "completion_tokens": sum(c["completion_tokens"] for c in calls),
                     "cost_usd": sum(c["cost_usd"] for c in calls),
                     "error": errors.get(name), "params": spec["params"],
                     "inputs": spec["inputs"]})
    return rows


def problem_view(loaded: dict[str, Any]) -> dict[str, Any]:
    record, outputs = loaded["record"], loaded["outputs"]
    nodes = node_table(record)
    edges = sorted({(ref.split(".")[0], n["name"]) for n in nodes
                    for refs in n["inputs"].values() for ref in _refs(refs)
                    if ref.split(".")[0] in record["graph"]["nodes"]})
    for n in nodes:
        out = outputs.get(n["name"], {})
        answer = out.get("answer") if isinstance(out.get("answer"), dict) else None
        listed = out.get("candidates") if isinstance(out.get("candidates"), list) else None
        n["answer"] = answer
        n["candidates"] = candidate_rows((answer or {}).get("candidates") or listed or [])
        n["view"] = explain(n["type"], answer)
        n["events"] = [e for e in record["events"]
                       if e.get("node") == n["name"] and e["event"] in DECISION_EVENTS]
    output = record["graph"].get("output") or ""
    final = outputs.get(output.split(".")[0], {}).get(output.split(".")[-1])
    question = next((m["content"] for m in reversed(record["problem"]["messages"])
                     if m["role"] == "user"), "")
    summary = RunSummary.model_validate(record["summary"])
    return {"run_id": record["run_id"], "status": summary.status, "question": question,
            "gold": record["problem"].get("gold"), "output": output,
            "final": final if isinstance(final, dict) else None,
            "summary": summary_html(summary), "nodes": nodes,
            "graph": graph_svg(nodes, edges)}


def render_run_report(run_id: str, out: str | Path | None = None) -> Path:
    """Write the report of run RUN_ID (every problem of a dataset run) to `out` (default
    report-RUN_ID.html in the current folder); returns the path."""
    problems = [problem_view(load_problem_run(path)) for path in run_files(run_id)]
    html = render("run.html.j2", run_id=run_id, problems=problems,
                  made=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    path = Path(out) if out else Path(f"report-{run_id}.html")
    path.write_text(html, encoding="utf-8")
    return path
