"""Reliability without an engine (issue 14): a budget stop hands back the last published best
and `reasonloom run` prints it as a partial answer; optional calls that exhaust their retries
are dropped, not fatal; prompts and documents are data, never templates; recipes cannot run
code; the sandbox holds against escape attempts; the server limits each API key and leaks no
key or traceback."""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import openai
import pytest

from reasonloom.backends.errors import ServerError
from reasonloom.backends.scripted import ScriptedBackend, echo_answer
from reasonloom.orchestrator.budget import BudgetExceeded
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import RetryPolicy, Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.seeds import derive_seed
from reasonloom.orchestrator.types import Problem
from reasonloom.recipe import Recipe, RecipeError, load_recipe
from reasonloom.verifiers.sandbox import SandboxLimits, run_code
from tests.support.cli import reasonloom


# -- budget: the last published best comes back ------------------------------------------------
# Loop 1 (4 samples, 100 tokens reserved each) fits the 600-token budget; loop 2's concurrent
# recombinations (each reserving its prompt + 100) cannot all start: the run stops in loop 2.
EVOLVE = """\
seed: 3
models:
  strong: {backend: scripted, price_in_per_m: 1.0, price_out_per_m: 4.0}
  cheap: {backend: scripted, price_in_per_m: 0.1, price_out_per_m: 0.4}
order: [strong, cheap]
nodes:
  evolve:
    type: evolve
    params: {population: 4, group_size: 2, loops: 3, cut_points: [50], scorer: cheap,
             max_tokens: 100}
    inputs: {problem: problem}
output: evolve
budget: {tokens: 600}
"""
QUESTION = "What is 4 + 5?"


@pytest.fixture
def evolve_recipe(tmp_path) -> Path:
    path = tmp_path / "evolve_budget.yaml"
    path.write_text(EVOLVE)
    return path


def loop1_answer(path: Path) -> str:
    """What evolve publishes after loop 1: the same recipe cut to one loop, no budget."""
    one_loop = load_recipe(path, ["nodes.evolve.params.loops=1", "budget={}"])
    return asyncio.run(one_loop.arun(QUESTION)).answer.text


def test_budget_stop_returns_the_last_published_best_inside_budget_exceeded(evolve_recipe):
    with pytest.raises(BudgetExceeded, match="token budget 600") as stop:
        asyncio.run(load_recipe(evolve_recipe).arun(QUESTION))
    exc = stop.value
    assert exc.best is not None and exc.best.text == loop1_answer(evolve_recipe)
    partial = exc.partial
    assert partial.status == "budget_exceeded" and partial.answer == exc.best
    assert partial.usage.total.calls >= 1 + 4   # loop 1's sampling call and loop 2's scoring
    assert partial.usage.total.prompt_tokens + partial.usage.total.completion_tokens <= 600


def test_reasonloom_run_prints_the_partial_answer_and_exits_3(evolve_recipe, tmp_path):
    env = {**os.environ, "REASONLOOM_HOME": str(tmp_path / "home")}
    expected = loop1_answer(evolve_recipe)
    out = reasonloom(["run", str(evolve_recipe), "--input", QUESTION], env)
    assert out.returncode == 3, out.stderr
    assert f"PARTIAL ANSWER (budget exhausted): {expected}" in out.stdout.splitlines()
    assert "budget exceeded: token budget 600" in out.stderr and "Traceback" not in out.stderr
    as_json = reasonloom(["run", str(evolve_recipe), "--input", QUESTION, "--json"], env)
    assert as_json.returncode == 3
    summary = json.loads(as_json.stdout)
    assert summary["status"] == "budget_exceeded" and summary["answer"]["text"] == expected


