"""A quiet main job (issue 25): stdout carries answers (or JSON lines) only; the engines' own
output (this process's vLLM logger, the processes it spawns, native writes) goes to a log file
under $REASONLOOM_HOME/logs/, or to stderr with -v; the embedded model is converted once to
bfloat16, so the engine down-casts nothing at start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.cli import reasonloom

ROOT = Path(__file__).resolve().parents[1]

# A child process started inside the window keeps writing after it closed, as vLLM's engine
# core does; this process writes natively (fd 1 and 2) and through sys.stdout, which is (as
# under a rich live display) a stream on a duplicate of fd 1, not fd 1 itself.
ROUTED = textwrap.dedent("""
    import os, subprocess, sys
    from pathlib import Path
    from reasonloom.backends.vllm.engine_output import engine_output, send_engine_output_to
    sys.stdout = open(os.dup(1), "w", buffering=1)
    sys.stderr = open(os.dup(2), "w", buffering=1)
    send_engine_output_to(None if sys.argv[1] == "-" else Path(sys.argv[1]))
    with engine_output():
        os.write(1, b"native stdout inside\\n")
        os.write(2, b"native stderr inside\\n")
        print("python print inside")
        child = subprocess.Popen([sys.executable, "-c",
            "import sys, time; time.sleep(0.5); print('child stdout later', flush=True); "
            "print('child stderr later', file=sys.stderr, flush=True)"])
    print("ANSWER 7", flush=True)
    child.wait()
    print("status on stderr", file=sys.stderr, flush=True)
""")


def _routed(target: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ROUTED, target], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)


def test_engine_output_and_its_children_go_to_the_log_and_stdout_keeps_the_answer(tmp_path):
    log = tmp_path / "logs" / "engine.log"
    done = _routed(str(log))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ANSWER 7\n"
    assert done.stderr == "status on stderr\n"
    written = log.read_text().splitlines()
    assert {"native stdout inside", "native stderr inside", "python print inside",
            "child stdout later", "child stderr later"} <= set(written)


def test_verbose_engine_output_goes_to_stderr_never_stdout():
    done = _routed("-")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ANSWER 7\n"
    for line in ("native stdout inside", "native stderr inside", "python print inside",
                 "child stdout later", "child stderr later", "status on stderr"):
        assert line in done.stderr.splitlines()


def test_a_float32_conversion_is_not_taken_for_the_current_one(tmp_path):
    from reasonloom.backends.vllm.embedded import CONVERSION, CONVERSION_FILE, is_converted

    folder = tmp_path / "SmolLM2-135M-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"dtype": "float32"}))
    (folder / "model.safetensors").write_bytes(b"")
    assert not is_converted(folder)          # version 1 wrote no marker
    (folder / CONVERSION_FILE).write_text(json.dumps({**CONVERSION, "version": 1,
                                                      "dtype": "float32"}))
    assert not is_converted(folder)
    (folder / CONVERSION_FILE).write_text(json.dumps(CONVERSION))
    assert is_converted(folder)


# greedy_vs_vote.yaml's graph on the scripted backend
TWO_NODES = ("seed: 0\nmodels:\n  strong: {backend: scripted}\nnodes:\n"
             "  greedy: {type: generate, params: {n: 1, temperature: 0}}\n"
             "  vote: {type: self_consistency, params: {n: 8}}\noutput: vote\n")


def test_run_prints_the_answer_on_stdout_and_node_lines_and_cost_on_stderr(tmp_path):
    (tmp_path / "two.yaml").write_text(TWO_NODES)
    done = reasonloom(["run", str(tmp_path / "two.yaml"), "--input", "What is 2 + 2?"],
                      {**os.environ, "REASONLOOM_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    text, answer = done.stdout.splitlines()
    assert text.startswith("Let me think step by step.") and answer.startswith("answer: ")
    err = done.stderr.splitlines()
    greedy = [line for line in err if line.startswith("  - greedy (generate): answer ")]
    vote = [line for line in err if line.startswith("  - vote (self_consistency): answer ")]
    assert len(greedy) == 1 and len(vote) == 1 and " of 8 votes) | 1 call, " in vote[0]
    assert err[-1].startswith("cost $") and "calls 2" in err[-1]
    assert not (tmp_path / "home" / "logs").exists()   # no engine started: no log file


# small settings: the point is where every line goes, not the answers
SMALL = ["--set", "nodes.vote.params.n=2", "--set", "nodes.vote.params.max_tokens=24",
         "--set", "nodes.greedy.params.max_tokens=24"]
VLLM_MARKS = ("(EngineCore", "(Worker", "(MainProcess", "Loading safetensors", "INFO ",
              "WARNING ", "Attempted to load weight")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh $REASONLOOM_HOME: the first run converts the embedded model into it."""
    return tmp_path_factory.mktemp("quiet_home")


@pytest.mark.engine
def test_json_run_on_the_engine_prints_only_json_lines_on_stdout(home, tmp_path):
    rows = tmp_path / "rows.jsonl"
    questions = ["What is 2 + 3?", "What is 4 + 4?", "Tom has 3 apples and buys 4 more. "
                 "How many apples does he have now?"]
    rows.write_text("".join(json.dumps({"id": i, "question": q, "answer": None}) + "\n"
                            for i, q in enumerate(questions)))
    env = {**os.environ, "REASONLOOM_HOME": str(home)}
    done = reasonloom(["run", "recipes/greedy_vs_vote.yaml", "--dataset", str(rows),
                       "--json", *SMALL], env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2]   # every line parses
    assert all(json.loads(line)["status"] == "ok" for line in lines)
    # the log's path, once; the engine's own lines are there and not on stderr
    shown = [line for line in done.stderr.splitlines() if "engine log: " in line]
    assert len(shown) == 1
    log = Path(shown[0].split("engine log: ")[1].rstrip(")"))
    assert log.parent == home / "logs"
    engine_log = log.read_text()
    assert "(EngineCore" in engine_log and "Initializing a V1 LLM engine" in engine_log
    assert not [line for line in done.stderr.splitlines() if any(m in line for m in VLLM_MARKS)]
    # converted once to bfloat16: nothing to down-cast at start
    assert "Attempted to load weight" not in engine_log and "Downcasting" not in engine_log
    config = json.loads((home / "models" / "SmolLM2-135M-Instruct" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    # one finished-node line per node and problem on stderr, answers named
    nodes = [line for line in done.stderr.splitlines() if " - vote (self_consistency): " in line]
    assert len(nodes) == 3 and all("votes" in line for line in nodes)


@pytest.mark.engine
def test_verbose_run_shows_the_engine_log_on_stderr_and_stdout_stays_the_answer(home):
    env = {**os.environ, "REASONLOOM_HOME": str(home)}
    done = reasonloom(["run", "recipes/greedy_vs_vote.yaml", "--input", "What is 2 + 3?",
                       "--json", "-v", *SMALL], env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line)["status"] for line in done.stdout.splitlines()] == ["ok"]
    assert "(EngineCore" in done.stderr and "engine log: " not in done.stderr
