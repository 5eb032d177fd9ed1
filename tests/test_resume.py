"""Durable runs: SIGKILL a `reasonloom run` mid-way, resume it, get the same answer."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    time.sleep(1.6)   # about 3 of the 6 calls (0.4 s each, one at a time) have completed
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
