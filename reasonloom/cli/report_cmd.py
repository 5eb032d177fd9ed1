"""`reasonloom report RUN_ID [--out FILE]`: one self-contained HTML page explaining a run (or,
given a bench folder, the bench's frontier and per-problem table)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_ID",
                   help="a run id printed by `reasonloom run`, or a `reasonloom bench --out` "
                        "folder")
    p.add_argument("--out", metavar="FILE.html",
                   help="where to write (default report-RUN_ID.html; a bench folder: "
                        "DIR/report.html)")


def main(args: argparse.Namespace) -> int:
    from reasonloom.report import ReportError, render_bench_report, render_run_report

    try:
        if Path(args.target, "summary.json").is_file():
            path = render_bench_report(args.target, args.out)
        else:
            path = render_run_report(args.target, args.out)
    except (ReportError, OSError) as exc:
        print(f"reasonloom report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
