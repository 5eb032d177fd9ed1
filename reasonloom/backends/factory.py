"""Building a Backend from a BackendSpec (backends/spec.py), one object per distinct spec."""
from __future__ import annotations

from reasonloom.backends.base import Backend
from reasonloom.backends.spec import BackendSpec

__all__ = ["BackendSpec", "build_backend"]   # BackendSpec re-exported: the README's import


_SHARED: dict[str, Backend] = {}


def build_backend(spec: BackendSpec) -> Backend:
    """One backend object per distinct spec in the process (engines are shared further down)."""
    key = spec.model_dump_json()
    if key in _SHARED:
        return _SHARED[key]
    if spec.backend in ("embedded", "vllm"):
        from reasonloom.backends.vllm.backend import VLLMBackend

        model = spec.model
        if spec.backend == "embedded":
            from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model

            model = str(ensure_embedded_model())
            backend: Backend = VLLMBackend(model, dict(spec.engine), served_name=MODEL_NAME)
        else:
            backend = VLLMBackend(model, dict(spec.engine))
    elif spec.endpoints:
        from reasonloom.backends.replicas import ReplicaBackend

        backend = ReplicaBackend.from_spec(spec)
    elif spec.backend == "openai":
        from reasonloom.backends.openai import OpenAIBackend

        backend = OpenAIBackend(spec.model, base_url=spec.base_url, api_key=spec.api_key(),
                                **spec.options)
    elif spec.backend == "litellm":
        from reasonloom.backends.litellm import LiteLLMBackend

        backend = LiteLLMBackend(spec.model, base_url=spec.base_url, api_key=spec.api_key(),
                                 **spec.options)
    else:
        from reasonloom.backends.scripted import ScriptedBackend

        backend = ScriptedBackend(model=spec.model or "scripted", **spec.options)
    _SHARED[key] = backend
    return backend
