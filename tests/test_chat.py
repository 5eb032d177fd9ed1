"""`reasonloom chat` in a real pseudo-terminal (pexpect): tokens appear while the answer is
still being written, progress and cost show, the conversation is kept, and the commands work;
once on a recipe run in the chat's own process, once against `reasonloom serve`."""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.support.serving import ServeProcess, write_scripted_recipes

KEY = "chat-test-key"


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    return write_scripted_recipes(tmp_path_factory.mktemp("chat_recipes"))


def spawn(*args: str, env: dict | None = None) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "reasonloom.cli.main", "chat", *args],
                          env={**os.environ, "COLUMNS": "200", **(env or {})},
                          encoding="utf-8", timeout=60, dimensions=(50, 200))
    child.expect("you> ")
    return child


def check_chat(child: pexpect.spawn, progress_pattern: str) -> None:
    # slow: one character every 0.1 s, so the answer takes ~4 s to write
    child.sendline("hello there")
    child.expect("You s")
    first = time.monotonic()
    assert re.search(progress_pattern, child.before)   # node progress shows before tokens
    assert "The answer is" not in child.before         # the end is not on screen yet
    child.expect(r"The answer is \d\.")
    assert time.monotonic() - first > 1.0              # it arrived token by token after
    child.expect(r"\[\$(\d+\.\d+) \| (\d+) tokens \| 1 calls")
    cost = float(child.match.group(1))
    assert cost > 0
    child.expect("you> ")
    # multi-turn: the second question is answered as the last of three messages
    child.sendline("and again")
    child.expect(r"You said: and again The answer is \d\.")
    child.expect("you> ")
    child.sendline("/cost")
    child.expect("you> ")
    ledger = " ".join(child.before.split())   # rich may wrap the lines
    found = re.search(r"ledger: last run \$(\d+\.\d+) \(1 calls, (\d+) prompt .*this chat "
                      r"\$(\d+\.\d+) over 2 runs", ledger)
    assert found, ledger
    second_prompt = int(found.group(2))
    assert float(found.group(3)) > cost
    assert re.search(r"by model.*strong.*by node.*answer", ledger)
    child.sendline("/trace")
    child.expect("events")
    child.expect("you> ")
    assert "call_finished" in child.before or "stream" in child.before
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.expect("you> ")
    child.sendline("and again")   # after /reset the prompt holds one turn again
    child.expect(r"You said: and again")
    child.expect("you> ")
    child.sendline("/cost")
    child.expect("you> ")
    found = re.search(r"ledger: last run \$\d+\.\d+ \(1 calls, (\d+) prompt",
                      " ".join(child.before.split()))
    assert found and int(found.group(1)) < second_prompt
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_with_a_local_recipe_streams_and_keeps_the_conversation(recipes):
    child = spawn(str(recipes / "slow.yaml"))
    check_chat(child, r"> answer \(generate\) started")


def test_chat_against_a_server_shows_progress_from_sse_comments(recipes, tmp_path):
    server = ServeProcess(recipes, tmp_path / "serve.log", api_key=KEY)
    try:
        child = spawn("--url", f"{server.base}/v1", "--model", "slow",
                      env={"REASONLOOM_API_KEY": KEY})
        check_chat(child, r"> answer \(generate\) started")
        wrong = spawn("--url", f"{server.base}/v1", "--model", "slow",
                      env={"REASONLOOM_API_KEY": "wrong"})
        wrong.sendline("hi")
        wrong.expect("error: HTTP 401")
        wrong.sendline("/quit")
        wrong.expect(pexpect.EOF)
    finally:
        server.stop()


def test_chat_usage_errors_are_one_line(tmp_path):
    child = pexpect.spawn(sys.executable, ["-m", "reasonloom.cli.main", "chat"],
                          encoding="utf-8", timeout=30)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2 and "Traceback" not in child.before
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {}\nnodes: {}\n")
    child = pexpect.spawn(sys.executable, ["-m", "reasonloom.cli.main", "chat", str(bad)],
                          encoding="utf-8", timeout=30)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2 and len(child.before.strip().splitlines()) == 1
