"""The vLLM general plugin and the engine arguments of a steered role.

vLLM calls `register()` in every process it creates (entry point group
`vllm.general_plugins`, declared in pyproject.toml), before any model is built; it registers
each steered class (Llama, Mistral, Qwen2, Qwen3) under its own architecture name, so
unsteered engines in the same environment keep the stock classes. `engine_overrides` turns a
role's `steering:` entry into
`hf_overrides={"architectures": [STEERED[arch]], "reasonloom_steering": {...}}` plus
`enforce_eager=True`: the configuration reaches the worker inside the model's HF config, never
through environment variables (two engines in one process would clash).
"""
from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

# a checkpoint's architecture -> the steered class's registered name (class Steered<arch>)
STEERED = {base: f"ReasonloomSteered{base}" for base in (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")}
STEERED_ARCH = STEERED["LlamaForCausalLM"]    # a folder without config.json (a hub name)
PLUGIN_NAME = "reasonloom_steering"
CONFIG_KEY = "reasonloom_steering"


def register() -> None:
    """Re-entrant: vLLM may call it more than once per process."""
    from vllm import ModelRegistry

    supported = ModelRegistry.get_supported_archs()
    for base, name in STEERED.items():
        if name not in supported:
            # The string form imports the class lazily, inside the process that builds it.
            ModelRegistry.register_model(name,
                                         f"reasonloom.steering.steered_models:Steered{base}")


class SteeringUnavailable(ValueError):
    """A steered engine cannot be built as asked; the message says what to change."""


def _plugin_is_live() -> None:
    names = {ep.name for ep in metadata.entry_points(group="vllm.general_plugins")}
    if PLUGIN_NAME not in names:
        raise SteeringUnavailable(
            "the reasonloom vLLM plugin is not installed: run `pip install --no-deps -e .` in "
            "the reasonloom checkout so its `vllm.general_plugins` entry point exists")
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and PLUGIN_NAME not in allowed.split(","):
        raise SteeringUnavailable(f"VLLM_PLUGINS={allowed!r} leaves out {PLUGIN_NAME!r}")


def engine_overrides(model: str, steering: dict[str, Any], engine_args: dict[str, Any]
                     ) -> dict[str, Any]:
    """The engine arguments of a steered role: `engine_args` with hf_overrides and eager mode.

    Checks, in the calling process, everything that would otherwise fail deep in the worker:
    the plugin is installed, the folder was calibrated for this architecture and shape.
    """
    from reasonloom.steering.vectors import SteeringSettings, read_manifest

    try:
        settings = SteeringSettings.model_validate(steering)
    except Exception as exc:
        raise SteeringUnavailable(f"steering: {' '.join(str(exc).split())}") from None
    folder = Path(settings.vectors).expanduser().resolve()
    manifest = read_manifest(folder)
    config_file = Path(model) / "config.json"
    steered_arch = STEERED_ARCH
    if config_file.exists():
        config = json.loads(config_file.read_text())
        archs = config.get("architectures") or []
        known = [a for a in archs if a in STEERED]
        if not known:
            raise SteeringUnavailable(f"steering supports {', '.join(STEERED)} checkpoints; "
                                      f"{model} is {', '.join(archs) or 'unknown'}")
        steered_arch = STEERED[known[0]]
        heads = config.get("num_attention_heads")
        shape = (config.get("num_hidden_layers"), heads,
                 config.get("head_dim") or config.get("hidden_size", 0) // max(1, heads or 1))
        if shape != (manifest.num_layers, manifest.num_heads, manifest.head_dim):
            raise SteeringUnavailable(
                f"{folder} was calibrated for {manifest.model_name} (layers, heads, head_dim) = "
                f"{(manifest.num_layers, manifest.num_heads, manifest.head_dim)}, but {model} "
                f"has {shape}")
    if settings.top_k_heads and settings.top_k_heads > len(manifest.heads):
        raise SteeringUnavailable(f"top_k_heads={settings.top_k_heads} but {folder} keeps "
                                  f"{len(manifest.heads)} heads")
    if engine_args.get("speculative_config"):
        # Verify passes run several tokens per request; the gate would read them as prefill
        # and never steer: refuse rather than run unsteered.
        raise SteeringUnavailable("steering cannot be combined with speculative decoding: give "
                                  "the steered role its own engine without `speculative:`")
    if engine_args.get("enforce_eager") is False:
        raise SteeringUnavailable("steering hooks run only in eager mode: drop enforce_eager: "
                                  "false from the role's engine arguments")
    _plugin_is_live()
    overrides = dict(engine_args.get("hf_overrides") or {})
    overrides["architectures"] = [steered_arch]
    overrides[CONFIG_KEY] = settings.model_copy(update={"vectors": str(folder)}).model_dump()
    return {**engine_args, "hf_overrides": overrides, "enforce_eager": True}
