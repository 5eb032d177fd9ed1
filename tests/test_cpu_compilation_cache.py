"""A compiled model saved by the CPU engine loads on the next start (backends/vllm/cpu_fixes.py):
the saved callable is torch's own, which vLLM's loader asks to `finalize_loading`."""
from __future__ import annotations

import pytest

from reasonloom.backends.vllm.cpu_fixes import load_saved_compilation


@pytest.mark.slow
def test_a_saved_inductor_compilation_loads_the_way_vllms_loader_asks_and_computes_the_same(
        tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from torch._dynamo.aot_compile_types import SerializableCallable

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))

    def layer(x):
        return torch.nn.functional.silu(x) * 2.0 + x.mean()

    x = torch.randn(16)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor").aot_compile(((x,), {}))
    saved = tmp_path / "model"
    compiled.save_compiled_function(str(saved))
    with open(saved, "rb") as f:
        loaded = torch.compiler.load_compiled_function(f)
    artifact = loaded._artifacts.compiled_fn

    # vLLM 0.32 (compilation/decorators.py) calls this on every loaded artifact
    monkeypatch.delattr(SerializableCallable, "finalize_loading", raising=False)
    with pytest.raises(AttributeError, match="finalize_loading"):
        artifact.finalize_loading(None)
    load_saved_compilation()
    artifact.finalize_loading(None)
    assert torch.allclose(loaded(x), layer(x))
    load_saved_compilation()     # again (every vLLM process registers it): still torch's callable
    assert SerializableCallable.finalize_loading.__name__ == "_loaded_already"
