"""CREST calibration: generated traces, step labels, per-head probes, the saved folder."""
from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest
import torch

from reasonloom.steering.calibrate import CalibrationConfig, boundaries, split_and_balance
from reasonloom.steering.ops import SeparatorMasks
from reasonloom.steering.probes import HeadProbes, wilson_interval
from reasonloom.steering.traces import Trace, arithmetic_traces, read_traces, write_traces

EQUATION = re.compile(r"(-?\d+) ([+*-]) (-?\d+) (?:=|is) (-?\d+)")
NEGATION = re.compile(r"-\((-?\d+)\) (?:=|is) (-?\d+)")


def _wrong(step: str) -> bool:
    if m := EQUATION.search(step):
        x, op, y, result = m.groups()
        a, b = Fraction(x), Fraction(y)
        return {"+": a + b, "-": a - b, "*": a * b}[op] != Fraction(result)
    if m := NEGATION.search(step):
        return -Fraction(m.group(1)) != Fraction(m.group(2))
    return False


def test_generated_traces_plant_slips_in_about_30_percent_and_a_check_follows_each():
    traces = arithmetic_traces(200, seed=3)
    slips = [t for t in traces if t.has_slip]
    assert 0.2 < len(slips) / len(traces) < 0.4
    for t in traces:
        steps = t.trace.split("\n\n")
        assert steps[-1] == f"So the answer is {t.answer}."
        checks = [i for i, s in enumerate(steps) if s.startswith("Wait")]
        wrong = [i for i, s in enumerate(steps) if not s.startswith("Wait") and _wrong(s)]
        if t.has_slip:
            # exactly one wrong equation, and the step right after it is the check
            assert len(wrong) == 1 and checks == [wrong[0] + 1]
        else:
            assert not wrong and not checks


def test_traces_round_trip_through_jsonl(tmp_path):
    traces = arithmetic_traces(6, seed=1)
    path = write_traces(tmp_path / "t.jsonl", traces)
    assert [t.trace for t in read_traces(path)] == [t.trace for t in traces]
    (tmp_path / "real.jsonl").write_text(json.dumps({"prompt": "q", "response": "a\n\nb"}) + "\n")
    assert read_traces(tmp_path / "real.jsonl")[0].trace == "a\n\nb"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from reasonloom.backends.vllm.embedded import ensure_embedded_model

    return AutoTokenizer.from_pretrained(ensure_embedded_model())


def test_every_separator_is_a_boundary_labelled_by_the_step_after_it(tokenizer):
    from reasonloom.steering.calibrate import token_texts

    masks = SeparatorMasks(token_texts(tokenizer), "\n\n")
    trace = Trace(question="Calculate 5 - 3 + 6.",
                  trace="We need 5 - 3 + 6.\n\nFirst, 5 - 3 = 2.\n\nNext, 2 + 6 = 9.\n\n"
                        "Wait, let me check: 2 + 6 = 8.\n\nSo the answer is 8.")
    ids, positions, labels = boundaries(tokenizer, trace, masks, ("Wait", "Hmm"))
    assert labels == [0, 0, 1, 0]
    # each boundary token completes a "\n\n" and the text up to it ends with one
    for pos in positions:
        assert tokenizer.decode(ids[:pos + 1]).endswith("\n\n")


def test_a_traces_system_prompt_is_rendered_before_its_question(tokenizer):
    from reasonloom.steering.calibrate import prompt_ids, token_texts

    plain = tokenizer.decode(prompt_ids(tokenizer, "What is 2 + 3?"))
    head = prompt_ids(tokenizer, "What is 2 + 3?", "Answer tersely.")
    with_system = tokenizer.decode(head)
    assert "Answer tersely." in with_system and "Answer tersely." not in plain
    assert with_system.index("Answer tersely.") < with_system.index("What is 2 + 3?")
    trace = Trace(question="What is 2 + 3?", system="Answer tersely.", trace="5.\n\nDone.")
    ids, _, _ = boundaries(tokenizer, trace, SeparatorMasks(token_texts(tokenizer), "\n\n"),
                           ("Wait",))
    assert ids[:len(head)] == head


def test_balanced_splits_keep_traces_apart_and_classes_equal():
    labels = [[0, 1, 0, 0] if i % 3 == 0 else [0, 0, 0] for i in range(60)]
    chosen = split_and_balance(labels, CalibrationConfig(seed=2))
    traces = {name: {t for t, _ in pairs} for name, pairs in chosen.items()}
    assert not traces["train"] & traces["val"] and not traces["val"] & traces["test"]
    for pairs in chosen.values():
        ys = [labels[t][b] for t, b in pairs]
        assert sum(ys) * 2 == len(ys)


def test_probe_finds_the_informative_head_and_not_the_noise_head():
    gen = torch.Generator().manual_seed(0)
    n, dim = 400, 16
    y = torch.randint(0, 2, (n,), generator=gen)
    direction = torch.randn(dim, generator=gen)
    informative = torch.randn(n, dim, generator=gen) + torch.outer(y.float() * 2 - 1, direction)
    noise = torch.randn(n, dim, generator=gen)
    x = torch.stack([informative, noise], dim=1) * 5 + 3        # raw scale and offset
    probes = HeadProbes.fit(x[:300], y[:300], 1e-2)
    acc = probes.accuracy(x[300:], y[300:])
    assert acc[0] > 0.9 and acc[1] < 0.7
    cosine = torch.nn.functional.cosine_similarity(probes.weight[0], direction, dim=0)
    assert cosine > 0.8                                         # raw-space weights, not scaled


def test_wilson_interval_brackets_the_rate_and_narrows_with_more_trials():
    low, high = wilson_interval(40, 50)
    assert low < 0.8 < high
    low2, high2 = wilson_interval(400, 500)
    assert low < low2 < 0.8 < high2 < high
    assert wilson_interval(0, 10)[0] == 0.0


@pytest.mark.slow
def test_calibration_on_generated_traces_reports_held_out_probe_accuracy(tmp_path, capsys):
    """The `reasonloom steer` command end to end on the embedded model (teacher-forced,
    float32): the kept heads, their unit vectors and a manifest with held-out accuracy and a
    95% interval."""
    from safetensors.torch import load_file

    from reasonloom.cli.main import main

    traces = write_traces(tmp_path / "traces.jsonl", arithmetic_traces(240, seed=5))
    code = main(["steer", "calibrate", "--model-dir", "embedded", "--traces", str(traces),
                 "--out", str(tmp_path / "vec"), "--top-k", "24", "--seed", "5"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((tmp_path / "vec" / "manifest.json").read_text())
    tensors = load_file(str(tmp_path / "vec" / "vectors.safetensors"))
    assert len(manifest["heads"]) == 24 == tensors["vectors"].shape[0]
    assert torch.allclose(tensors["vectors"].norm(dim=-1), torch.ones(24), atol=1e-5)
    val = [h["val_acc"] for h in manifest["heads"]]
    assert val == sorted(val, reverse=True)
    for head in manifest["heads"]:
        low, high = head["test_ci95"]
        assert 0 <= low <= head["test_acc"] <= high <= 1 and head["n_test"] >= 20
    assert len(manifest["weights_sha256"]) == 64
    low, high = report["probe_acc_ci95"]
    assert low <= report["probe_acc"] <= high
    print(f"\nprobe accuracy (held-out, balanced, chance 0.5): {report}")
