"""Opening a page in headless Chromium as a person's browser would (Debian's `chromium`, which
.ci/run installs): the DOM after the page loaded, what it wrote to the console, and a
screenshot where asked for."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Chromium's stderr with --enable-logging: `[...:INFO:CONSOLE:1] "message", source: URL (line)`
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\] \"(.*)\", source: ")


@dataclass
class Opened:
    dom: str             # the document after load (--dump-dom)
    console: list[str]   # every console message: errors, warnings, uncaught exceptions


def open_page(page: Path, screenshot: Path | None = None, width: int = 1280,
              height: int = 2000, timeout_s: float = 90) -> Opened:
    """Load `page` from file:// with no network (a proxy nobody listens on) and its own
    profile, so runs in parallel do not share one."""
    binary = chromium()
    assert binary, "chromium is not installed"
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",
                "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}"]
        what = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        done = subprocess.run([*args, *what, page.resolve().as_uri()], capture_output=True,
                              text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-2000:]
    return Opened(dom=done.stdout, console=CONSOLE.findall(done.stderr))
