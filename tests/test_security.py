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


# -- (a) secrets ----------------------------------------------------------------------------------
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


# -- (b) every bad input: one located line, exit 2 -----------------------------------------------
GOOD = "models: {s: {backend: scripted}}\nnodes: {a: {type: generate}}\n"
BOMB = "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdef", "bcdefg"))


def run_main(capsys, *argv: str) -> str:
    from reasonloom.cli.main import main

    assert main(list(argv)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("text, says", [
    ("a: [1, 2]\n[x]: 1\n", "2:1: (recipe): YAML: a key must be a plain name"),
    ("? {a: 1}\n: 2\n", "a key must be a plain name"),
    ("a:\n" + "  " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 100 levels"),
    ("a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n", "nested more than 100 levels"),
    ("a: &a [*a]\n", "recursive alias"),
    ("a: &a {b: {c: *a}}\n", "recursive alias"),
    ("seed: " + "7" * 5000 + "\n", "1:7: (recipe): YAML: an integer of 5000 characters"),
    (GOOD + "seed: 1\nseed: 2\n", "4:1: (recipe): YAML: duplicate key 'seed' (first at line 3"),
    ("models: {s: {backend: openai, base_url: 'http://127.0.0.1:1/v1'}}\n"
     "nodes: {a: {type: generate}}\n", "models.s.model: backend openai needs `model`"),
    ("models: {s: {backend: scripted, options: {bogus: 1}}}\nnodes: {a: {type: generate}}\n",
     "models.s.options: unknown option 'bogus'"),
    ("models: {s: {backend: openai, model: m, base_url: 'http://127.0.0.1:1/v1', "
     "options: {retries: 3}}}\nnodes: {a: {type: generate}}\n", "unknown option 'retries'"),
    ("models: {s: {backend: embedded, options: {n: 1}}}\nnodes: {a: {type: generate}}\n",
     "use `engine:`"),
    ("a: &a 'x'\n" + BOMB + "h: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n", "more than 100000 values"),
])
def test_bad_recipes_are_one_located_line(tmp_path, capsys, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert says in run_main(capsys, "validate", str(path))


def test_invalid_utf8_recipe_names_line_and_column(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(GOOD.encode() + b"description: 'caf\xe9'\n")
    assert "bad.yaml:3:18: (recipe): not UTF-8 text (byte 0xe9)" in run_main(capsys, "validate",
                                                                            str(path))


@pytest.mark.parametrize("value, says", [
    ("&a [*a]", "recursive alias"),
    ("a: &a 'x'\n" + BOMB + "h: [*g,*g,*g,*g,*g,*g,*g,*g,*g]", "more than 100000 values"),
    ("9" * 5000, "an integer of 5000 characters"),
    ("[" * 5000, "nested more than 100 levels"),
    ("{a: 1, a: 2}", "duplicate key 'a'"),
    ("!!python/object/apply:os.system ['true']", "tag"),
])
def test_set_values_pass_the_same_guards_as_files(tmp_path, capsys, value, says):
    import time

    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    t0 = time.monotonic()
    line = run_main(capsys, "validate", str(path), "--set", f"nodes.a.params={value}")
    assert line.startswith("--set:") and says in line
    assert time.monotonic() - t0 < 10   # an alias bomb must not hang


@pytest.mark.parametrize("row, says", [
    (b'{"turns": []}', "turns must be a non-empty list"),
    (b'{"turns": 5}', "turns must be a non-empty list"),
    (b'{"question": "q", "id": {"a": 1}}', "'id' must be a string or an integer"),
    (b'{"question": "q", "id": 1.5}', "'id' must be a string or an integer"),
    (b'{"question": "q", "context": 5}', "'context' must be a string"),
    (b'{"question": "q", "context": ["a"]}', "'context' must be a string"),
    (b'{"question": 7}', "'question' must be a string"),
    (b'{"question": "q", "answer": ' + b"1" * 5000 + b"}", "not a usable JSON line"),
    (b"[" * 100_000, "not a usable JSON line (nested too deep)"),
    (b'{"question": "a\\u0000b"}', "NUL characters"),
    (b'{"question": "\\ud800"}', "lone surrogate"),
    (b'{"question": "\xff\xfe\x00\x01"}', "not UTF-8 text"),
    (bytes(range(128, 256)) + bytes(range(10)), "not UTF-8 text"),
])
def test_bad_dataset_rows_are_one_located_line(tmp_path, capsys, row, says):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"question": "fine", "answer": "1"}\n' + row + b"\n")
    line = run_main(capsys, "run", "recipes/self_consistency.yaml", "--dataset", str(path))
    assert "rows.jsonl:2: " in line and says in line


# -- (c) durable runs -----------------------------------------------------------------------------
SLOW = ("seed: 0\nmodels: {s: {backend: scripted, options: {delay_s: %s}}}\n"
        "nodes: {a: {type: best_of_n, params: {n: 2, max_tokens: 8}}, "
        "v: {type: majority, inputs: {candidates: a.candidates}}}\noutput: v\n")


@pytest.mark.parametrize("run_id", ["../../x", "/etc/passwd", "a/b", "..", ".hidden", "x" * 65,
                                    "a\x00b", "ü"])
def test_resume_refuses_run_ids_with_path_characters(tmp_path, capsys, monkeypatch, run_id):
    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path))
    assert "not a run id" in run_main(capsys, "run", "--resume", run_id)
    assert not (tmp_path.parent / "x.json").exists()


@pytest.mark.parametrize("manifest, says", [
    (b"{not json", "not JSON"), (b"[]", "not a JSON object"), (b'{"recipe": 5}', "'recipe'"),
    (b'{"recipe": "r", "overrides": [], "rows": [{"id": {}}], "finished": {}}', "rows[0]"),
    (b"[" * 100_000, "not JSON"),
])
def test_a_corrupt_manifest_is_one_line_saying_how_to_start_over(tmp_path, capsys, monkeypatch,
                                                                  manifest, says):
    monkeypatch.setenv("REASONLOOM_HOME", str(tmp_path))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "abc123.json").write_bytes(manifest)
    line = run_main(capsys, "run", "--resume", "abc123")
    assert "corrupt run file" in line and says in line and "start over" in line


def test_a_second_process_on_the_same_run_gets_one_line_and_sends_nothing(tmp_path):
    path = tmp_path / "slow.yaml"
    path.write_text(SLOW % 3.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASONLOOM_")}
    env["REASONLOOM_HOME"] = str(tmp_path / "home")
    first = subprocess.Popen([sys.executable, "-m", "reasonloom.cli.main", "run", str(path),
                              "--input", "q"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        head = first.stderr.readline()   # "run ID (resume with: ...)"
        run_id = head.split()[1]
        second = cli("run", "--resume", run_id, home=tmp_path / "home")
        one_located_line(second, f"run {run_id} is in progress in another process")
        assert first.wait(60) == 0
    finally:
        first.kill()
        first.wait()
    again = cli("run", "--resume", run_id, home=tmp_path / "home")
    assert again.returncode == 0, again.stderr
    runs = tmp_path / "home" / "runs"
    assert {p.stat().st_mode & 0o777 for p in runs.iterdir()} == {0o600}
    assert not list(runs.glob("*.tmp"))