# -- degradation: an optional call that exhausts its retries is dropped -------------------------
def test_a_sample_whose_retries_run_out_is_dropped_and_the_vote_goes_on():
    bad_seed = derive_seed(0, "vote", "samples", 2)
    backend = ScriptedBackend(supports_n=False, faults=lambda req: ServerError("503 again")
                              if req.seed == bad_seed else None)
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002)
    roles = Roles({"strong": Role(RoleSpec(name="strong", retry=policy), backend)})
    records: list = []
    graph = Graph().add("vote", "self_consistency", {"n": 6, "may_fail": 1})
    result = asyncio.run(run(graph, "2+2?", roles, seed=0,
                             subscribers=[lambda e: records.append(e.to_json())]))
    assert result.answer.details["samples"] == 5
    assert [d["call_key"] for d in result.dropped] == ["samples/2"]
    failed = [e for e in records if e["event"] == "call_finished" and not e["ok"]]
    assert len(failed) == 3   # every attempt the policy allowed was made and recorded
    assert result.usage.total.failed_calls == 3 and result.usage.total.calls == 5 + 3


# -- untrusted input: prompts and documents are data ----------------------------------------------
HOSTILE = ("Compute {problem} + {{x}} - {0} {x.__class__} {!r} and ${HOME} $(whoami) `id` "
           "%s %(name)s {% for i in range(3) %}{{ i }}{% endfor %} {{ config.__class__ }} "
           "{#- c -#} <script>alert(1)</script>")


def recording_roles() -> tuple[Roles, list]:
    seen: list = []

    def responder(req, index):
        seen.append(req)
        return echo_answer(req, index)

    backend = ScriptedBackend(responder)
    spec = RoleSpec(name="strong")
    return Roles({"strong": Role(spec, backend),
                  "cheap": Role(RoleSpec(name="cheap"), backend)},
                 order=["strong", "cheap"]), seen


@pytest.mark.parametrize("node_type,params,inputs", [
    ("generate", {"n": 1, "stream_answer": True, "max_tokens": 32}, None),
    ("self_consistency", {"n": 3}, None),
    ("evolve", {"population": 4, "group_size": 2, "loops": 2, "cut_points": [50],
                "scorer": "cheap", "max_tokens": 64}, None),
    ("moa", {"layers": [[{"role": "strong", "max_tokens": 32}, {"role": "cheap",
                                                                   "max_tokens": 32}]],
             "aggregator": {"role": "strong", "max_tokens": 64}}, None),
    ("v1_tournament", {"reasoning": False, "max_tokens": 8}, "samples"),
])
def test_template_syntax_in_a_question_reaches_every_prompt_verbatim(node_type, params, inputs):
    roles, seen = recording_roles()
    graph = Graph()
    if inputs:
        graph.add("samples", "best_of_n", {"n": 4, "max_tokens": 32}, {"problem": "problem"})
        graph.add("pick", node_type, params, {"problem": "problem",
                                              "candidates": "samples.candidates"})
        graph.set_output("pick")
    else:
        graph.add("pick", node_type, params, {"problem": "problem"}).set_output("pick")
    result = asyncio.run(run(graph, Problem.from_text(HOSTILE), roles, seed=1))
    assert seen, "no call reached the backend"
    for req in seen:
        shown = "\n".join(m.content for m in req.messages)
        assert HOSTILE in shown, shown[:300]
        if "### " in shown:   # candidates shown back (echoes of the question) stay verbatim
            assert shown.count(HOSTILE) >= 2
    assert HOSTILE in result.answer.text or node_type == "v1_tournament"
    assert os.environ.get("HOME", "/nonexistent-home") not in "".join(
        m.content for req in seen for m in req.messages)


def test_template_syntax_in_a_document_reaches_the_workers_verbatim():
    roles, seen = recording_roles()
    document = f"Record 1: {HOSTILE}\nRecord 2: the key is {{{{ secret }}}} = ${{KEY}}\n"
    problem = Problem.from_text("Which key is in the records?", context=document)
    graph = Graph().add("read", "chunked", {"chunk_tokens": 4000, "overlap_tokens": 0,
                                            "worker_max_tokens": 16, "manager_max_tokens": 16})
    asyncio.run(run(graph.set_output("read"), problem, roles, seed=0))
    shown = ["\n".join(m.content for m in req.messages) for req in seen]
    assert any(document.strip() in text for text in shown)


