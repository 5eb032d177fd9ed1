"""The cross-run call cache (issue 22): one pool of samples, written by several processes at
once, feeds every selection recipe; cached calls are billed what they cost, never free."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reasonloom.backends.errors import BackendError
from reasonloom.orchestrator.cache import RunStore, SharedCache, cache_stats, clear_cache
from reasonloom.recipe import Recipe

MODEL = """models:
  strong:
    backend: scripted
    model: pool-model
    price_in_per_m: 1.0
    price_out_per_m: 2.0
    options: {responder: seeded, delay_s: 0.05}
"""
VOTE = MODEL + """nodes:
  sc: {type: self_consistency, params: {n: 6, pool: p}}
output: sc
"""
ADAPTIVE = MODEL + """nodes:
  ac: {type: adaptive_consistency, params: {n: 6, wave: 2, pool: p}}
output: ac
"""


def reasonloom(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "REASONLOOM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "reasonloom.cli.main", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_json(recipe: Path, question: str, home: Path, *extra: str) -> dict:
    done = reasonloom(["run", str(recipe), "--input", question, "--json", *extra], home)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_processes_fill_one_store_that_a_replay_reads_whole(tmp_path: Path):
    recipe, store = write(tmp_path / "vote.yaml", VOTE), tmp_path / "pool.sqlite"
    env = {**os.environ, "REASONLOOM_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, "-m", "reasonloom.cli.main", "run", str(recipe),
                               "--input", f"question {i}", "--json", "--cache", str(store)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    live = [json.loads(p.communicate(timeout=120)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert cache_stats(store)["calls"] == 12   # 6 samples of each question, none lost
    assert cache_stats(store)["by_model"] == {"pool-model": 12}
    replay = write(tmp_path / "replay.yaml", VOTE + f"cache: {{mode: replay, path: {store}}}\n")
    for i, first in enumerate(live):   # replay: a call missing from the store is an error
        again = run_json(replay, f"question {i}", tmp_path / "home")
        assert again["answer"]["answer"] == first["answer"]["answer"]
        assert again["usage"]["total"]["cached_calls"] == again["usage"]["total"]["calls"] > 0


def test_a_second_strategy_reads_the_pool_and_is_billed_its_cost(tmp_path: Path):
    store = tmp_path / "pool.sqlite"
    vote = run_json(write(tmp_path / "vote.yaml", VOTE), "q", tmp_path / "home",
                    "--cache", str(store))
    adaptive = write(tmp_path / "ac.yaml", ADAPTIVE + f"cache: {{mode: replay, path: {store}}}\n")
    read = run_json(adaptive, "q", tmp_path / "home")
    total = read["usage"]["total"]
    assert total["cached_calls"] == total["calls"] and total["cost_usd"] == 0
    assert total["replayed_cost_usd"] > 0   # what those samples cost: never free
    assert total["replayed_cost_usd"] <= vote["usage"]["total"]["cost_usd"] + 1e-12


def test_replay_of_an_unknown_question_fails_naming_the_call(tmp_path: Path):
    store = tmp_path / "pool.sqlite"
    run_json(write(tmp_path / "vote.yaml", VOTE), "q", tmp_path / "home", "--cache", str(store))
    replay = write(tmp_path / "replay.yaml", VOTE + f"cache: {{mode: replay, path: {store}}}\n")
    done = reasonloom(["run", str(replay), "--input", "another question"], tmp_path / "home")
    assert done.returncode != 0
    assert "no cached result" in done.stderr and "Traceback" not in done.stderr


def test_the_runs_own_file_keeps_its_calls_so_a_resume_needs_no_shared_store(tmp_path: Path,
                                                                               monkeypatch):
    from reasonloom.orchestrator.scheduler import run

    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path / "home"))
    recipe = Recipe.from_text(VOTE)
    shared = SharedCache(tmp_path / "pool.sqlite")
    first = asyncio.run(run(recipe.graph, "q", recipe.build_roles(), run_id="r1",
                            cache="record", shared_cache=shared))
    assert RunStore.for_run("r1").count_calls() == shared.count_calls() == 6
    shared.close()
    assert clear_cache(tmp_path / "pool.sqlite") == 6

    def down(_req):
        return BackendError("the model is gone")

    roles = recipe.build_roles()
    roles["strong"].backend.faults = down   # any call that reaches the model fails
    empty = SharedCache(tmp_path / "pool.sqlite")
    again = asyncio.run(run(recipe.graph, "q", roles, run_id="r1", cache="read_write",
                            shared_cache=empty))
    empty.close()
    assert again.answer.answer == first.answer.answer
    assert again.usage.total.cached_calls == 6


def test_bench_reports_cached_calls_apart_and_prices_them(tmp_path: Path):
    data = write(tmp_path / "d.jsonl", "".join(
        json.dumps({"question": f"what is {i}?", "answer": str(i)}) + "\n" for i in range(3)))
    recipe, store = write(tmp_path / "vote.yaml", VOTE), tmp_path / "pool.sqlite"
    summaries = []
    for out in ("first", "second"):
        done = reasonloom(["bench", str(recipe), "--dataset", str(data), "--cache", str(store),
                           "--out", str(tmp_path / out)], tmp_path / "home")
        assert done.returncode == 0, done.stderr
        summaries.append(json.loads((tmp_path / out / "summary.json").read_text())
                         ["recipes"]["vote"])
    first, second = summaries
    assert first["cached_calls"] == 0 and second["cached_calls"] == second["calls"] == 6
    assert first["mean_cost_usd"] > 0
    assert second["mean_cost_usd"] == pytest.approx(first["mean_cost_usd"])
    assert second["mean_cached_cost_usd"] == pytest.approx(second["mean_cost_usd"])


def test_cache_stats_and_clear_on_the_command_line(tmp_path: Path):
    store = tmp_path / "pool.sqlite"
    run_json(write(tmp_path / "vote.yaml", VOTE), "q", tmp_path / "home", "--cache", str(store))
    stats = reasonloom(["cache", "stats", str(store), "--json"], tmp_path / "home")
    assert json.loads(stats.stdout)["by_model"] == {"pool-model": 6}
    cleared = reasonloom(["cache", "clear", str(store)], tmp_path / "home")
    assert cleared.stdout.startswith("cleared 6 cached calls")
    assert cache_stats(store)["calls"] == 0


def test_cache_mode_alone_or_with_a_path_in_a_recipe():
    assert Recipe.from_text(VOTE + "cache: read_write\n").spec.cache.path is None
    spec = Recipe.from_text(VOTE + "cache: {mode: replay, path: ~/p.sqlite}\n").spec.cache
    assert spec.mode == "replay" and spec.path == str(Path("~/p.sqlite").expanduser())
    assert Recipe.from_text(VOTE).with_shared_cache("/tmp/x.sqlite").spec.cache.mode == \
        "read_write"
    with pytest.raises(ValueError, match="cache.mode"):
        Recipe.from_text(VOTE + "cache: {mode: sometimes}\n")
