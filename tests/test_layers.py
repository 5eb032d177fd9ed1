"""The import-linter contracts in pyproject.toml hold: layers import only downward (commands >
recipe > nodes > strategies > verifiers > prompts > orchestrator > backends > steering > types)
and no package's modules import each other in a circle."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def test_imports_keep_the_layers_and_make_no_cycles():
    done = subprocess.run([sys.executable, "-c", LINT], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