def test_reasonloom_run_passes_a_hostile_question_through_verbatim(tmp_path):
    recipe = tmp_path / "echo.yaml"
    recipe.write_text("models:\n  strong: {backend: scripted, options: {responder: echo}}\n"
                      "nodes:\n  answer: {type: generate, params: {n: 1, max_tokens: 64}}\n"
                      "output: answer\n")
    env = {**os.environ, "REASONLOOM_HOME": str(tmp_path / "home")}
    out = reasonloom(["run", str(recipe), "--input", HOSTILE, "--json"], env)
    assert out.returncode == 0, out.stderr
    text = json.loads(out.stdout)["answer"]["text"]
    assert text.startswith(f"You said: {HOSTILE} The answer is ")


# -- recipes cannot run code ------------------------------------------------------------------------
BASE = "seed: 0\nmodels:\n  strong: {backend: scripted}\nnodes:\n  a: {type: best_of_n}\n"


@pytest.mark.parametrize("payload", [
    "description: !!python/object/apply:os.system ['touch {marker}']\n",
    "description: !!python/object/apply:os.system {{args: ['touch {marker}']}}\n",
    "description: !!python/object/apply:os.system\n  - touch {marker}\n",
    "description: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    "description: !!python/name:os.system\n",
    "description: !!python/module:os\n",
    "x: !!python/object:__main__.Evil {{a: 1}}\n",
])
def test_python_yaml_tags_are_rejected_with_one_line(payload, tmp_path):
    marker = tmp_path / "pwned"
    text = BASE + payload.format(marker=marker)
    with pytest.raises(RecipeError) as err:
        Recipe.from_text(text, "evil.yaml")
    message = str(err.value)
    assert message.startswith("evil.yaml:") and "\n" not in message
    assert "tag" in message or "constructor" in message
    assert not marker.exists()


def test_a_params_mapping_with_a_python_tag_is_not_read_as_a_plain_dict(tmp_path):
    text = ("models:\n  strong: {backend: scripted}\nnodes:\n"
            "  a: {type: best_of_n, params: !!python/object/new:dict {n: 2}}\n")
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match="evil.yaml:4:.*not allowed"):
        load_recipe(path)
    out = reasonloom(["validate", str(path)])
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "Traceback" not in out.stderr and "not allowed in a recipe" in out.stderr


def test_an_alias_bomb_is_refused_before_it_expands():
    bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    t0 = time.monotonic()
    with pytest.raises(RecipeError, match="aliases"):
        Recipe.from_text(bomb + BASE, "bomb.yaml")
    assert time.monotonic() - t0 < 5


# -- the sandbox against escape attempts --------------------------------------------------------------
FAST = SandboxLimits(cpu_s=2, wall_s=5, memory_mb=256)


@pytest.mark.parametrize("program", [
    "import os\nos.close(os.open({target!r}, os.O_WRONLY | os.O_CREAT))\n",
    "import pathlib\npathlib.Path({target!r}).write_text('x')\n",
    "import shutil\nopen('a', 'w').write('x')\nshutil.copy('a', {target!r})\n",
    "import os\nopen('a', 'w').write('x')\nos.replace('a', {target!r})\n",
    "import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('x')\n",
    "import os\nos.chdir(os.path.dirname({target!r}))\nopen(os.path.basename({target!r}), 'w')\n",
    "open('/proc/self/root' + {target!r}, 'w').write('x')\n",
    "import os\nfd = os.open(os.path.dirname({target!r}), os.O_RDONLY)\n"
    "os.open(os.path.basename({target!r}), os.O_WRONLY | os.O_CREAT, dir_fd=fd)\n",
    "import sqlite3\nsqlite3.connect({target!r}).execute('create table t (x)')\n",
    "import os\nos.mkfifo({target!r})\n",
])
def test_writes_outside_the_sandbox_directory_are_blocked(program, tmp_path):
    target = str(tmp_path / "escaped")
    result = run_code(program.format(target=target), "", FAST)
    # the guard rail refuses it (blocked), or the host path is not in the sandbox at all
    assert result.status in ("blocked", "failed"), result.stderr
    assert not os.path.lexists(target)


