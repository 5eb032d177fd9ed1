"""`reasonloom bench`: graders, intervals, resume, plots, energy, bad input, a real run."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from reasonloom.bench.energy import RaplReader
from reasonloom.bench.graders import grade
from reasonloom.bench.stats import percentile, wilson_ci95
from reasonloom.cli.main import main

SCRIPTED = """\
seed: 0
models:
  strong: {backend: scripted, price_in_per_m: 1.0, price_out_per_m: 2.0}
nodes:
  vote: {type: self_consistency, params: {n: 3}}
"""


@pytest.mark.parametrize("grader, text, extracted, gold, ok", [
    ("math", "so the answer is 1/2", None, "0.5", True),
    ("math", "The answer is \\boxed{\\frac{3}{4}}", None, "0.75", True),
    ("math", "The answer is 1,000.", None, "1000", True),
    ("math", "The answer is 12", None, "13", False),
    ("numeric", "x", "12 cm", "12", True),
    ("numeric", "x", "12.5", "12", False),
    ("exact", "x", "Paris.", "paris", True),
    ("exact", "x", "Lyon", "paris", False),
    ("mc", "The answer is (C).", None, "C", True),
    ("mc", "The answer is B", None, "C", False),
    ("kv", "The value is 3f2a-77.", None, "3f2a-77", True),
    ("kv", "The value is 3f2a-78.", None, "3f2a-77", False),
])
def test_graders_agree_with_known_pairs(grader, text, extracted, gold, ok):
    assert grade(grader, text, extracted, gold) is ok


def test_wilson_interval_on_a_known_case():
    lo, hi = wilson_ci95(8, 10)   # textbook value: (0.490, 0.943)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_ci95(0, 5)[0] == 0.0 and wilson_ci95(5, 5)[1] == 1.0
    assert percentile([1, 2, 3, 4], 50) == 2.5


def test_rapl_reader_handles_wrap_around_on_a_fake_tree(tmp_path):
    domain = tmp_path / "intel-rapl:0"
    domain.mkdir()
    (tmp_path / "intel-rapl:0:0").mkdir()   # a sub-domain: must not be counted twice
    (domain / "max_energy_range_uj").write_text("1000000\n")
    (domain / "energy_uj").write_text("900000\n")
    reader = RaplReader(tmp_path)
    assert reader.available
    reader.sample()
    (domain / "energy_uj").write_text("100000\n")   # wrapped: 100001 + 100000 uJ later
    assert reader.sample() == pytest.approx(0.200001)
    (domain / "energy_uj").write_text("600000\n")
    assert reader.sample() == pytest.approx(0.700001)
    assert not RaplReader(tmp_path / "none").available


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bench_resumes_and_writes_valid_pngs(tmp_path, capsys):
    recipe = _write(tmp_path, "sc.yaml", SCRIPTED)
    data = _write(tmp_path, "d.jsonl", "\n".join(
        json.dumps({"id": i, "question": f"{i} + 0 = ?", "answer": str(i)}) for i in range(5)))
    out = tmp_path / "out"
    assert main(["bench", str(recipe), "--dataset", str(data), "--limit", "3",
                 "--out", str(out)]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    assert main(["bench", str(recipe), "--dataset", str(data), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [0, 1, 2, 3, 4]   # the first 3 were not redone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipes"]["sc"]["problems"] == 5 and summary["grader"] == "math"
    assert summary["recipes"]["sc"]["joules_per_problem"] is None   # no counter here
    for png in ("accuracy_vs_cost.png", "accuracy_vs_tokens.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content, args, words", [
    (None, [], "no such file"),
    ('{"question": "a", "answer": "1"}\nnot json\n', [], ":2: not a JSON line"),
    ('{"question": "a"}\n', [], ":1: missing field 'answer'"),
    ('{"question": "a", "answer": "1"}\n', ["--grader", "vibes"], "unknown grader"),
])
def test_bad_input_fails_before_any_call_with_one_line(tmp_path, capsys, monkeypatch,
                                                        content, args, words):
    import reasonloom.backends.factory as factory

    built = []
    monkeypatch.setattr(factory, "build_backend", lambda spec: built.append(spec))
    recipe = _write(tmp_path, "sc.yaml", SCRIPTED)
    data = tmp_path / "d.jsonl"
    if content is not None:
        data.write_text(content)
    assert main(["bench", str(recipe), "--dataset", str(data), "--out",
                 str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and built == []


@pytest.mark.engine
def test_a_five_problem_bench_of_two_recipes_on_the_engine_writes_every_file(tmp_path, arun):
    from tests.conftest import on_test_engine
    from reasonloom.bench.datasets import load_items
    from reasonloom.cli.bench_cmd import run_bench

    root = Path(__file__).resolve().parents[1]
    greedy = _write(tmp_path, "greedy.yaml", (root / "recipes/self_consistency.yaml").read_text())
    recipes = [on_test_engine(root / "recipes/self_consistency.yaml",
                              ["nodes.vote.params.n=3", "nodes.vote.params.max_tokens=48"]),
               on_test_engine(greedy, ["nodes.vote.params.n=1", "nodes.vote.params.max_tokens=48",
                                       "nodes.vote.params.temperature=0"])]
    items = load_items("reasoning-gym:basic_arithmetic", 5)
    out = tmp_path / "out"
    out.mkdir()
    args = argparse.Namespace(grader="math", concurrency=5, powercap_root="/nonexistent",
                              dataset="reasoning-gym:basic_arithmetic", limit=5)
    assert arun(run_bench(recipes, items, args, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["recipes"]) == {"self_consistency", "greedy"}
    for name, s in summary["recipes"].items():
        assert s["problems"] == 5 and s["mean_tokens"] > 0 and s["mean_cost_usd"] > 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(r["status"] == "ok" for r in rows)
    for png in ("accuracy_vs_cost.png", "accuracy_vs_tokens.png", "latency.png"):
        assert (out / png).stat().st_size > 1000
    report = (out / "report.html").read_text()   # the page: both recipes, every problem
    assert report.count('src="data:image/png;base64,') == 3
    assert all(f"<th>{name}</th>" in report for name in summary["recipes"])
    assert report.count("&#10003;") + report.count("&#10007;") == 10
