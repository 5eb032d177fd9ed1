"""CREST steering inside the real vLLM engine (the embedded model, float32, eager).

Two steered engines are started one after the other (lambda = 0, then lambda = -4), each shut
down before the next, so at most two engines are alive: the session's plain one and one steered.
"""
from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest
import torch

from tests.conftest import EMBEDDED_ENGINE_ARGS

pytestmark = pytest.mark.engine

PROMPTS = ("Solve step by step, one step per paragraph: Tom has 3 apples and buys 5 more. "
           "How many apples does he have?",
           "List three tips for studying, one paragraph each.",
           "Solve step by step, one step per paragraph: a box holds 4 rows of 6 eggs. "
           "How many eggs?")
MAX_TOKENS = 48


def write_vectors(folder, seed: int = 0, shape: tuple[int, int, int] = (30, 9, 64),
                  model_name: str = "SmolLM2-135M-Instruct",
                  architecture: str = "LlamaForCausalLM"):
    """A steering folder with every head of the model (the embedded one unless `shape` says
    (layers, heads, head_dim)) and random unit vectors: the engine tests need vectors that move
    the output, not calibrated ones (calibration has its own tests)."""
    from reasonloom.steering.vectors import HeadReport, Manifest, save_folder

    layers, heads, dim = shape
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(layers * heads, dim, generator=gen)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    index = torch.arange(layers * heads)
    reports = tuple(HeadReport(layer=int(g) // heads, head=int(g) % heads, val_acc=0.5,
                               test_acc=0.5, test_ci95=(0.0, 1.0), n_test=0, l2=1.0)
                    for g in index)
    manifest = Manifest(model_name=model_name, weights_sha256="0" * 64,
                        architecture=architecture, num_layers=layers, num_heads=heads,
                        head_dim=dim, separator="\n\n", keywords=("Wait",),
                        default_strength=-1.0, heads=reports)
    save_folder(folder, {"heads": torch.stack([index // heads, index % heads], dim=1),
                         "vectors": vectors, "probe_weight": vectors.clone(),
                         "probe_bias": torch.zeros(layers * heads)}, manifest)
    return folder


async def greedy(backend, prompt_ids: list[list[int]]) -> list[list[int]]:
    """One request at a time, so both engines see identical batches."""
    from vllm import SamplingParams

    engine = await backend.engine()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    outputs = []
    for ids in prompt_ids:
        final = None
        async for out in engine.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
            final = out
        outputs.append(list(final.outputs[0].token_ids))
    return outputs


@pytest.fixture(scope="module")
def prompt_ids(embedded):
    from reasonloom.orchestrator.types import Message

    return [embedded.render((Message(role="user", content=p),)) for p in PROMPTS]


@pytest.fixture(scope="module")
def plain_outputs(embedded, prompt_ids, arun):
    return arun(greedy(embedded, prompt_ids))


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    return write_vectors(tmp_path_factory.mktemp("steer") / "vectors")


def run_steered(arun, prompt_ids, steering: dict | None, model: str | None = None
                ) -> list[list[int]]:
    """Start an engine (steered unless `steering` is None; the embedded model unless `model`)
    through the ordinary engine path, generate greedily, shut it down."""
    from reasonloom.backends.vllm.backend import VLLMBackend
    from reasonloom.backends.vllm.embedded import ensure_embedded_model
    from reasonloom.backends.vllm.engine import shutdown_engine

    engine_args = EMBEDDED_ENGINE_ARGS if steering is None else {
        **EMBEDDED_ENGINE_ARGS, "reasonloom_steering": steering}
    backend = VLLMBackend(model or str(ensure_embedded_model()), engine_args)
    try:
        return arun(greedy(backend, prompt_ids))
    finally:
        shutdown_engine(backend.model_path, backend.engine_args)
        arun(asyncio.sleep(0.1))     # let the engine's cancelled output handler finish on its loop


def step_starts(tokenizer, ids: list[int]) -> list[bool]:
    from reasonloom.steering.calibrate import token_texts
    from reasonloom.steering.ops import SeparatorMasks, sequence_step_starts

    masks = SeparatorMasks(token_texts(tokenizer), "\n\n")
    return sequence_step_starts(torch.tensor(ids), masks).tolist()


def test_zero_strength_steered_engine_matches_the_plain_engine_token_for_token(
        embedded, arun, prompt_ids, plain_outputs, vectors, tmp_path):
    stats_file = tmp_path / "stats.json"
    steered = run_steered(arun, prompt_ids, {"vectors": str(vectors), "strength": 0.0,
                                             "gate": "step", "stats_file": str(stats_file)})
    assert steered == plain_outputs
    stats = json.loads(stats_file.read_text())
    # The steered class ran in the engine's own worker process, not in this one ...
    assert stats["class"] == "SteeredLlamaForCausalLM" and stats["pid"] != os.getpid()
    # ... and its gate fired: the equality holds while every head's hook did its arithmetic.
    assert stats["gated_tokens"] > 0 and stats["head_steers"] == stats["gated_tokens"] * 270
    assert stats["decode_tokens"] == sum(len(o) - 1 for o in plain_outputs)


def test_nonzero_strength_changes_outputs_only_after_a_step_separator(
        embedded, arun, prompt_ids, plain_outputs, vectors, tmp_path):
    stats_file = tmp_path / "stats.json"
    steered = run_steered(arun, prompt_ids, {"vectors": str(vectors), "strength": -4.0,
                                             "gate": "step", "stats_file": str(stats_file)})
    changed = 0
    for prompt, plain, ours in zip(prompt_ids, plain_outputs, steered):
        if plain == ours:
            continue
        changed += 1
        first = next(i for i, (a, b) in enumerate(zip(plain, ours)) if a != b)
        # The token before the first difference completes a "\n\n": the forward that chose
        # the differing token was the first one whose gate fired.
        assert first >= 1
        assert step_starts(embedded.tokenizer, prompt + plain)[len(prompt) + first - 1]
        assert not any(step_starts(embedded.tokenizer, prompt + plain)[len(prompt):
                                                                       len(prompt) + first - 1])
    assert changed >= 1
    assert json.loads(stats_file.read_text())["gated_tokens"] > 0