def test_files_inside_the_sandbox_directory_still_work():
    program = ("import os, sqlite3, pathlib\npathlib.Path('d').mkdir()\n"
               "pathlib.Path('d/x.txt').write_text('ok')\nos.replace('d/x.txt', 'y.txt')\n"
               "sqlite3.connect('local.db').execute('create table t (x)')\nos.mkfifo('fifo')\n"
               "import subprocess, asyncio   # importable, as long as nothing is started\n"
               "assert open('y.txt').read() == 'ok'\n")
    assert run_code(program, "", FAST).status == "passed"


@pytest.mark.parametrize("program", [
    "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.sendto(b'x', ('10.0.0.1', 53))\n",
    "import _socket\n_socket.socket().connect(('127.0.0.1', 80))\n",
    "import socket\nsocket.getaddrinfo('example.com', 80)\n",
    "import http.client\nhttp.client.HTTPConnection('127.0.0.1', 80, timeout=1).request('GET', '/')\n",
])
def test_network_escape_attempts_are_blocked(program):
    assert run_code(program, "", FAST).status == "blocked"


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs CAP_SYS_ADMIN here")
def test_the_sandbox_sees_only_a_loopback_interface():
    result = run_code("print(open('/proc/net/dev').read())\n", "", FAST)
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines()[2:]
                  if ":" in line]
    assert interfaces == ["lo"]


@pytest.mark.parametrize("bomb", [
    "import os\nwhile True:\n    os.fork()\n",
    "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()\n",
    "import _posixsubprocess, os\nr, w = os.pipe()\nwhile True:\n"
    "    _posixsubprocess.fork_exec(['/bin/sh'], [b'/bin/sh'], True, (), None, None, -1, -1,"
    " -1, -1, -1, -1, r, w, True, False, 0, None, None, None, -1, None, False)\n",
    "import sys\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess\n",
    "import os\nwhile True:\n    os.posix_spawn('/bin/sh', ['sh'], {})\n",
    "import pty\nwhile True:\n    pty.fork()\n",
    "import ctypes\nwhile True:\n    ctypes.CDLL(None).fork()\n",
    "import ctypes\nwhile True:\n    ctypes.pythonapi.fork()\n",
])
def test_fork_bombs_are_stopped_at_the_first_fork(bomb):
    t0 = time.monotonic()
    result = run_code(bomb, "", FAST)
    assert result.status == "blocked", result.stderr
    assert time.monotonic() - t0 < FAST.wall_s   # refused, not timed out


