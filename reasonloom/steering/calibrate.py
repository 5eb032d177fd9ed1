"""CREST offline calibration (arXiv 2512.24574, section 3): find the attention heads whose
output at a step boundary predicts that the next reasoning step is a verification /
backtracking step, and store one steering vector per head.

1. Teacher-force the model (transformers, float32) over each trace, after the chat-templated
   question; steps are split at the separator.
2. A boundary is a token that completes a separator (the same per-token test the engine's gate
   uses, `ops.sequence_step_starts`); its label is 1 when the step after it starts with a
   keyword ("Wait", "Alternatively", "Let me check", "Hmm").
3. Capture every head's output at each boundary: the slice of o_proj's INPUT that belongs to the
   head (CREST's `before_o_proj` space; the engine steers the same slice).
4. Split traces 60/20/20 into train / validation / test (by trace, so steps of one trace never
   straddle splits), balance the classes inside each split (so chance is 0.5), fit one
   L2-regularised logistic probe per head on train, pick each head's L2 and rank heads on
   validation, and report the kept heads' accuracy on test with a 95% Wilson interval (ranking
   and reporting on separate data: the top of a ranking scored on its own data is inflated).
5. Keep the top-k heads (default: 38% of all heads, the paper's default); the steering vector
   is the probe's unit direction.

Example:
    >>> manifest = calibrate(model_dir, read_traces("traces.jsonl"), "steer/", CalibrationConfig())
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from reasonloom.steering.ops import SeparatorMasks, sequence_step_starts
from reasonloom.steering.probes import HeadProbes, select_l2, wilson_interval
from reasonloom.steering.traces import Trace
from reasonloom.steering.vectors import HeadReport, Manifest, save_folder, weights_sha256

DEFAULT_KEYWORDS = ("Wait", "Alternatively", "Let me check", "Hmm")


class CalibrationConfig(BaseModel):
    """Calibration settings; defaults follow the paper unless noted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    separator: str = "\n\n"
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS     # a step starting with one is non-linear
    top_k: int | None = Field(None, ge=1)            # None = 38% of all heads (paper's default)
    default_strength: float = -1.0   # lambda: -1 removes the component (paper's runs use -4)
    l2_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    batch_size: int = Field(8, ge=1)


def token_texts(tokenizer) -> list[str]:
    """Each vocabulary entry's decoded text (what the separator test looks at)."""
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))])


