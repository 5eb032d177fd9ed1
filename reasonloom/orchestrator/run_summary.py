"""A run's summary: recipe, answer, status, time, calls, tokens and dollars, per node. One
source for the notebook view of a result (`RunResult._repr_html_`) and for the first section
of the `reasonloom report` page: build a `RunSummary` (`result.summary()`, or from a run's
stored records) and render it with `summary_html` (or `summary_text`)."""
from __future__ import annotations

from html import escape

from pydantic import Field

from reasonloom.orchestrator.types import Usage
from reasonloom.types import FrozenModel


class NodeCost(FrozenModel):
    """One node's share of the ledger."""

    node: str
    usage: Usage


class RunSummary(FrozenModel):
    """What a reader wants first about a run."""

    run_id: str
    recipe: str | None = None
    status: str = "ok"                 # ok | failed | budget_exceeded | cancelled
    answer: str | None = None          # the extracted answer (e.g. "12"), where there is one
    answer_text: str = ""              # the answer as written
    wall_s: float = 0.0
    ttft_s: float | None = None        # seconds to the first answer token, where it streamed
    total: Usage = Field(default_factory=Usage)
    nodes: tuple[NodeCost, ...] = ()   # in the order the ledger first saw them
    failures: tuple[str, ...] = ()     # "node: error", for nodes whose failure stopped something


STATUS_COLOUR = {"ok": "#1a7f37", "failed": "#cf222e", "budget_exceeded": "#9a6700",
                 "cancelled": "#9a6700"}


def summary_html(summary: RunSummary) -> str:
    """A self-contained HTML fragment (inline styles, no scripts): a notebook cell's output or
    a section of a larger page. Every value from the run is escaped."""
    s = summary
    colour = STATUS_COLOUR.get(s.status, "#57606a")
    timing = f"{s.wall_s:.2f} s" + (f" (first token {s.ttft_s:.2f} s)" if s.ttft_s else "")
    total = s.total
    tokens = (f"{total.prompt_tokens + total.completion_tokens:,} ({total.prompt_tokens:,} "
              f"prompt, {total.completion_tokens:,} completion, {total.cached_prompt_tokens:,}"
              f" cached prompt)")
    calls = f"{total.calls}" + (f" ({total.cached_calls} from the cache)"
                                if total.cached_calls else "")
    answer = escape(s.answer) if s.answer is not None else "<i>none extracted</i>"
    rows = [("recipe", escape(s.recipe or "-")), ("run", f"<code>{escape(s.run_id)}</code>"),
            ("status", f'<b style="color:{colour}">{escape(s.status)}</b>'),
            ("answer", f"<b>{answer}</b>"), ("time", timing), ("calls", calls),
            ("tokens", tokens), ("cost", f"${total.cost_usd:.6f}")]
    cell = 'style="text-align:left;padding:2px 10px 2px 0;vertical-align:top"'
    head = "".join(f"<tr><th {cell}>{name}</th><td {cell}>{value}</td></tr>"
                   for name, value in rows)
    written = (f'<details><summary>answer as written ({len(s.answer_text):,} chars)</summary>'
               f'<pre style="white-space:pre-wrap;max-height:20em;overflow:auto">'
               f"{escape(s.answer_text)}</pre></details>" if s.answer_text else "")
    num = 'style="text-align:right;padding:2px 8px"'
    node_rows = "".join(
        f"<tr><td {cell}>{escape(n.node)}</td><td {num}>{n.usage.calls}</td>"
        f"<td {num}>{n.usage.prompt_tokens:,}</td><td {num}>{n.usage.completion_tokens:,}</td>"
        f"<td {num}>${n.usage.cost_usd:.6f}</td></tr>" for n in s.nodes)
    per_node = ("<table><tr><th {0}>node</th><th {1}>calls</th><th {1}>prompt</th>"
                "<th {1}>completion</th><th {1}>cost</th></tr>{2}</table>"
                .format(cell, num, node_rows) if s.nodes else "")
    failed = "".join(f'<div style="color:{STATUS_COLOUR["failed"]}">{escape(f)}</div>'
                     for f in s.failures)
    return (f'<div class="reasonloom-run-summary"><table>{head}</table>{written}{per_node}'
            f"{failed}</div>")


def summary_text(summary: RunSummary) -> str:
    """The same summary as a few lines of plain text (terminals, plain-text frontends)."""
    s, total = summary, summary.total
    lines = [f"{s.recipe or 'run'} {s.run_id}: {s.status}, answer {s.answer!r}",
             f"{s.wall_s:.2f} s, {total.calls} calls, "
             f"{total.prompt_tokens + total.completion_tokens} tokens, ${total.cost_usd:.6f}"]
    lines += [f"  {n.node}: {n.usage.calls} calls, "
              f"{n.usage.prompt_tokens + n.usage.completion_tokens} tokens, "
              f"${n.usage.cost_usd:.6f}" for n in s.nodes]
    lines += [f"  failed {f}" for f in s.failures]
    return "\n".join(lines)
