"""A command in a real tmux pane, for tests of what a user sees: keys go in with `send-keys`, the
screen comes back with `capture-pane`. One private tmux server per pane (its own socket), so
tests never touch a user's tmux."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path


class TmuxPane:
    """`command` (a list of arguments) running in a WIDTHxHEIGHT pane. The pane stays after the
    command exits (remain-on-exit) and its last line is `[exited STATUS]` (tmux 3.3 leaves
    #{pane_dead_status} empty), so the last screen and the exit status can be read."""

    def __init__(self, command: list[str], folder: Path, *, env: dict[str, str] | None = None,
                 width: int = 200, height: int = 50):
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed (apt-get install tmux)")
        self.socket = str(folder / "tmux.sock")
        conf = folder / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 5000\n")
        # the server inherits this process's environment; `env` adds to it for the command
        full_env = {**os.environ, **(env or {})}
        full_env.pop("TMUX", None)
        self._env = full_env
        self._tmux("-f", str(conf), "new-session", "-d", "-s", "t", "-x", str(width),
                   "-y", str(height), f'{shlex.join(command)}; echo "[exited $?]"')

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True,
                              text=True, timeout=30, env=self._env)
        if done.returncode != 0:
            raise RuntimeError(f"tmux {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def send(self, *keys: str) -> None:
        """Keys as tmux names them: literal text, `Enter`, `C-c`."""
        self._tmux("send-keys", "-t", "t", *keys)

    def type_line(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        self._tmux("send-keys", "-t", "t", "Enter")

    def screen(self) -> str:
        """Everything the pane has shown (scrollback included), wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-")

    def wait_for(self, pattern: str, timeout_s: float, after: int = 0) -> re.Match:
        """Poll the screen until `pattern` matches at or after offset `after`."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.screen()
            found = re.compile(pattern).search(text, after)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on screen after {timeout_s:.0f}s; "
                                     f"screen:\n{text[-3000:]}")
            time.sleep(0.1)

    def exit_status(self) -> int | None:
        """The command's exit status once it has exited, else None."""
        found = re.search(r"^\[exited (\d+)\]$", self.screen(), re.M)
        return int(found.group(1)) if found else None

    def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (status := self.exit_status()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout_s:.0f}s:\n"
                                     f"{self.screen()[-2000:]}")
            time.sleep(0.2)
        return status

    def close(self) -> None:
        """Stop the tmux server and whatever the pane started (the pane's process group: a
        chat that ignores the hangup, its engine's workers)."""
        try:
            group = int(self._tmux("display-message", "-p", "-t", "t", "#{pane_pid}"))
        except (RuntimeError, ValueError):
            group = None
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=30, env=self._env)
        if group is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            deadline = time.monotonic() + wait_s
            try:
                os.killpg(group, sig)
                while time.monotonic() < deadline:
                    os.killpg(group, 0)   # raises once no process of the group is left
                    time.sleep(0.2)
            except ProcessLookupError:
                return