def prompt_ids(tokenizer, question: str, system: str | None = None) -> list[int]:
    """The chat-templated question (under its system prompt, if any), as the engine renders it
    before the model's reply."""
    if not question:
        return []
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        text = tokenizer.apply_chat_template(messages + [{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
    else:
        text = question + "\n"
    return tokenizer.encode(text, add_special_tokens=False)


def boundaries(tokenizer, trace: Trace, masks: SeparatorMasks,
               keywords: Sequence[str]) -> tuple[list[int], list[int], list[int]]:
    """(token ids, boundary positions, labels) for one trace after its prompt."""
    head = prompt_ids(tokenizer, trace.question, trace.system)
    enc = tokenizer(trace.trace, add_special_tokens=False, return_offsets_mapping=True)
    ids = head + list(enc["input_ids"])
    starts = sequence_step_starts(torch.tensor(ids), masks).tolist()
    positions, labels = [], []
    for i, (_, end) in enumerate(enc["offset_mapping"]):
        following = trace.trace[end:].lstrip()
        if starts[len(head) + i] and following:
            positions.append(len(head) + i)
            labels.append(int(following.startswith(tuple(keywords))))
    return ids, positions, labels


@torch.no_grad()
def capture_heads(model, rows: list[tuple[list[int], list[int]]], batch_size: int,
                  pad_id: int) -> torch.Tensor:
    """[N, layers, heads*head_dim]: o_proj's input at every listed position of every row."""
    layers = model.model.layers
    captured: dict[int, torch.Tensor] = {}
    where: dict[str, torch.Tensor] = {}

    def hook_for(layer_idx: int):
        def hook(_module, args):
            captured[layer_idx] = args[0][where["row"], where["pos"]].float()
        return hook

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(hook_for(i))
               for i, layer in enumerate(layers)]
    # Positions after a row's last boundary cannot affect it (causal): cut them off; batch rows
    # of similar length together so little of each batch is padding.
    rows = [(ids[:max(pos, default=0) + 1], pos) for ids, pos in rows]
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
    per_row: dict[int, torch.Tensor] = {}
    try:
        for start in range(0, len(order), batch_size):
            members = order[start:start + batch_size]
            batch = [rows[r] for r in members]
            width = max(len(ids) for ids, _ in batch)
            # Right padding: causal attention keeps every real position blind to the pads.
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (ids, _) in enumerate(batch):
                input_ids[r, :len(ids)] = torch.tensor(ids)
                mask[r, :len(ids)] = 1
            where["row"] = torch.tensor([r for r, (_, pos) in enumerate(batch) for _ in pos],
                                        dtype=torch.long)
            where["pos"] = torch.tensor([p for _, pos in batch for p in pos], dtype=torch.long)
            if where["row"].numel() == 0:
                continue
            # The decoder stack only: the LM head (a fifth of the FLOPs here) is not needed.
            model.model(input_ids=input_ids, attention_mask=mask)
            feats = torch.stack([captured[i] for i in range(len(layers))], dim=1)
            for r, chunk in zip(members, feats.split([len(pos) for _, pos in batch])):
                per_row[r] = chunk
    finally:
        for handle in handles:
            handle.remove()
    out = [per_row[r] for r in range(len(rows)) if r in per_row]
    return torch.cat(out) if out else torch.empty(0)


def split_and_balance(labels_by_trace: list[list[int]], cfg: CalibrationConfig
                      ) -> dict[str, list[tuple[int, int]]]:
    """(trace, boundary) pairs per split, classes balanced (seeded). Negatives are drawn from
    the traces that hold a positive first (matched controls: same question and context,
    another step), then from the rest: a teacher-forced pass costs a whole trace, and this
    keeps the number of traces to run near the number of positives."""
    rng = random.Random(cfg.seed)
    order = list(range(len(labels_by_trace)))
    rng.shuffle(order)
    cut1 = int(round(cfg.splits[0] * len(order)))
    cut2 = cut1 + int(round(cfg.splits[1] * len(order)))
    parts = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    chosen = {}
    for name, traces in parts.items():
        with_pos = [t for t in traces if any(labels_by_trace[t])]
        pos = [(t, b) for t in with_pos for b, y in enumerate(labels_by_trace[t]) if y]
        near = [(t, b) for t in with_pos for b, y in enumerate(labels_by_trace[t]) if not y]
        far = [(t, b) for t in traces if not any(labels_by_trace[t])
               for b in range(len(labels_by_trace[t]))]
        if not pos or not (near or far):
            raise ValueError(f"the {name} split has no {'positive' if not pos else 'negative'} "
                             f"step boundary: give more traces, or check the keywords")
        neg = rng.sample(near, min(len(near), len(pos)))
        neg += rng.sample(far, min(len(far), len(pos) - len(neg)))
        chosen[name] = sorted(pos + neg)
    return chosen


def calibrate(model_dir: str | Path, traces: Sequence[Trace], out_dir: str | Path,
              cfg: CalibrationConfig = CalibrationConfig(), traces_info: dict | None = None
              ) -> Manifest:
    """Fit the probes, keep the top-k heads, write vectors.safetensors + manifest.json."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    hf_config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    num_layers, num_heads = hf_config.num_hidden_layers, hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    masks = SeparatorMasks(token_texts(tokenizer), cfg.separator, hf_config.vocab_size)

    per_trace = [boundaries(tokenizer, t, masks, cfg.keywords) for t in traces]
    chosen = split_and_balance([labels for _, _, labels in per_trace], cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data = {}
    for name, pairs in chosen.items():
        by_trace: dict[int, list[int]] = {}
        for t, b in pairs:
            by_trace.setdefault(t, []).append(b)
        rows = [(per_trace[t][0], [per_trace[t][1][b] for b in bs]) for t, bs in by_trace.items()]
        labels = [per_trace[t][2][b] for t, bs in by_trace.items() for b in bs]
        feats = capture_heads(model, rows, cfg.batch_size, pad)
        data[name] = (feats.reshape(len(labels), num_layers * num_heads, head_dim),
                      torch.tensor(labels))

    probes, val_acc, l2 = select_l2(*data["train"], *data["val"], cfg.l2_grid)
    test_x, test_y = data["test"]
    test_acc = probes.accuracy(test_x, test_y)
    k = cfg.top_k or max(1, round(0.38 * num_layers * num_heads))
    k = min(k, num_layers * num_heads)
    # Rank on validation; break ties by head order, never by the test score.
    ranking = sorted(range(num_layers * num_heads), key=lambda g: (-float(val_acc[g]), g))[:k]
    n_test = len(test_y)
    reports = []
    for g in ranking:
        hits = round(float(test_acc[g]) * n_test)
        reports.append(HeadReport(layer=g // num_heads, head=g % num_heads,
                                  val_acc=round(float(val_acc[g]), 4),
                                  test_acc=round(float(test_acc[g]), 4),
                                  test_ci95=tuple(round(x, 4) for x in
                                                  wilson_interval(hits, n_test)),
                                  n_test=n_test, l2=float(l2[g])))
    index = torch.tensor(ranking)
    weight = probes.weight[index]
    tensors = {"heads": torch.stack([index // num_heads, index % num_heads], dim=1),
               "vectors": weight / weight.norm(dim=-1, keepdim=True).clamp_min(1e-12),
               "probe_weight": weight, "probe_bias": probes.bias[index]}
    mean_kept = sum(r.test_acc for r in reports) / len(reports)
    counts = {f"{name}_{cls}": int((y == c).sum()) for name, (_, y) in data.items()
              for cls, c in (("pos", 1), ("neg", 0))}
    manifest = Manifest(
        model_name=model_dir.name, weights_sha256=weights_sha256(model_dir),
        architecture=(hf_config.architectures or ["?"])[0], num_layers=num_layers,
        num_heads=num_heads, head_dim=head_dim, separator=cfg.separator, keywords=cfg.keywords,
        default_strength=cfg.default_strength, heads=tuple(reports),
        traces={**(traces_info or {}), "count": len(traces),
                "splits": dict(zip(("train", "val", "test"), cfg.splits)), "seed": cfg.seed},
        boundaries=counts,
        all_heads={"mean_test_acc": round(float(test_acc.mean()), 4),
                   "max_val_acc": round(float(val_acc.max()), 4), "count": len(val_acc)},
        probe_acc=round(mean_kept, 4),
        probe_acc_ci95=tuple(round(x, 4) for x in
                             wilson_interval(round(mean_kept * n_test), n_test)),
        notes=("test accuracy on a class-balanced held-out split (chance 0.5); heads ranked on "
               "a separate validation split; probe_acc = mean over kept heads, its interval "
               "treats that mean as one classifier's accuracy on the n_test examples"))
    save_folder(out_dir, tensors, manifest)
    return manifest


def traces_file_info(path: str | Path) -> dict:
    import hashlib

    raw = Path(path).read_bytes()
    return {"file": str(path), "sha256": hashlib.sha256(raw).hexdigest()}


def summary(manifest: Manifest) -> str:
    best = manifest.heads[0]
    return json.dumps({"kept_heads": len(manifest.heads), "probe_acc": manifest.probe_acc,
                       "probe_acc_ci95": manifest.probe_acc_ci95,
                       "best_head": [best.layer, best.head], "best_test_acc": best.test_acc,
                       "best_test_ci95": best.test_ci95, "n_test": best.n_test,
                       "all_heads_mean_test_acc": manifest.all_heads.get("mean_test_acc")})
