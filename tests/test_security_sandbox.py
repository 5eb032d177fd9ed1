"""Issue 26, the code sandbox: programs that switch the in-process guard rail off and then try
to escape (read host secrets, write host files, reach the host's loopback, enter its
namespaces, leave processes behind), and programs that try to forge a passing verdict.
Escapes are judged on the host side (benchmarks/hostile_code.py)."""
from __future__ import annotations

import pytest

from benchmarks.hostile_code import ATTACKS, FORGERIES, try_attack, try_forgery
from reasonloom.verifiers import sandbox
from reasonloom.verifiers.sandbox import IsolationUnavailable, SandboxLimits, run_code

LIMITS = SandboxLimits(cpu_s=2, wall_s=10, memory_mb=256)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_a_disarmed_guard_rail_still_leaves_no_way_out(attack):
    outcome = try_attack(attack, LIMITS)
    assert not outcome["escaped"], outcome


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_wrong_program_cannot_forge_a_pass(name):
    outcome = try_forgery(name, LIMITS)
    assert not outcome["forged"], outcome


def test_the_escape_checks_do_see_an_escape_without_isolation():
    """The control: the same host-side checks catch a write when nothing isolates it."""
    write = next(a for a in ATTACKS if a.name == "write_host_tmp")
    outcome = try_attack(write, LIMITS.model_copy(update={"isolation": "none"}))
    assert outcome["escaped"] and outcome["evidence"] == ["host_file"]


def test_a_right_answer_passes_across_the_process_boundary():
    program = ("class Box:\n    def __init__(self, v):\n        self.v = v\n"
               "    def get(self):\n        return {'v': (self.v, [1.5, None])}\n"
               "def gen(n):\n    yield from range(n)\n")
    tests = ("assert Box(3).get() == {'v': (3, [1.5, None])}\nassert list(gen(3)) == [0, 1, 2]\n"
             "try:\n    Box()\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError\n")
    result = run_code(program, tests, LIMITS)
    assert result.status == "passed", result.stderr


def test_no_isolation_means_one_line_refusal_unless_asked_for(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox.isolation_problem.cache_clear()
    try:
        with pytest.raises(IsolationUnavailable) as err:
            run_code("print(1)\n", "", LIMITS)
        assert "\n" not in str(err.value) and "isolation='none'" in str(err.value)
        unisolated = run_code("def f():\n    return 1\n", "assert f() == 1\n",
                              LIMITS.model_copy(update={"isolation": "none"}))
        assert unisolated.passed
    finally:
        sandbox.isolation_problem.cache_clear()
