"""Issue 25 part 3, the report checked as a person would: the pages open in headless Chromium
with no network, show their sections, draw their charts and log nothing to the console.
Skipped only where chromium is missing; CI (.ci/run) installs it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from reasonloom.report import render_run_report
from tests.support.browser import chromium, open_page
from tests.support.report_runs import SCENARIOS, bench_folder, record_run

pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed "
                                "(apt-get install chromium; .ci/run installs it)")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def ids(dom: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', dom))


def test_the_console_check_sees_errors_and_uncaught_exceptions(tmp_path):
    """The check below is not vacuous: a page that fails shows it in what we read back."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><p id="x">hi</p><script>console.error("boom");'
                    'throw new Error("kaput");</script>')
    opened = open_page(page)
    assert 'id="x"' in opened.dom
    assert "boom" in opened.console and any("Uncaught Error: kaput" in m
                                            for m in opened.console)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_run_report_opens_with_every_section_and_a_quiet_console(scenario, tmp_path):
    record_run(scenario, f"b-{scenario}")
    page = render_run_report(f"b-{scenario}", tmp_path / "run.html")
    opened = open_page(page)
    assert opened.console == []
    assert {"summary-0", "graph-0", "nodes-0"} <= ids(opened.dom)
    assert 'class="reasonloom-run-summary"' in opened.dom
    assert opened.dom.count("<svg") >= 1 and "<text" in opened.dom   # the graph, as drawn
    assert re.search(r'<div class="view \w+">', opened.dom)


def test_a_bench_report_opens_with_its_plots_decoded(tmp_path):
    out = bench_folder(tmp_path)
    opened = open_page(out / "report.html")
    assert opened.console == []
    assert {"summary", "frontier", "problems"} <= ids(opened.dom)
    assert opened.dom.count("<img") == 3
    shot = tmp_path / "bench.png"
    open_page(out / "report.html", screenshot=shot, height=1600)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
