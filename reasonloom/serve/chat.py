"""`reasonloom chat [RECIPE | --url URL --model NAME]`: a terminal chat that streams the answer
token by token, shows the recipe's nodes and the run's cost while it works, and keeps the
conversation. Commands: /reset, /cost, /trace, /help, /quit."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import termios
from typing import Any, Iterator

from rich.console import Console
from rich.table import Table

from reasonloom.orchestrator.types import Message
from reasonloom.serve.chat_sources import ChatEvent, LocalSource, RemoteSource, TurnSummary

HELP = ("/reset  forget the conversation   /cost  what this chat has cost   "
        "/trace  the last run's events   /quit  leave")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="a recipe file, run here")
    p.add_argument("--url", help="a reasonloom server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="the served model (recipe name) with --url")
    p.add_argument("--api-key", help="the server's key (default: $REASONLOOM_API_KEY)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a recipe field (local recipes)")
    p.add_argument("--system", metavar="TEXT", help="a system message for the conversation")


class ChatSession:
    """The conversation, the running totals, and how a turn is shown."""

    def __init__(self, source: Any, console: Console, system: str | None = None):
        self.source = source
        self.console = console
        self.system = system
        self.messages: list[Message] = []
        self.turns: list[TurnSummary] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [Message(role="system", content=self.system)] if self.system else []

    async def ask(self, question: str) -> TurnSummary | None:
        self.messages.append(Message(role="user", content=question))
        out = self.console
        answering = False
        summary = None
        failures: list[str] = []   # shown once the run ends well; a failed run says it in one line
        try:
            turn = contextlib.aclosing(self.source.turn(self.messages))
            async with turn as events:   # closed here even when Ctrl-C cancels us
                async for event in events:
                    if event.kind == "token":
                        if not answering:
                            answering = True
                        out.print(event.text, end="", markup=False, highlight=False,
                                  soft_wrap=True)
                    elif event.kind == "progress" and not answering:
                        line = _progress_line(event)
                        if line and line.startswith("  !"):
                            failures.append(line)
                        elif line:
                            out.print(line, style="dim", markup=False, highlight=False)
                    elif event.kind == "error":
                        out.print(("\n" if answering else "") + f"error: {event.text}",
                                  style="red", markup=False, highlight=False)
                    elif event.kind == "done":
                        summary = event.summary
        except asyncio.CancelledError:   # Ctrl-C: the answer stops, what it spent is counted
            self.messages.pop()
            cut = self.source.interrupted()
            if cut.calls:
                self.turns.append(cut)
            raise
        except Exception as exc:   # an engine or server failure: one line, keep chatting
            out.print(f"\nerror: {type(exc).__name__}: {exc}", style="red", markup=False)
        if summary is None:
            self.messages.pop()   # the question had no answer: do not send it again
            return None
        for line in failures:
            out.print(line, style="dim", markup=False, highlight=False)
        out.print()
        out.print(_footer(summary), style="dim", markup=False, highlight=False)
        self.messages.append(Message(role="assistant", content=summary.text))
        self.turns.append(summary)
        return summary

    def show_cost(self) -> None:
        if not self.turns:
            self.console.print("no runs yet")
            return
        last = self.turns[-1]
        label = last.run_id or last.status
        for title, rows in (("by model (role)", last.by_model), ("by node", last.by_node)):
            table = Table(title=f"last run {label}: {title}", title_justify="left")
            for col in ("", "calls", "prompt", "completion", "cached", "cost $"):
                table.add_column(col, justify="right" if col else "left")
            for name, u in rows.items():
                table.add_row(name, str(u.get("calls", 0)), str(u.get("prompt_tokens", 0)),
                              str(u.get("completion_tokens", 0)),
                              str(u.get("cached_prompt_tokens", 0)),
                              f"{u.get('cost_usd', 0.0):.6f}")
            self.console.print(table)
        total = sum(t.cost_usd for t in self.turns)
        tokens = sum(t.prompt_tokens + t.completion_tokens for t in self.turns)
        cut = sum(t.status == "interrupted" for t in self.turns)
        mark = " (interrupted)" if last.status == "interrupted" else ""
        self.console.print(f"ledger: last run{mark} ${last.cost_usd:.6f} ({last.calls} calls, "
                           f"{last.prompt_tokens} prompt + {last.completion_tokens} completion "
                           f"tokens); this chat ${total:.6f} over {len(self.turns)} runs, "
                           f"{tokens} tokens" + (f" ({cut} interrupted)" if cut else ""),
                           markup=False, highlight=False)

    def show_trace(self) -> None:
        if not self.turns:
            self.console.print("no runs yet")
            return
        last = self.turns[-1]
        t0 = last.events[0]["t"] if last.events else 0.0
        self.console.print(f"run {last.run_id}: {len(last.events)} events", markup=False)
        for e in last.events:
            line = _progress_line(ChatEvent(kind="progress", progress=e)) or e.get("event")
            self.console.print(f"  +{e.get('t', t0) - t0:6.2f}s {line.strip()}", markup=False,
                               highlight=False)


def _progress_line(event: ChatEvent) -> str | None:
    e = event.progress or {}
    kind, node = e.get("event"), e.get("node")
    cost = f"run ${e.get('run_cost_usd', 0.0):.6f}"
    if kind == "node_started":
        return f"  > {node} ({e.get('type', '')}) started"
    if kind == "node_finished":
        return f"  + {node} finished | {cost}"
    if kind == "node_failed":
        return f"  ! {node} failed: {e.get('error', '')}"
    if kind == "call_finished":
        return (f"  . {node}: {e.get('role')} {e.get('call_kind')} "
                f"{e.get('prompt_tokens', 0)}+{e.get('completion_tokens', 0)} tok | {cost}")
    if kind == "error":
        return f"  ! {node}: {e.get('message') or e.get('error') or ''}"
    return None


def _footer(s: TurnSummary) -> str:
    parts = [f"${s.cost_usd:.6f}", f"{s.prompt_tokens + s.completion_tokens} tokens",
             f"{s.calls} calls"]
    if s.ttft_s is not None:
        parts.append(f"first token {s.ttft_s:.2f}s")
    if s.wall_s is not None:
        parts.append(f"{s.wall_s:.2f}s")
    if s.final_stage == "selection":
        parts.append("selected answer")
    if s.status != "ok":
        parts.append(s.status)
    return "[" + " | ".join(parts) + "]"


class UsageError(Exception):
    """What the user typed cannot start a chat: one line, exit 2."""


def _make_source(args: argparse.Namespace) -> Any:
    if args.url:
        if args.recipe or not args.model:
            raise UsageError("give either RECIPE, or --url with --model")
        key = args.api_key or os.environ.get("REASONLOOM_API_KEY")
        return RemoteSource(args.url, args.model, key)
    if not args.recipe:
        raise UsageError("give a RECIPE file, or --url URL --model NAME")
    from reasonloom.recipe import RecipeError, load_recipe

    try:
        return LocalSource(load_recipe(args.recipe, args.set))
    except RecipeError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:   # a backend that cannot be built (an unset API key variable)
        raise UsageError(f"{args.recipe}: {exc}") from None


def main(args: argparse.Namespace) -> int:
    try:
        source = _make_source(args)
    except UsageError as exc:
        print(f"reasonloom chat: {exc}", file=sys.stderr)
        return 2
    console = Console(highlight=False)
    session = ChatSession(source, console, args.system)
    loop = asyncio.new_event_loop()   # one loop for the whole chat: engines live on it
    try:
        try:
            if isinstance(source, LocalSource):
                console.print(f"starting {source.label}'s engines ...", style="dim",
                              markup=False)
            loop.run_until_complete(source.start())
        except Exception as exc:   # an engine that cannot start: one line, not a traceback
            print(f"reasonloom chat: {source.label}: cannot start: {type(exc).__name__}: "
                  f"{exc}", file=sys.stderr)
            return 1
        console.print(f"chatting with {source.label}. {HELP}", style="dim", markup=False)
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if not line:
                continue
            command = line.lower()
            if command in ("/quit", "/exit", "/q"):
                break
            if command == "/reset":
                session.reset()
                console.print("conversation cleared")
            elif command == "/cost":
                session.show_cost()
            elif command == "/trace":
                session.show_trace()
            elif command in ("/help", "/?"):
                console.print(HELP, markup=False)
            elif line.startswith("/"):
                console.print(f"unknown command {line.split()[0]}; {HELP}", markup=False)
            else:
                task = loop.create_task(session.ask(line))
                try:
                    with ctrl_c_cancels(loop, task):   # Ctrl-C stops this answer, not the chat
                        loop.run_until_complete(task)
                except asyncio.CancelledError:
                    console.print("\n(interrupted)", style="dim")
    finally:
        loop.run_until_complete(source.aclose())
        _close_loop(loop)
        sys.stdout.flush()
    return 0


@contextlib.contextmanager
def ctrl_c_cancels(loop: asyncio.AbstractEventLoop, task: asyncio.Task) -> Iterator[None]:
    """While an answer runs, Ctrl-C cancels `task` and nothing else. On a terminal the key is
    read as a byte (no SIGINT): the terminal would send SIGINT to the whole foreground process
    group, and the engine's worker processes in it shut down on SIGINT. Typed keys are not
    echoed into the answer meanwhile. Without a terminal (a pipe), SIGINT cancels the task."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        return
    saved = termios.tcgetattr(fd)
    keys = termios.tcgetattr(fd)
    keys[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG)   # lflag: raw keys, no signals
    keys[6][termios.VMIN], keys[6][termios.VTIME] = 1, 0

    def read_keys() -> None:
        if b"\x03" in os.read(fd, 1024):   # Ctrl-C; other keys typed meanwhile are dropped
            task.cancel()

    termios.tcsetattr(fd, termios.TCSANOW, keys)
    loop.add_reader(fd, read_keys)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await what is still on the loop (engine helpers, a run a Ctrl-C cut short),
    then close it: nothing pending is destroyed at exit."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
