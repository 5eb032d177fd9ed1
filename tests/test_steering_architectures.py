"""Steering on every supported decoder family, on small random-weight models built from a
config (no downloads): Qwen2, Qwen3 and Mistral beside the Llama of test_steering_engine.py.

For each, a plain engine and a steered engine at strength 0 (every head selected, the gate
firing at every token that follows a space) must pick the same tokens; one head at strength
-8 must change them; and the steered class of that family must have run its hooks inside the
engine's process, on exactly the chosen heads."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from tests.test_steering_engine import run_steered, write_vectors

SHAPE = (2, 4, 64)                 # layers, heads, head_dim (64: a size the CPU attention has)
PROMPTS = ([1, 504, 3135, 314, 253, 1484, 30], [1, 19842, 1034, 314, 2951, 30])


def write_random_model(folder, architecture: str):
    """A random-weight checkpoint of `architecture` with the embedded model's tokenizer."""
    import transformers

    from reasonloom.backends.vllm.embedded import ensure_embedded_model

    layers, heads, dim = SHAPE
    family = architecture.removesuffix("ForCausalLM")
    config = getattr(transformers, f"{family}Config")(
        vocab_size=49152, hidden_size=heads * dim, intermediate_size=2 * heads * dim,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
        head_dim=dim, max_position_embeddings=4096, tie_word_embeddings=False,
        initializer_range=0.3,     # spread logits: a random model at 0.02 repeats one token
        torch_dtype="float32")
    torch.manual_seed(0)
    getattr(transformers, architecture)(config).save_pretrained(folder)
    embedded = ensure_embedded_model()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded / name, folder / name)
    return folder


def test_a_checkpoint_of_another_family_is_refused_in_one_line(tmp_path):
    from reasonloom.steering.vllm_plugin import SteeringUnavailable, engine_overrides

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    vectors = write_vectors(tmp_path / "vectors", shape=SHAPE)
    with pytest.raises(SteeringUnavailable) as refused:
        engine_overrides(str(tmp_path), {"vectors": str(vectors)}, {})
    assert str(refused.value).count("\n") == 0
    assert "Qwen2ForCausalLM" in str(refused.value) and "GPT2LMHeadModel" in str(refused.value)


@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                          "MistralForCausalLM"])
def test_a_model_of_the_family_is_built_steered_under_its_own_name(tmp_path, architecture):
    from reasonloom.steering.vllm_plugin import STEERED, engine_overrides

    model = write_random_model(tmp_path / "model", architecture)
    vectors = write_vectors(tmp_path / "vectors", shape=SHAPE, architecture=architecture)
    args = engine_overrides(str(model), {"vectors": str(vectors)}, {})
    assert args["hf_overrides"]["architectures"] == [STEERED[architecture]]
    assert STEERED[architecture] == f"ReasonloomSteered{architecture}"


@pytest.mark.engine
@pytest.mark.parametrize("architecture", ["Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                          "MistralForCausalLM"])
def test_each_family_is_the_stock_model_at_strength_zero_and_steers_only_the_chosen_heads(
        tmp_path, arun, architecture):
    model = str(write_random_model(tmp_path / "model", architecture))
    vectors = write_vectors(tmp_path / "vectors", shape=SHAPE, architecture=architecture)
    base = {"vectors": str(vectors), "gate": "step", "separator": " "}
    runs = {"plain": None,
            "zero": {"strength": 0.0},                      # every head, no effect
            "one_head": {"strength": -8.0, "top_k_heads": 1}}
    outputs, stats = {}, {}
    for name, run in runs.items():
        steering = None if name == "plain" else {
            **base, **run, "stats_file": str(tmp_path / f"{name}.json")}
        outputs[name] = run_steered(arun, [list(p) for p in PROMPTS], steering, model)
        if steering is not None:
            stats[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert outputs["zero"] == outputs["plain"]
    assert outputs["one_head"] != outputs["plain"]
    layers, heads, _ = SHAPE
    for name, chosen in (("zero", layers * heads), ("one_head", 1)):
        # the family's steered class ran in the engine's process, and its hooks did their
        # arithmetic on exactly the chosen heads wherever the gate fired
        assert stats[name]["class"] == f"Steered{architecture}"
        assert stats[name]["pid"] != os.getpid() and stats[name]["gated_tokens"] > 0
        assert stats[name]["head_steers"] == stats[name]["gated_tokens"] * chosen
