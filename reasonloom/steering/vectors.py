"""The calibrated steering folder: `vectors.safetensors` + `manifest.json`, and the engine-side
settings that point at it.

vectors.safetensors (rows ranked by held-out probe accuracy, best first):
  heads         [K, 2] int64   (layer, head)
  vectors       [K, D] float32 unit steering vector of each head (the probe's direction)
  probe_weight  [K, D] float32 logistic probe on the head's raw output (o_proj input slice)
  probe_bias    [K]    float32
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

VECTORS_FILE = "vectors.safetensors"
MANIFEST_FILE = "manifest.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HeadReport(_Frozen):
    """One kept head: validation accuracy (used for ranking) and test accuracy (reported)."""

    layer: int
    head: int
    val_acc: float
    test_acc: float
    test_ci95: tuple[float, float]      # Wilson score interval
    n_test: int
    l2: float                           # the probe's L2 strength, chosen on validation


class Manifest(_Frozen):
    """What a steering folder was calibrated from and how well its probes predict."""

    model_name: str
    weights_sha256: str                 # sha256 over the model's safetensors files, in name order
    architecture: str
    num_layers: int
    num_heads: int
    head_dim: int
    separator: str
    keywords: tuple[str, ...]
    default_strength: float
    default_gate: Literal["step_and_probe", "step"] = "step_and_probe"
    heads: tuple[HeadReport, ...]       # the kept top-k, best first (same order as the tensors)
    traces: dict[str, object] = Field(default_factory=dict)       # file, count, sha256, splits
    boundaries: dict[str, int] = Field(default_factory=dict)      # per split and class
    all_heads: dict[str, float] = Field(default_factory=dict)     # summary over every head
    probe_acc: float = 0.0              # mean test accuracy of the kept heads
    probe_acc_ci95: tuple[float, float] = (0.0, 0.0)   # Wilson interval of the pooled test hits
    notes: str = ""


class SteeringSettings(_Frozen):
    """A role's `steering:` entry; travels to the worker inside `hf_overrides`."""

    vectors: str                        # the calibrated folder
    strength: float | None = None       # lambda; None = the manifest's default
    top_k_heads: int | None = Field(None, ge=1)   # None = every head kept in the folder
    gate: Literal["step_and_probe", "step"] | None = None   # None = the manifest's default
    separator: str | None = None        # None = the manifest's separator
    stats_file: str | None = None       # worker writes pid and gate counters here (tests, benches)


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over the model's *.safetensors files, in name order (1 MiB reads)."""
    digest = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `reasonloom steer calibrate` first")
    return Manifest.model_validate(json.loads(path.read_text()))


def save_folder(folder: str | Path, tensors: dict, manifest: Manifest) -> Path:
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / VECTORS_FILE))
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return out


def load_tensors(folder: str | Path) -> dict:
    from safetensors.torch import load_file

    path = Path(folder) / VECTORS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `reasonloom steer calibrate` first")
    return load_file(str(path))
