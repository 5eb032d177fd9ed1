"""Bad inputs for `reasonloom` (recipes, `--set`, datasets, run ids, run files, key rules), run
as real subprocesses by benchmarks/hostile.py. Each case must end with exit 2 and exactly one
stderr line: no traceback, nothing hangs, no secret printed."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

GOOD = "models: {s: {backend: scripted}}\nnodes: {a: {type: generate}}\n"
SCRIPTED = GOOD + "output: a\n"
BOMB = "a: &a 'x'\n" + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n"
                               for p, c in zip("abcdef", "bcdefg")) + "h: [*g" + ",*g" * 8 + "]\n"
SECRET = "sk-hostile-26-secret"


@dataclass
class Case:
    area: str
    name: str
    argv: list[str]                         # after `reasonloom`; FILE is the case's file
    file: bytes | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup: str | None = None                # "manifest" | "sqlite": files under runs/


def _recipe_cases() -> list[Case]:
    texts: dict[str, str | bytes] = {
        "key_is_list": "a: 1\n[x, y]: 2\n", "key_is_map": "? {a: 1}\n: 2\n",
        "nested_key_is_list": "models: {[a]: 1}\n", "complex_key": "? [1, 2]\n: x\n",
        "recursive_alias_list": "a: &a [*a]\n", "recursive_alias_map": "a: &a {b: *a}\n",
        "recursive_alias_deep": "a: &a {b: {c: [1, {d: *a}]}}\n", "alias_bomb": BOMB,
        "duplicate_top": GOOD + "seed: 1\nseed: 2\n",
        "duplicate_nested": "models: {s: {backend: scripted, backend: openai}}\n",
        "duplicate_flow": "a: {x: 1, y: 2, x: 3}\n",
        "unknown_option_scripted": GOOD.replace("scripted}", "scripted, options: {zz: 1}}"),
        "unknown_option_openai": "models: {s: {backend: openai, model: m, base_url: "
                                 "'http://127.0.0.1:1/v1', options: {retries: 3}}}\n"
                                 "nodes: {a: {type: generate}}\n",
        "options_on_embedded": GOOD.replace("scripted}", "embedded, options: {n: 1}}"),
        "openai_without_model": "models: {s: {backend: openai, base_url: "
                                "'http://127.0.0.1:1/v1'}}\nnodes: {a: {type: generate}}\n",
        "litellm_without_model": GOOD.replace("scripted}", "litellm, base_url: "
                                              "'http://127.0.0.1:1/v1'}"),
        "vllm_without_model": GOOD.replace("scripted}", "vllm}"),
        "python_tag_map": "a: !!python/object/apply:os.system {args: [true]}\n",
        "python_tag_scalar": "a: !!python/name:os.system ''\n",
        "over_one_mib": "description: '" + "x" * (1 << 20) + "'\n",
        "binary_garbage": bytes(range(256)) * 4,
        "utf16_file": "seed: 1\n".encode("utf-16"),
        "invalid_utf8_value": b"description: 'caf\xe9'\n",
        "invalid_utf8_key": b"\xff\xfe: 1\n",
        "truncated_multibyte": b"description: '\xe2\x82'\n",
    }
    for depth in (101, 1000, 3000, 10_000, 100_000):
        texts[f"flow_lists_{depth}"] = "a: " + "[" * depth + "]" * depth + "\n"
        texts[f"flow_maps_{depth}"] = "a: " + "{b: " * depth + "1" + "}" * depth + "\n"
    texts["block_nesting_150"] = "".join("  " * i + f"k{i}:\n" for i in range(150)) + \
        "  " * 150 + "v\n"
    for digits in (31, 100, 4301, 5000, 100_000):
        texts[f"int_{digits}_digits_seed"] = GOOD + "seed: " + "9" * digits + "\n"
        texts[f"int_{digits}_digits_param"] = GOOD.replace(
            "generate}", "generate, params: {max_tokens: " + "7" * digits + "}}")
    return [Case("recipes", name, ["validate", "FILE"],
                 text if isinstance(text, bytes) else text.encode())
            for name, text in texts.items()]


def _set_cases() -> list[Case]:
    values = {"alias_bomb": BOMB, "recursive_alias": "&a [*a]", "int_5000": "9" * 5000,
              "nesting_5000": "[" * 5000, "duplicate_keys": "{a: 1, a: 2}",
              "python_tag": "!!python/object/apply:os.system ['true']",
              "bad_path_type": "[1, 2]"}
    cases = [Case("set", name, ["validate", "FILE", "--set", f"nodes.a.params={value}"],
                  GOOD.encode()) for name, value in values.items()]
    cases[-1].argv[-1] = "models=[1, 2]"
    return cases


def _dataset_cases() -> list[Case]:
    rows: dict[str, bytes] = {
        "turns_empty": b'{"turns": []}', "turns_int": b'{"turns": 5}',
        "turns_of_ints": b'{"turns": [1, 2]}', "id_dict": b'{"question": "q", "id": {"a": 1}}',
        "id_float": b'{"question": "q", "id": 1.5}', "id_bool": b'{"question": "q", "id": true}',
        "context_int": b'{"question": "q", "context": 5}',
        "context_list": b'{"question": "q", "context": ["a"]}',
        "question_int": b'{"question": 7}', "question_null": b'{"question": null}',
        "answer_dict": b'{"question": "q", "answer": {"a": 1}}',
        "answer_5000_digits": b'{"question": "q", "answer": ' + b"1" * 5000 + b"}",
        "nesting_100k": b"[" * 100_000, "nul_in_question": b'{"question": "a\\u0000b"}',
        "lone_surrogate": b'{"question": "\\ud800"}', "invalid_utf8": b'{"question": "\xff"}',
        "binary_line": bytes(range(128, 256)), "array_row": b"[1, 2, 3]",
    }
    cases = [Case("datasets", name, ["run", "RECIPE", "--dataset", "FILE"],
                  b'{"question": "fine", "answer": "1"}\n' + row + b"\n")
             for name, row in rows.items()]
    cases.append(Case("datasets", "empty_file", ["run", "RECIPE", "--dataset", "FILE"], b""))
    cases.append(Case("datasets", "input_invalid_utf8", ["run", "RECIPE", "--input",
                                                         "a\udcffb"]))
    return cases


def _run_cases() -> list[Case]:
    cases = [Case("runs", f"run_id_{i}", ["run", "--resume", run_id]) for i, run_id in
             enumerate(["../../x", "/etc/passwd", "a/b", "..", ".hidden", "x" * 65, "a b", "ü",
                        "../runs/abc", "C:\\x"])]
    for name, data in {"manifest_not_json": b"{not json", "manifest_list": b"[]",
                       "manifest_bad_recipe": b'{"recipe": 5}',
                       "manifest_bad_rows": b'{"recipe": "r", "overrides": [], "rows": '
                                            b'[{"id": {}}], "finished": {}}',
                       "manifest_deep": b"[" * 100_000}.items():
        cases.append(Case("runs", name, ["run", "--resume", "abc123"], data, setup="manifest"))
    for name, data in {"sqlite_garbage": os.urandom(4096),
                       "sqlite_truncated": b"SQLite format 3\x00" + b"\x00" * 50}.items():
        cases.append(Case("runs", name, ["run", "--resume", "abc123"], data, setup="sqlite"))
    return cases


def _secret_cases() -> list[Case]:
    role = "models: {s: {backend: openai, model: m, base_url: '%s', api_key_env: %s}}\n" \
           "nodes: {a: {type: generate}}\n"
    env = {name: SECRET for name in ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DATABASE_URL",
                                     "REASONLOOM_API_KEY", "STOLEN_API_KEY")}
    cases = [Case("secrets", f"name_{name}", ["validate", "FILE"],
                  (role % ("https://attacker.example/v1", name)).encode(), env)
             for name in ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DATABASE_URL", "HOME",
                          "PATH", "REASONLOOM_API_KEY")]
    cases += [Case("secrets", f"plaintext_{i}", ["validate", "FILE"],
                   (role % (url, "STOLEN_API_KEY")).encode(), env)
              for i, url in enumerate(["http://attacker.example/v1", "http://10.1.2.3:80/v1",
                                       "http://[fe80::1]:8000/v1", "http://0x7f000001/v1"])]
    cases.append(Case("secrets", "set_name", ["validate", "FILE", "--set",
                                              "models.s.api_key_env=AWS_SECRET_ACCESS_KEY"],
                      (role % ("https://x.example/v1", "STOLEN_API_KEY")).encode(), env))
    cases.append(Case("secrets", "set_url", ["validate", "FILE", "--set",
                                             "models.s.base_url=http://evil.example/v1"],
                      (role % ("https://x.example/v1", "STOLEN_API_KEY")).encode(), env))
    cases.append(Case("secrets", "endpoint_name", ["validate", "FILE"], (
        "models: {s: {backend: openai, model: m, endpoints: [{base_url: 'https://x.example/v1',"
        " api_key_env: AWS_SECRET_ACCESS_KEY}]}}\nnodes: {a: {type: generate}}\n").encode(),
        env))
    return cases


def all_cases() -> list[Case]:
    return (_recipe_cases() + _set_cases() + _dataset_cases() + _run_cases()
            + _secret_cases())


def run_case(case: Case, workdir: Path, recipe: Path) -> dict:
    """Run one case as `python -m reasonloom.cli.main ...`; judge its exit and its stderr."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    path = workdir / "case.in"
    if case.setup:
        (home / "runs").mkdir(parents=True, exist_ok=True)
        target = "abc123.json" if case.setup == "manifest" else "abc123.sqlite"
        if case.setup == "sqlite":
            (home / "runs" / "abc123.json").write_text(
                '{"recipe": "%s", "overrides": [], "rows": [{"id": 0, "question": "q", '
                '"answer": null, "context": null}], "finished": {}}' % recipe)
        (home / "runs" / target).write_bytes(case.file or b"")
    elif case.file is not None:
        path.write_bytes(case.file)
    argv = [str(path) if a == "FILE" else str(recipe) if a == "RECIPE" else a
            for a in case.argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASONLOOM_")}
    env.update(case.env)
    env["REASONLOOM_HOME"] = str(home)
    try:
        proc = subprocess.run([sys.executable, "-m", "reasonloom.cli.main", *argv], env=env,
                              capture_output=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"area": case.area, "name": case.name, "ok": False, "hung": True,
                "traceback": False, "leaked": False}
    err = proc.stderr.decode(errors="replace")
    lines = [line for line in err.splitlines() if line.strip()]
    out = proc.stdout.decode(errors="replace")
    return {"area": case.area, "name": case.name, "rc": proc.returncode,
            "ok": proc.returncode == 2 and len(lines) == 1, "hung": False,
            "traceback": "Traceback" in err, "leaked": SECRET in err + out,
            "line": lines[0][-200:] if lines else ""}
