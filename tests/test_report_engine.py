"""Issue 25 part 2 on the real embedded engine: the shipped V1 recipe (small settings) runs
with a run file, and its report shows the tournament SmolLM2 actually played: every
comparison with the ratings it wrote, every sample with its extracted answer."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from reasonloom.report import render_run_report
from tests.conftest import on_test_engine
from tests.support.browser import chromium, open_page

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.engine
def test_a_v1_run_on_the_engine_is_reported_comparison_by_comparison(tmp_path, monkeypatch,
                                                                     embedded, arun):
    # the session's engine is started (`embedded`) before the run files move to tmp_path: a
    # fresh REASONLOOM_HOME would convert the model again
    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path / "home"))
    recipe = on_test_engine(ROOT / "recipes/v1_tournament.yaml", [
        "nodes.samples.params.n=4", "nodes.samples.params.max_tokens=48",
        "nodes.tournament.params.budget_multiplier=2"])
    result = arun(recipe.arun("What is 3 + 5?", run_id="v1-engine", cache="record"))
    assert result.status == "ok" and result.recipe == "v1_tournament"
    page = render_run_report("v1-engine", tmp_path / "v1.html")
    text = page.read_text()
    assert result._repr_html_() in text
    details = result.answer.details
    rows = re.search(r'<table class="comparisons">(.*?)</table>', text, re.S).group(1)
    assert rows.count("<tr") - 1 == details["comparisons"] == len(details["log"]) <= 8
    assert f"winner: <b>#{details['index']}</b>" in text
    for sample in result.outputs["samples"]["candidates"]:
        assert html.escape(sample.text, quote=False)[:60] in text
    calls = result.usage.by_node["tournament"].calls
    assert re.search(rf'<td><a href="#node-0-tournament">tournament</a></td><td>v1_tournament'
                     rf'</td>\s*<td class="ok">ok</td><td class="n">[\d.]+</td>\s*'
                     rf'<td class="n">{calls}</td>', text)
    if chromium() is not None:   # CI has it (test_report_browser.py checks pages without it)
        opened = open_page(page)
        assert opened.console == [] and 'id="node-0-tournament"' in opened.dom
