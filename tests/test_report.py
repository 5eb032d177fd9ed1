"""Issue 25 part 2, `reasonloom report`: one self-contained HTML page per recorded run (and per
bench folder) that explains what each strategy chose and why. Runs are scripted here (the
judge's and workers' texts make each decision known in advance); the real-engine report is in
test_report_engine.py, the page in a browser in test_report_browser.py."""
from __future__ import annotations

import asyncio
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.cli.main import main
from reasonloom.orchestrator.cache import runs_dir
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.run_record import RECORD_KEY
from reasonloom.orchestrator.scheduler import run
from reasonloom.report import ReportError, render_bench_report, render_run_report
from tests.support.report_runs import SCENARIOS, ranked_roles, bench_folder, failing_run, record_run


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class _Page(HTMLParser):
    """What a page would fetch (src/href/url() of any element) and the text of its tables."""

    def __init__(self, html: str):
        super().__init__()
        self.fetches: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.feed(html)
        self.fetches += re.findall(r"url\(\s*['\"]?([^)'\"]+)", html)
        self.fetches += re.findall(r"@import\s+['\"]?([^;'\"]+)", html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name == "id":
                self.ids.add(value)
            if name in ("src", "href", "srcset", "data", "poster") and value:
                self.fetches.append(value)


def external(fetches: list[str]) -> list[str]:
    """References a viewer's browser would have to fetch: anything but in-page anchors and
    data: URIs."""
    return [f for f in fetches if not (f.startswith("#") or f.startswith("data:"))]


def table_rows(html: str, css_class: str) -> int:
    table = re.search(rf'<table class="{css_class}">(.*?)</table>', html, re.S)
    assert table, f"no table.{css_class}"
    return table.group(1).count("<tr") - 1   # minus the header row


def report_of(scenario: str, tmp_path: Path) -> tuple[object, str]:
    result = record_run(scenario, f"r-{scenario}")
    html = render_run_report(f"r-{scenario}", tmp_path / f"{scenario}.html").read_text()
    return result, html


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_view_renders_a_self_contained_page_that_opens_with_the_run_summary(
        scenario, tmp_path):
    result, html = report_of(scenario, tmp_path)
    page = _Page(html)
    assert external(page.fetches) == []
    assert "script" not in page.tags    # nothing runs either: the page is read, not executed
    # the first section is the same summary a notebook shows for the result
    assert result._repr_html_() in html
    assert html.index(result._repr_html_()) < html.index('id="graph-0"')
    assert {"summary-0", "graph-0", "nodes-0"} <= page.ids
    for node in result.outputs:
        assert f"node-0-{node}" in page.ids
    anchors = [f[1:] for f in page.fetches if f.startswith("#")]
    assert anchors and set(anchors) <= page.ids   # every in-page link lands somewhere
    assert f'class="view {"tournament" if scenario == "v1_tournament" else scenario}"' in html


def test_v1_view_lists_who_met_whom_with_verdicts_and_crowns_the_judges_favourite(tmp_path):
    result, html = report_of("v1_tournament", tmp_path)
    details = result.answer.details
    assert table_rows(html, "comparisons") == details["comparisons"] <= details["budget"]
    verdicts = re.findall(r"<td>(#\d wins|tie|unparsed)</td>", html)
    assert len(verdicts) == details["comparisons"] and "unparsed" not in verdicts
    # the judge rates 7s 9 and the rest 2: a 7 (sample 0 or 3) beats any other answer
    for first, second, rating_first, rating_second in details["log"]:
        if rating_first != rating_second:
            winner = first if rating_first > rating_second else second
            assert result.outputs["samples"]["candidates"][winner].text.endswith("is 7.")
    assert result.answer.answer == "7" and f"winner: <b>#{details['index']}</b>" in html
    assert html.count("<svg") >= 2   # the graph and the win-rate bars


def test_weaver_view_shows_each_verifiers_rates_and_every_posterior(tmp_path):
    result, html = report_of("weaver", tmp_path)
    details = result.answer.details
    assert table_rows(html, "label-model") == len(details["yes_rate"]) == 3
    assert table_rows(html, "posteriors") == 6
    for kept in details["kept"]:
        assert re.search(rf"<td>{kept}</td><td class=\"n\">[\d.]+</td><td>yes</td>", html)
    assert html.count('class="chosen"') >= 1


def test_evolve_view_has_one_table_per_loop_with_each_groups_route(tmp_path):
    result, html = report_of("evolve", tmp_path)
    loops = result.answer.details["loops"]
    assert html.count('<table class="loop">') == len(loops) - 1 == 2
    routed = re.findall(r"<td>(strong|cheap)</td></tr>", html)
    assert len(routed) == sum(len(rec["routes"]) for rec in loops[1:])


def test_moa_view_shows_the_aggregators_first_call_and_its_reprompt(tmp_path):
    result, html = report_of("moa", tmp_path)
    assert result.answer.details["reprompts"] == 1
    assert table_rows(html, "staircase") == result.answer.details["aggregator_calls"] == 2
    assert "<td>first</td>" in html and "<td>reprompt</td>" in html
    assert "3 candidates" in html   # the proposals


def test_chunked_view_shows_each_workers_report_and_which_reached_the_manager(tmp_path):
    result, html = report_of("chunked", tmp_path)
    workers = result.answer.details["workers"]
    assert table_rows(html, "workers") == workers
    assert html.count("the secret code is 7391") >= 1
    assert "answered by: manager" in html


def test_a_failed_run_is_reported_with_the_failing_node_and_its_error(tmp_path):
    result = record_run(failing_run, "r-failed")
    assert result.status == "failed"
    html = render_run_report("r-failed", tmp_path / "f.html").read_text()
    assert result._repr_html_() in html
    assert re.search(r'<td class="failed">failed</td>', html)   # the samples node
    assert "the scripted backend is down" in html
    assert re.search(r'<td class="not-run">not run</td>|<td class="cancelled">', html)


def test_a_run_stopped_from_outside_is_recorded_as_cancelled(tmp_path):
    g = Graph().add("samples", "best_of_n", {"n": 2, "max_tokens": 8}, {"problem": "problem"})
    g.set_output("samples")
    roles = ranked_roles(ScriptedBackend(delay_s=30))

    async def stopped():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(run(g, "slow?", roles, cache="record", run_id="r-stop"), 0.3)

    asyncio.run(stopped())
    html = render_run_report("r-stop", tmp_path / "s.html").read_text()
    assert ">cancelled</b>" in html and '<td class="cancelled">cancelled</td>' in html


def test_text_from_the_run_is_escaped_not_interpreted(tmp_path):
    def hostile():
        g, _, roles = SCENARIOS["v1_tournament"]()
        return g, "<script>alert('q')</script> What is 3 + 4?", roles

    record_run(hostile, "r-hostile")
    html = render_run_report("r-hostile", tmp_path / "h.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(" in html


def test_a_dataset_run_gets_one_section_per_problem(tmp_path):
    for i in range(2):
        record_run("v1_tournament", f"r-set.{i}")
    html = render_run_report("r-set", tmp_path / "set.html").read_text()
    page = _Page(html)
    assert {"summary-0", "summary-1", "node-1-tournament"} <= page.ids
    assert "#node-1-tournament" in page.fetches
    assert "(problem 1)" in html


def test_runs_without_a_run_file_or_a_record_fail_in_one_line(tmp_path, home):
    with pytest.raises(ReportError, match="no run 'nope'"):
        render_run_report("nope")
    with pytest.raises(ReportError, match="report"):
        render_run_report("../x")
    record_run("v1_tournament", "r-old")
    from reasonloom.orchestrator.cache import RunStore

    store = RunStore(runs_dir() / "r-old.sqlite", "read_write")
    store.set_meta(RECORD_KEY, None)   # as a run from before records (or one still running)
    store.close()
    with pytest.raises(ReportError, match="kept no record"):
        render_run_report("r-old")


def test_cli_writes_the_page_and_prints_its_path(tmp_path, capsys, monkeypatch):
    record_run("weaver", "r-cli")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "r-cli"]) == 0
    assert capsys.readouterr().out.strip() == "report-r-cli.html"
    assert (tmp_path / "report-r-cli.html").read_text().startswith("<!doctype html>")
    assert main(["report", "r-cli", "--out", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").exists()
    assert main(["report", "missing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reasonloom report: no run 'missing'")


def test_bench_writes_a_report_with_its_plots_inline_and_a_row_per_problem(tmp_path, capsys):
    out = bench_folder(tmp_path)
    assert "report.html" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    page = _Page(html)
    assert external(page.fetches) == [] and "script" not in page.tags
    assert {"summary", "frontier", "problems"} <= page.ids
    assert html.count('src="data:image/png;base64,') == 3
    assert table_rows(html, "summary") == 2
    assert table_rows(html, "problems") == 4
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    right = sum(r["correct"] for r in rows)
    assert html.count("&#10003;") == right and html.count("&#10007;") == len(rows) - right


def test_report_of_a_bench_folder_rewrites_its_page(tmp_path, capsys):
    out = bench_folder(tmp_path)
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    assert (out / "report.html").exists()
    with pytest.raises(ReportError, match="summary.json"):
        render_bench_report(tmp_path / "nothing")
