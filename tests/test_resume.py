"""Durable runs: SIGKILL a `reasonloom run` mid-way, resume it, get the same answer."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

RECIPE = """\
seed: 5
models:
  strong:
    backend: scripted
    concurrency: 1
    options: {delay_s: 0.4}
nodes:
""" + "".join(f"  s{i}: {{type: best_of_n, params: {{n: 2}}}}\n" for i in range(6)) + """\
  vote:
    type: majority
    inputs: {candidates: [s0.candidates, s1.candidates, s2.candidates, s3.candidates,
                          s4.candidates, s5.candidates]}
output: vote
"""


def reasonloom(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reasonloom.cli.main", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def stored_calls(home: Path, run_id: str) -> int:
    """Calls the run has finished and stored so far (its SQLite files under home/runs)."""
    count = 0
    for path in (home / "runs").glob(f"{run_id}*.sqlite"):
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                count += db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        except sqlite3.Error:   # not created yet, or mid-write
            pass
    return count


def test_a_killed_run_resumes_reissuing_only_unfinished_calls(tmp_path):
    env = {**os.environ, "REASONLOOM_HOME": str(tmp_path / "home")}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    clean = reasonloom(["run", str(recipe), "--input", "what?", "--json"], env)
    assert clean.returncode == 0, clean.stderr
    expected = json.loads(clean.stdout)

    proc = subprocess.Popen([sys.executable, "-m", "reasonloom.cli.main", "run", str(recipe),
                             "--input", "what?", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    line = proc.stderr.readline()
    assert line.startswith("run "), line
    run_id = line.split()[1]
    # kill once 2 of the 6 calls (0.4 s each, one at a time) are stored: an event to wait
    # for, not a guess of how long a loaded machine takes to get there
    deadline = time.monotonic() + 60
    while stored_calls(tmp_path / "home", run_id) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    resumed = reasonloom(["run", "--resume", run_id, "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["answer"]["text"] == expected["answer"]["text"]
    assert out["answer"]["answer"] == expected["answer"]["answer"]
    total = out["usage"]["total"]
    assert total["calls"] == 6
    assert 1 <= total["cached_calls"] <= 5   # finished calls came back, the rest re-ran

    again = reasonloom(["run", "--resume", run_id, "--json"], env)   # finished: no calls
    assert json.loads(again.stdout)["answer"] == out["answer"]


def test_resuming_an_unknown_run_is_one_clear_line(tmp_path):
    env = {**os.environ, "REASONLOOM_HOME": str(tmp_path)}
    res = reasonloom(["run", "--resume", "nope"], env)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "no run 'nope'" in res.stderr
