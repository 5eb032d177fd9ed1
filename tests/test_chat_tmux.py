"""`reasonloom chat` in a tmux pane, seen the way a user sees it: keys go in with send-keys and
the screen is read back with capture-pane. The answer grows on screen token by token under the
node progress lines, Ctrl-C stops an answer and leaves the chat at its prompt (on the real
engine too, whose worker processes share the terminal), `/cost` shows what the conversation
cost, and a backend nobody listens on gives one error line, no traceback."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from tests.support.serving import free_port, write_scripted_recipes
from tests.support.tmux import TmuxPane

SUPPORT = Path(__file__).parent / "support" / "recipes"
FOOTER = r"\[\$(\d+\.\d+) \| (\d+) tokens \| 1 calls"


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    return write_scripted_recipes(tmp_path_factory.mktemp("tmux_recipes"))


def chat_pane(tmp_path: Path, *args: str, start_s: float = 60) -> TmuxPane:
    pane = TmuxPane([sys.executable, "-m", "reasonloom.cli.main", "chat", *args], tmp_path)
    try:
        prompts(pane, 1, start_s)
    except BaseException:
        pane.close()
        raise
    return pane


def prompts(pane: TmuxPane, count: int, timeout_s: float) -> str:
    """Wait until the pane shows its `count`-th `you>` prompt; return the screen."""
    deadline = time.monotonic() + timeout_s
    while True:
        screen = pane.screen()
        if len(re.findall(r"^you>", screen, re.M)) >= count:
            return screen
        if pane.exit_status() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no prompt #{count} after {timeout_s:.0f}s:\n{screen[-3000:]}")
        time.sleep(0.1)


def turn_lines(screen: str, question: str) -> list[str]:
    """The lines the chat printed after the last `you> QUESTION`, up to the next prompt."""
    tail = screen.rsplit(f"you> {question}\n", 1)[-1]
    return list(re.split(r"^you>", tail, maxsplit=1, flags=re.M)[0].splitlines())


def answer_text(screen: str, question: str) -> str:
    """What is on screen of the answer to QUESTION: its lines minus progress (indented),
    the footer and the interruption notice."""
    lines = [ln for ln in turn_lines(screen, question)
             if ln.strip() and not ln.startswith("  ") and not ln.startswith("[$")
             and ln != "(interrupted)"]
    return " ".join(lines)


def watch_answer(pane: TmuxPane, question: str, until: str, timeout_s: float) -> list[str]:
    """Poll the answer to QUESTION until `until` matches the screen after it; return the
    distinct answer texts seen on the way, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        screen = pane.screen()
        text = answer_text(screen, question)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if re.search(until, screen.rsplit(f"you> {question}\n", 1)[-1]):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{until!r} not seen after {timeout_s:.0f}s:\n{screen[-3000:]}")
        time.sleep(0.05)


def assert_grew_token_by_token(seen: list[str], states: int) -> None:
    assert len(seen) >= states, seen
    for before, after in zip(seen, seen[1:]):   # every capture extends the one before it
        assert after.startswith(before[:-1]) and len(after) > len(before), (before, after)


def cost_line(pane: TmuxPane, prompt_number: int) -> re.Match:
    pane.type_line("/cost")
    screen = prompts(pane, prompt_number, 30)
    ledger = " ".join(turn_lines(screen, "/cost"))
    found = re.search(r"this chat \$(\d+\.\d+) over (\d+) runs, (\d+) tokens", ledger)
    assert found, ledger
    return found


