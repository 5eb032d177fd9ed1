"""Issue 26's attack classes as regression cases: secrets a recipe must not reach, inputs that
must give one located line (exit 2), durable runs that must not double-spend. Every case runs
the real `reasonloom` command in a subprocess; network cases use loopback only."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.key_catcher import KeyCatcher

SECRET = "sk-secret-26-do-not-leak"
ROLE = "{backend: openai, model: m, base_url: '%s', retry: {max_attempts: 1}%s}"
RECIPE = """\
seed: 0
models:
  strong: %s
nodes:
  answer: {type: generate, params: {n: 1, max_tokens: 4}}
output: answer
"""


def cli(*args: str, env: dict[str, str] | None = None, home: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("REASONLOOM_")}
    full.update(env or {})
    if home is not None:
        full["REASONLOOM_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "reasonloom.cli.main", *args], env=full,
                          capture_output=True, text=True, timeout=timeout)


def one_located_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command failed with exit 2 and exactly one stderr line, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def recipe(tmp_path: Path, url: str, key_env: str | None = None) -> Path:
    extra = f", api_key_env: {key_env}" if key_env else ""
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE % (ROLE % (url, extra)))
    return path


# -- (a) secrets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_env, url, says", [
    ("AWS_SECRET_ACCESS_KEY", "https://attacker.example/v1", "not an allowed key variable"),
    ("HOME", "https://attacker.example/v1", "not an allowed key variable"),
    ("REASONLOOM_API_KEY", "https://attacker.example/v1", "server's own key"),
    ("STOLEN_API_KEY", "http://attacker.example/v1", "unencrypted"),
    ("STOLEN_API_KEY", "http://10.0.0.7:8000/v1", "unencrypted"),
])
def test_recipe_cannot_name_a_secret_or_send_a_key_in_the_clear(tmp_path, key_env, url, says):
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "STOLEN_API_KEY": SECRET,
           "REASONLOOM_API_KEY": SECRET, "REASONLOOM_ALLOWED_KEY_ENVS": "REASONLOOM_API_KEY"}
    proc = cli("validate", str(recipe(tmp_path, url, key_env)), env=env)
    line = one_located_line(proc, "r.yaml:3:", "models.strong.api_key_env", says)
    assert SECRET not in line


def test_set_overrides_pass_the_same_key_checks(tmp_path):
    path = recipe(tmp_path, "https://ok.example/v1")
    proc = cli("validate", str(path), "--set", "models.strong.api_key_env=AWS_SECRET_ACCESS_KEY",
               env={"AWS_SECRET_ACCESS_KEY": SECRET})
    one_located_line(proc, "models.strong.api_key_env", "not an allowed key variable")
    proc = cli("validate", str(path), "--set", "models.strong.base_url=http://evil.example/v1",
               "--set", "models.strong.api_key_env=MY_API_KEY", env={"MY_API_KEY": SECRET})
    one_located_line(proc, "unencrypted")


def test_the_user_can_allow_a_name_and_a_plaintext_host(tmp_path):
    env = {"CORP_TOKEN": SECRET, "REASONLOOM_ALLOWED_KEY_ENVS": "CORP_TOKEN",
           "REASONLOOM_PLAINTEXT_KEY_HOSTS": "gpu-box"}
    proc = cli("validate", str(recipe(tmp_path, "http://gpu-box:8000/v1", "CORP_TOKEN")), env=env)
    assert proc.returncode == 0, proc.stderr


def test_no_implicit_openai_key_goes_to_a_self_hosted_server(tmp_path):
    with KeyCatcher() as catcher:
        proc = cli("run", str(recipe(tmp_path, catcher.url)), "--input", "2+2?",
                   env={"OPENAI_API_KEY": SECRET}, home=tmp_path / "home")
        assert proc.returncode == 0, proc.stderr
        assert catcher.headers and not catcher.saw(SECRET)


def test_a_named_key_reaches_only_its_loopback_server(tmp_path):
    with KeyCatcher() as catcher:
        proc = cli("run", str(recipe(tmp_path, catcher.url, "MINE_API_KEY")), "--input", "2+2?",
                   env={"MINE_API_KEY": "sk-mine", "OPENAI_API_KEY": SECRET},
                   home=tmp_path / "home")
        assert proc.returncode == 0, proc.stderr
        assert catcher.saw("sk-mine") and not catcher.saw(SECRET)


def test_serve_refuses_a_recipe_that_breaks_the_key_rules_one_line_each(tmp_path):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "bad1.yaml").write_text(RECIPE % (ROLE % ("https://x.example/v1",
                                                       ", api_key_env: AWS_SECRET_ACCESS_KEY")))
    (folder / "bad2.yaml").write_text(RECIPE % (ROLE % ("https://x.example/v1",
                                                       ", api_key_env: REASONLOOM_API_KEY")))
    # the server's key under another, allowed name
    (folder / "bad3.yaml").write_text(RECIPE % (ROLE % ("https://x.example/v1",
                                                       ", api_key_env: MIRROR_API_KEY")))
    proc = cli("serve", "--recipes", str(folder), "--port", "0",
               env={"AWS_SECRET_ACCESS_KEY": SECRET, "REASONLOOM_API_KEY": SECRET,
                    "MIRROR_API_KEY": SECRET}, timeout=60)
    assert proc.returncode == 2
    refused = [line for line in proc.stderr.splitlines() if "api_key_env" in line]
    assert len(refused) == 3 and "Traceback" not in proc.stderr
    assert SECRET not in proc.stderr
