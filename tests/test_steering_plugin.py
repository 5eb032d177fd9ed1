"""The steered role's engine arguments and the vLLM plugin registration (no engine started)."""
from __future__ import annotations

import json
from importlib import metadata

import pytest

from reasonloom.steering.vllm_plugin import (STEERED_ARCH, SteeringUnavailable,
                                             engine_overrides, register)
from tests.test_steering_engine import write_vectors


@pytest.fixture(scope="module")
def model_dir():
    from reasonloom.backends.vllm.embedded import ensure_embedded_model

    return str(ensure_embedded_model())


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    return write_vectors(tmp_path_factory.mktemp("plugin") / "vectors")


def test_a_steering_entry_becomes_hf_overrides_naming_the_steered_class_in_eager_mode(
        model_dir, vectors):
    args = engine_overrides(model_dir, {"vectors": str(vectors), "strength": -2.0},
                            {"dtype": "float32", "hf_overrides": {"keep": 1}})
    assert args["enforce_eager"] is True and args["dtype"] == "float32"
    overrides = args["hf_overrides"]
    assert overrides["architectures"] == [STEERED_ARCH] and overrides["keep"] == 1
    settings = overrides["reasonloom_steering"]
    assert settings["strength"] == -2.0 and settings["vectors"] == str(vectors.resolve())
    json.dumps(args)                     # travels to the worker inside the engine config


def test_recipe_role_steering_reaches_the_engine_arguments(vectors):
    from reasonloom.recipe import RoleConfig

    spec = RoleConfig(steering={"vectors": str(vectors), "top_k_heads": 8}).backend_spec()
    assert spec.engine["reasonloom_steering"] == {"vectors": str(vectors), "top_k_heads": 8}


@pytest.mark.parametrize("steering, engine, says", [
    ({"vectors": "/nonexistent/steer"}, {}, "steer calibrate"),
    ({"vectors": "VEC", "gate": "always"}, {}, "gate"),
    ({"vectors": "VEC", "top_k_heads": 10_000}, {}, "top_k_heads"),
    ({"vectors": "VEC"}, {"enforce_eager": False}, "eager"),
    ({"vectors": "VEC"}, {"speculative_config": {"method": "ngram"}}, "speculative"),
])
def test_a_steered_engine_that_cannot_work_is_refused_with_a_reason(
        model_dir, vectors, steering, engine, says):
    steering = {k: (str(vectors) if v == "VEC" else v) for k, v in steering.items()}
    with pytest.raises((SteeringUnavailable, FileNotFoundError), match=says):
        engine_overrides(model_dir, steering, engine)


def test_vectors_calibrated_for_another_shape_are_refused(model_dir, tmp_path):
    folder = write_vectors(tmp_path / "vectors")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["num_layers"] = 12
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SteeringUnavailable, match="calibrated for"):
        engine_overrides(model_dir, {"vectors": str(folder)}, {})


def test_the_plugin_entry_point_is_installed_and_registers_the_steered_class():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="vllm.general_plugins")}
    assert names.get("reasonloom_steering") == "reasonloom.steering.vllm_plugin:register"
    from vllm import ModelRegistry

    register()
    register()                           # re-entrant: vLLM may call it twice in one process
    assert STEERED_ARCH in ModelRegistry.get_supported_archs()


def test_the_steering_core_imports_no_other_reasonloom_package():
    import ast
    from pathlib import Path

    import reasonloom.steering as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        if path.name == "cli.py":        # the command line may reach the embedded model
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith("reasonloom.") or \
                    name.startswith("reasonloom.steering"), f"{path.name} imports {name}"