def test_a_thread_bomb_is_contained_by_the_limits():
    bomb = ("import threading, time\nwhile True:\n"
            "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    t0 = time.monotonic()
    result = run_code(bomb, "", FAST)
    assert result.status in ("failed", "memory", "timeout")
    assert "can't start new thread" in result.stderr or result.status != "failed"
    assert time.monotonic() - t0 < FAST.wall_s + 3


@pytest.mark.parametrize("program", [
    "import os\nprint(dict(os.environ))\n",
    "print(open('/proc/self/environ', 'rb').read())\n",
    "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())\n",
    "import os\nprint(open(f'/proc/self/root/proc/{os.getppid()}/environ', 'rb').read())\n",
    "print(open('/proc/1/environ', 'rb').read())\n",
    "import os\nprint(os.listdir(f'/proc/{os.getppid()}/fd'))\n",
])
def test_environment_secrets_never_reach_the_program(program, monkeypatch):
    monkeypatch.setenv("REASONLOOM_TEST_SECRET", "hunter2-b7")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-b7")
    result = run_code(program, "", FAST)
    assert result.status in ("passed", "blocked", "failed")   # failed: the kernel refused
    assert "hunter2-b7" not in result.stdout + result.stderr
    assert "sk-test-secret-b7" not in result.stdout + result.stderr


# -- the server: per-key limits, no keys or tracebacks out ------------------------------------------
KEY_A, KEY_B = "key-a-71c3e0d9", "key-b-0f5e2a44"
UPSTREAM_SECRET = "sk-upstream-secret-9d2f"
LEAKY = """
seed: 0
models:
  strong: {backend: openai, model: x, base_url: "http://127.0.0.1:9/v1",
           api_key_env: RELIABILITY_UPSTREAM_API_KEY, retry: {max_attempts: 1}}
nodes:
  answer: {type: generate, params: {n: 1, max_tokens: 8}}
output: answer
"""


@pytest.fixture
def recipes(tmp_path, monkeypatch) -> Path:
    from tests.support.serving import write_scripted_recipes

    monkeypatch.setenv("RELIABILITY_UPSTREAM_API_KEY", UPSTREAM_SECRET)
    folder = write_scripted_recipes(tmp_path / "recipes")
    (folder / "leaky.yaml").write_text(LEAKY)
    return folder


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# `slow` echoes one character per 0.1 s: this run stays in progress for ~30 s (until closed).
HOLD = ask("hold the slot " * 20)


def test_one_key_at_its_limit_gets_429_while_another_key_still_runs(recipes):
    from reasonloom.serve.app import create_app
    from reasonloom.serve.catalog import Catalog
    from tests.support.serving import ThreadServer

    app = create_app(Catalog.from_dir(recipes), api_key=[KEY_A, KEY_B], max_running=8,
                     max_running_per_key=1)
    server = ThreadServer(app)
    try:
        a = openai.OpenAI(base_url=f"{server.base}/v1", api_key=KEY_A, max_retries=0)
        b = openai.OpenAI(base_url=f"{server.base}/v1", api_key=KEY_B, max_retries=0)
        held = a.chat.completions.create(model="slow", messages=HOLD, stream=True)
        next(iter(held))   # A's one run is in progress
        t0 = time.monotonic()
        with pytest.raises(openai.RateLimitError) as err:
            a.chat.completions.create(model="echo", messages=ask("second"))
        assert time.monotonic() - t0 < 1
        assert err.value.body["code"] == "too_many_runs_for_key"
        assert KEY_A not in json.dumps(err.value.body)
        out = b.chat.completions.create(model="echo", messages=ask(HOSTILE))
        assert out.choices[0].message.content.startswith(f"You said: {HOSTILE} ")
        held.close()
        state = app.app.state
        deadline = time.monotonic() + 3
        while state.runs.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.runs.by_key == {}
        assert a.chat.completions.create(model="echo", messages=ask("again")).choices
    finally:
        server.stop()


def test_responses_and_logs_hold_no_key_and_no_traceback(recipes, tmp_path):
    from tests.support.serving import ServeProcess

    server = ServeProcess(recipes, tmp_path / "serve.log", api_key=f"{KEY_A},{KEY_B}",
                          extra=("--max-running-per-key", "1"))
    bodies: list[str] = []
    try:
        url = f"{server.base}/v1/chat/completions"

        def post(key: str, **body) -> httpx.Response:
            resp = httpx.post(url, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                              json={"model": "echo", "messages": ask("q"), **body})
            bodies.append(resp.text)
            return resp

        assert post("wrong-" + KEY_A).status_code == 401
        assert post(KEY_A, model="leaky").status_code == 500   # upstream unreachable
        assert post(KEY_B, messages=5).status_code == 400
        assert post(KEY_B, model="echo", max_tokens="many").status_code == 400
        with httpx.stream("POST", url, headers={"Authorization": f"Bearer {KEY_A}"},
                          json={"model": "slow", "messages": HOLD, "stream": True},
                          timeout=30) as held:
            lines = held.iter_lines()   # kept: a dropped iterator closes the connection
            next(lines)
            limited = post(KEY_A)
            assert limited.status_code == 429
            assert limited.json()["error"]["code"] == "too_many_runs_for_key"
            assert post(KEY_B).status_code == 200
        stream = httpx.post(url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=30,
                            json={"model": "leaky", "messages": ask("q"), "stream": True})
        bodies.append(stream.text)
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    for text in [*bodies, log]:
        assert "Traceback" not in text and 'File "' not in text
        for secret in (KEY_A, KEY_B, UPSTREAM_SECRET):
            assert secret not in text
    assert "leaky" in log or "failed" in log   # the failure is logged, in one line
