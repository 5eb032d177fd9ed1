"""Issue 25 part 4, the Python API in a notebook: `load_recipe(...).run(...)` works where an
event loop is already running (an `async def`, a Jupyter kernel), interrupting it cancels the
run, a real kernel shows a progress bar that moves while the answer streams, and a result's
HTML is the run summary (the one `reasonloom report` opens with)."""
from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from reasonloom.orchestrator.run_summary import summary_text
from reasonloom.recipe import load_recipe
from tests.support.serving import write_scripted_recipes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    return write_scripted_recipes(tmp_path_factory.mktemp("notebook_recipes"))


def test_run_works_inside_a_running_event_loop(recipes):
    recipe = load_recipe(recipes / "echo.yaml")

    async def cell():   # a notebook cell: a loop is running, asyncio.run() would refuse
        asyncio.get_running_loop()
        never = recipe.arun("never")
        with pytest.raises(RuntimeError, match="running event loop"):
            asyncio.run(never)
        never.close()
        return recipe.run("What is 2 + 3?"), await recipe.arun("And 3 + 4?")

    ran, awaited = asyncio.run(cell())
    assert ran.status == "ok" and ran.recipe == "echo"
    assert ran.answer.text.startswith("You said: What is 2 + 3?")
    assert awaited.answer.text.startswith("You said: And 3 + 4?")


def test_interrupting_run_cancels_the_run(recipes):
    """Ctrl-C (or a kernel's interrupt) while run() waits stops the run on the background
    loop too, and the stopped answer's stream is billed."""
    events, sent = [], []
    main = threading.main_thread().ident

    def interrupt_once_streaming(event) -> None:   # on the run's loop, mid-answer
        events.append(event)
        if event.kind == "token_delta" and not sent:
            sent.append(event)
            threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()

    saved = signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's own Ctrl-C
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):   # slow.yaml takes ~4 s to write its answer
            load_recipe(recipes / "slow.yaml").run("a question",
                                                   subscribers=[interrupt_once_streaming])
    finally:
        signal.signal(signal.SIGINT, saved)
    assert time.monotonic() - t0 < 3
    deadline = time.monotonic() + 5
    while not any(e.kind == "call_finished" for e in events):
        assert time.monotonic() < deadline, [e.kind for e in events]
        time.sleep(0.05)
    count = len(events)
    time.sleep(1.0)   # nothing streams any more
    assert len(events) == count
    billed = next(e for e in events if e.kind == "call_finished")
    assert billed.data["completion_tokens"] > 0 and billed.data["cost_usd"] > 0


def test_result_html_is_the_run_summary(recipes):
    result = load_recipe(recipes / "vote.yaml").run("What is 2 + 2?")
    page = result._repr_html_()
    summary = result.summary()
    assert summary.recipe == "vote" and summary.status == "ok"
    assert summary.total == result.usage.total
    assert [n.node for n in summary.nodes] == list(result.usage.by_node)
    for label in ("recipe", "answer", "status", "time", "calls", "tokens", "cost"):
        assert f">{label}</th>" in page
    assert ">vote</td>" in page and f"${result.usage.total.cost_usd:.6f}" in page
    for node, usage in result.usage.by_node.items():   # one row per node: calls ... dollars
        row = re.search(rf"<tr><td[^>]*>{node}</td>(.*?)</tr>", page)
        assert row, node
        cells = re.findall(r">([^<]*)</td>", row.group(1))
        assert cells[0] == str(usage.calls) and cells[-1] == f"${usage.cost_usd:.6f}"
    assert f"{summary.total.calls} calls" in summary_text(summary)


def test_result_html_escapes_what_the_model_wrote(recipes):
    result = load_recipe(recipes / "echo.yaml").run("<script>alert(1)</script>")
    page = result._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def iopub_until_idle(client, msg_id: str, timeout_s: float) -> list[dict]:
    messages, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = client.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.1))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return messages
    raise AssertionError(f"the cell did not finish in {timeout_s:.0f}s")


def test_a_jupyter_kernel_shows_progress_then_the_summary(recipes):
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", cwd=str(ROOT),
                                       startup_timeout=120)
    try:
        code = ("import asyncio\n"
                "from reasonloom import load_recipe\n"
                "asyncio.get_running_loop()   # the kernel's loop runs this cell\n"
                f"result = load_recipe({str(recipes / 'slow.yaml')!r}).run('hello there')\n"
                "result\n")
        messages = iopub_until_idle(client, client.execute(code), 180)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    kinds = [m["msg_type"] for m in messages]
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert not errors, errors[0]["traceback"] if errors else ""
    shown = [m for m in messages if m["msg_type"] == "display_data"]
    assert len(shown) == 1 and "<progress" in shown[0]["content"]["data"]["text/html"]
    bar = shown[0]["content"]["transient"]["display_id"]
    updates = [m["content"]["data"]["text/plain"] for m in messages
               if m["msg_type"] == "update_display_data"
               and m["content"]["transient"]["display_id"] == bar]
    streamed = [int(re.search(r"answer (\d+) chars", u).group(1)) for u in updates]
    # the bar moved while the answer was written (~4 s), not only once at the end
    assert len(set(streamed)) >= 3 and streamed == sorted(streamed), streamed
    assert "nodes 1/1" in updates[-1] and updates[-1].endswith("| ok")
    result = next(m for m in messages if m["msg_type"] == "execute_result")
    page = result["content"]["data"]["text/html"]
    assert 'class="reasonloom-run-summary"' in page and ">slow</td>" in page
    assert "You said: hello there" in page
    assert kinds.index("display_data") < kinds.index("execute_result")
