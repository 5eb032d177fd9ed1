"""The `reasonloom` command in a subprocess, as a user runs it (from the repository root)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def reasonloom(args: list[str], env: dict | None = None, timeout: float = 120
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reasonloom.cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env or dict(os.environ),
                          timeout=timeout)