def test_tmux_chat_streams_stops_on_ctrl_c_and_shows_the_cost(recipes, tmp_path):
    # slow.yaml writes one character every 0.1 s: the answer takes ~4 s to appear
    pane = chat_pane(tmp_path, str(recipes / "slow.yaml"))
    try:
        pane.type_line("hello there")
        seen = watch_answer(pane, "hello there", FOOTER, 60)
        assert_grew_token_by_token(seen, 5)
        assert seen[-1].startswith("You said: hello there The answer is")
        lines = turn_lines(pane.screen(), "hello there")
        assert lines[0] == "  > answer (generate) started"   # progress before the tokens
        first_cost = float(re.search(FOOTER, "\n".join(lines)).group(1))
        assert first_cost > 0

        pane.type_line("tell me more")
        watch_answer(pane, "tell me more", r"You said: te", 30)
        pane.send("C-c")
        screen = prompts(pane, 3, 30)
        stopped = turn_lines(screen, "tell me more")
        assert "(interrupted)" in stopped and not any(ln.startswith("[$") for ln in stopped)
        assert "The answer is" not in answer_text(screen, "tell me more")
        assert pane.exit_status() is None                   # the client is still there

        cost = cost_line(pane, 4)
        # the interrupted answer was paid for: the chat's total counts it
        assert float(cost.group(1)) > first_cost and cost.group(2) == "2"

        pane.type_line("and again")   # the chat still answers after Ctrl-C
        seen = watch_answer(pane, "and again", FOOTER, 60)
        assert seen[-1].startswith("You said: and again The answer is")
        pane.type_line("/quit")
        assert pane.wait_exit(30) == 0
        assert "Traceback" not in pane.screen()
    finally:
        pane.close()


def error_lines(screen: str, question: str) -> list[str]:
    lines = [ln for ln in turn_lines(screen, question) if ln.strip()]
    return [ln for ln in lines if re.search(r"error|fail|unreach|refused|traceback", ln, re.I)]


@pytest.mark.parametrize("where", ["server", "recipe"])
def test_tmux_chat_with_a_dead_backend_prints_one_error_line(where, recipes, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"   # a free port: nobody listens there
    if where == "server":
        args = ("--url", dead, "--model", "echo")
    else:   # the recipe's role points at the dead server, one attempt
        args = (str(recipes / "broken.yaml"), "--set", f"models.strong.base_url={dead}")
    pane = chat_pane(tmp_path, *args)
    try:
        pane.type_line("hi")
        screen = prompts(pane, 2, 60)
        errors = error_lines(screen, "hi")
        assert len(errors) == 1, turn_lines(screen, "hi")
        assert errors[0].startswith("error: ") and dead in errors[0]
        assert "Traceback" not in screen
        pane.type_line("/cost")   # still chatting, and nothing was charged
        assert "no runs yet" in " ".join(turn_lines(prompts(pane, 3, 30), "/cost"))
        pane.type_line("/quit")
        assert pane.wait_exit(30) == 0
    finally:
        pane.close()


@pytest.mark.engine
def test_tmux_chat_on_the_engine_streams_and_survives_ctrl_c(tmp_path):
    """The recipe's embedded engine runs in the chat's process and its workers share the
    terminal's process group: a Ctrl-C must stop the answer, not the engine."""
    pane = chat_pane(tmp_path, str(SUPPORT / "engine_generate.yaml"),
                     "--set", "nodes.answer.params.max_tokens=400", start_s=400)
    try:
        question = "Write a long story about a dragon who learns to count."
        pane.type_line(question)
        # the engine started before the first prompt; its first tokens come within seconds
        seen = watch_answer(pane, question, r"\S+ \S+ \S+ \S+ \S+ \S+ \S+ \S+", 120)
        seen += watch_answer(pane, question, r"\S+(\s+\S+){40}", 120)[1:]
        pane.send("C-c")
        screen = prompts(pane, 2, 60)
        assert_grew_token_by_token([s for s in seen if s], 3)
        stopped = turn_lines(screen, question)
        assert stopped[0].startswith("  > answer (generate) started")
        assert "(interrupted)" in stopped and not any(ln.startswith("[$") for ln in stopped)
        assert pane.exit_status() is None

        pane.type_line("What is 2 + 2?")   # the same engine answers the next question
        seen = watch_answer(pane, "What is 2 + 2?", FOOTER, 240)
        assert seen and seen[-1]
        footer = re.search(FOOTER, pane.screen().rsplit("you> What is 2 + 2?", 1)[-1])
        assert float(footer.group(1)) > 0 and int(footer.group(2)) > 0
        cost = cost_line(pane, 4)
        assert float(cost.group(1)) > float(footer.group(1))   # the stopped answer counts
        pane.type_line("/quit")
        assert pane.wait_exit(120) == 0
        assert "Traceback" not in pane.screen()
    finally:
        pane.close()
