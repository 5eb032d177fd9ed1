"""`reasonloom report`: one self-contained HTML page per run (the graph with each node's status,
time, calls, tokens and dollars, and per-node views that explain what each strategy chose and
why) or per bench folder (the accuracy-vs-cost frontier and the per-problem table). Nothing is
fetched when the page is viewed: charts are inline SVG, plots inline PNG, styles inline."""
from reasonloom.report.bench_page import render_bench_report
from reasonloom.report.run_page import ReportError, render_run_report

__all__ = ["ReportError", "render_bench_report", "render_run_report"]
