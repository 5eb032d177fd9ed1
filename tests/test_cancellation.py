"""Issue 26 (clean cancellation): Ctrl-C in `reasonloom chat`, a client that hangs up on the
server, and a budget stop leave no pending task and no ContextVar error behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.serving import ServeProcess, write_scripted_recipes

UNCLEAN = ("Task was destroyed but it is pending", "was created in a different Context",
           "Traceback", "never awaited")
SLOW = """seed: 0
models:
  strong: {backend: scripted, options: {responder: echo, delay_s: 8}}
nodes:
  samples: {type: best_of_n, params: {n: 3, max_tokens: 32}}
  vote: {type: majority, inputs: {candidates: samples.candidates}}
output: vote
"""


def test_ctrl_c_in_chat_stops_the_answer_and_leaves_nothing_pending(tmp_path: Path):
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(SLOW)
    chat = subprocess.Popen([sys.executable, "-m", "reasonloom.cli.main", "chat", str(recipe)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        chat.stdin.write(b"a question that takes eight seconds\n")
        chat.stdin.flush()
        deadline = time.monotonic() + 60
        seen = b""
        os.set_blocking(chat.stdout.fileno(), False)
        while b"started" not in seen and time.monotonic() < deadline:
            seen += chat.stdout.read() or b""
            time.sleep(0.1)
        chat.send_signal(signal.SIGINT)
        time.sleep(1)
        chat.stdin.write(b"/quit\n")
        chat.stdin.flush()
        out, err = chat.communicate(timeout=60)
    finally:
        chat.kill()
    assert chat.returncode == 0
    assert b"(interrupted)" in seen + out
    assert not any(text in err.decode() for text in UNCLEAN), err.decode()


def test_budget_stop_leaves_nothing_pending(tmp_path: Path):
    recipe = tmp_path / "budget.yaml"
    recipe.write_text(SLOW.replace("delay_s: 8", "delay_s: 0.5").replace(
        "output: vote", "output: vote\nbudget: {tokens: 60}"))
    env = {**os.environ, "REASONLOOM_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "reasonloom.cli.main", "run", str(recipe),
                           "--input", "a question long enough to run past sixty tokens " * 3],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 3 and "budget exceeded" in proc.stderr
    assert not any(text in proc.stderr for text in UNCLEAN), proc.stderr


def test_clients_that_hang_up_leave_nothing_pending_in_the_server(tmp_path: Path):
    server = ServeProcess(write_scripted_recipes(tmp_path / "recipes"), tmp_path / "serve.log")
    try:
        for _ in range(3):
            with httpx.stream("POST", f"{server.base}/v1/chat/completions", timeout=30,
                              json={"model": "slow", "stream": True,
                                    "messages": [{"role": "user", "content": "x" * 200}]}) as r:
                for i, _line in enumerate(r.iter_lines()):
                    if i > 4:
                        break   # hang up mid-stream
        try:
            httpx.post(f"{server.base}/v1/chat/completions", timeout=0.5,
                       json={"model": "slow", "messages": [{"role": "user", "content": "y" * 80}]})
        except httpx.ReadTimeout:
            pass   # hung up on a non-streaming run
        time.sleep(1)
        assert httpx.get(f"{server.base}/health", timeout=5).json()["running"] == 0
    finally:
        server.stop()
    log = server.log.read_text()
    assert not any(text in log for text in UNCLEAN), log[-2000:]
