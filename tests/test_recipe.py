"""Recipes: one-line errors with file, line and field; overrides; nothing runs on bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from reasonloom.cli.main import main
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.types import FrozenModel
from reasonloom.recipe import RecipeError, load_recipe


class _LoopConfig(FrozenModel):
    pass


@register_node("test_loop", _LoopConfig, inputs={"x": "any"}, outputs={"y": "any"})
async def _loop_node(inputs, cfg, ctx):   # only ever validated, never run
    return {"y": None}

BASE = """\
seed: 1
models:
  strong:
    backend: scripted
    price_in_per_m: 1.0
    price_out_per_m: 4.0
  cheap:
    backend: scripted
    price_in_per_m: 0.1
nodes:
  samples:
    type: best_of_n
    params: {role: strong, n: 4, max_tokens: 32}
    inputs: {problem: problem}
  vote:
    type: majority
    inputs: {candidates: samples.candidates}
output: vote
budget: {tokens: 10000}
"""

RECIPES = sorted(Path(__file__).resolve().parents[1].glob("recipes/*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_every_shipped_recipe_validates():
    assert RECIPES, "no recipes shipped"
    for path in RECIPES:
        load_recipe(path)


@pytest.mark.parametrize("bad, line, field, words", [
    (BASE.replace("    price_in_per_m: 1.0", "    price_in_per_m: lots"), 5,
     "models.strong.price_in_per_m", "number"),
    (BASE.replace("type: majority", "type: no_such_node"), 16, "nodes.vote.type", "unknown node"),
    (BASE.replace("role: strong", "role: judge"), 13, "nodes.samples.params.role",
     "unknown role 'judge'"),
    (BASE.replace("samples.candidates", "sample.candidates"), 17, "nodes.vote.inputs.candidates",
     "missing node"),
    (BASE.replace("seed: 1", "seed: 1\ncolour: red"), 2, "colour", "unknown key"),
    (BASE.replace("{candidates: samples.candidates}", "{candidates: problem}"), 17,
     "nodes.vote.inputs.candidates", "mismatch"),
    (BASE.replace("{role: strong, n: 4", "{role: strong, n: [4"), 13, "(recipe)", "YAML"),
    (BASE.replace("    price_in_per_m: 0.1", "    api_key_env: RL_TEST_UNSET_API_KEY"), 9,
     "models.cheap.api_key_env", "RL_TEST_UNSET_API_KEY is not set"),
])
def test_recipe_errors_are_one_line_with_file_line_and_field(tmp_path, bad, line, field, words):
    path = write(tmp_path, bad)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    err = info.value
    assert str(err).startswith(f"{path}:{err.line}:{err.col}: {err.path}: ")
    assert err.line == line, str(err)
    assert err.path == field
    assert words in str(err)
    assert "\n" not in str(err)


def test_cycle_is_reported_at_its_node(tmp_path):
    data = yaml.safe_load(BASE)
    data["nodes"]["a"] = {"type": "best_of_n", "inputs": {"problem": "problem"}}
    data["nodes"]["samples"]["inputs"] = {"problem": "problem"}
    data["nodes"]["vote"]["inputs"] = {"candidates": "samples.candidates"}
    data["nodes"]["b"] = {"type": "test_loop", "inputs": {"x": "c.y"}}
    data["nodes"]["c"] = {"type": "test_loop", "inputs": {"x": "b.y"}}
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="cycle: b -> c -> b|cycle: c -> b -> c"):
        load_recipe(path)


def test_set_overrides_are_applied_and_validated(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert main(["run", str(path), "--input", "2+2?", "--json",
                 "--set", "nodes.samples.params.n=3",
                 "--set", "models.strong.price_out_per_m=0"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert out["answer"]["details"]["samples"] == 3
    assert out["usage"]["by_model"]["strong"]["cost_usd"] == pytest.approx(
        out["usage"]["by_model"]["strong"]["prompt_tokens"] * 1.0 / 1e6)
    assert set(out["usage"]["by_node"]) == {"samples"}
    assert out["id"] == 0 and "outputs" not in out and "events" not in out
    assert main(["run", str(path), "--input", "x", "--set", "nodes.samples.params.n=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nodes.samples.params.n" in err[0]


def test_dataset_rows_run_in_order_with_their_ids(tmp_path, capsys):
    path = write(tmp_path, BASE)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"id": i, "question": f"{i}+1?", "answer": 1})
                              for i in ("a", 7, "c")))
    assert main(["run", str(path), "--dataset", str(data), "--json", "--limit", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["id"] for x in lines] == ["a", 7]


def test_bad_dataset_fails_with_one_line_naming_file_and_line(tmp_path, capsys):
    path = write(tmp_path, BASE)
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "ok"}\nnot json\n')
    assert main(["run", str(path), "--dataset", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{data}:2" in err[0]


def _mutations():
    base = yaml.safe_load(BASE)
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((*path, k))
                walk(v, (*path, k))
    walk(base, ())
    required = [p for p in paths if p[-1] in ("type", "models", "nodes", "backend")
                or p[:2] == ("nodes", "vote") and p[-1] == "inputs"]
    return base, paths, required


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_recipes_fail_with_exactly_one_line_and_no_model_call(tmp_path, capsys,
                                                                     monkeypatch, data):
    import copy

    import reasonloom.backends.factory as factory

    built = []
    monkeypatch.setattr(factory, "build_backend", lambda spec: built.append(spec))
    base, paths, _ = _mutations()
    recipe = copy.deepcopy(base)
    kind = data.draw(st.sampled_from(["drop", "rename", "retype", "reference", "yaml"]))
    target = data.draw(st.sampled_from(paths))
    parent = recipe
    for key in target[:-1]:
        parent = parent[key]
    leaf = target[-1]
    if target == ("models", "cheap"):
        return   # an unused role: dropping or renaming it leaves a valid recipe
    if kind == "drop":
        breaking = {("models",), ("nodes",), ("models", "strong"), ("nodes", "vote"),
                    ("nodes", "samples"), ("nodes", "vote", "inputs"),
                    ("nodes", "vote", "inputs", "candidates")}
        if leaf != "type" and target not in breaking:
            return   # optional keys have defaults: dropping them is no error
        del parent[leaf]
        text = yaml.safe_dump(recipe)
    elif kind == "rename":
        parent[leaf + "_x"] = parent.pop(leaf)
        text = yaml.safe_dump(recipe)
    elif kind == "retype":
        value = parent[leaf]
        if isinstance(value, str) and leaf not in ("type", "output", "candidates", "role"):
            return
        parent[leaf] = {"oops": 1} if not isinstance(value, dict) else [1, 2]
        text = yaml.safe_dump(recipe)
    elif kind == "reference":
        recipe["nodes"]["vote"]["inputs"]["candidates"] = data.draw(
            st.sampled_from(["nowhere.candidates", "samples.nothing", "vote.answer"]))
        text = yaml.safe_dump(recipe)
    else:
        text = yaml.safe_dump(recipe)
        cut = data.draw(st.integers(1, len(text) - 1))
        text = text[:cut] + data.draw(st.sampled_from(["{", ": [", "\t", "\n  - :", "]"])) + \
            text[cut:]
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError:
            loaded = None
        if loaded is not None:
            return   # the insertion happened to keep the YAML valid
    path = write(tmp_path, text)
    code = main(["run", str(path), "--input", "q"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (kind, target, captured.err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:") and "Traceback" not in captured.err
    file_, line, col, rest = lines[0].split(":", 3)
    assert int(line) >= 1 and int(col) >= 1 and rest.strip()
    assert captured.out == "" and built == []


def test_loading_a_recipe_imports_no_engine_or_provider_library(tmp_path):
    code = ("import sys; from reasonloom.recipe import load_recipe; "
            f"[load_recipe(p) for p in {[str(p) for p in RECIPES]!r}]; "
            "bad = [m for m in ('vllm', 'torch', 'litellm') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]" and out.stderr == ""
