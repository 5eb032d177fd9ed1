"""Backend specs (what a recipe's `models:` entry says) and building a Backend from one."""
from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from reasonloom.backends.base import Backend
from reasonloom.orchestrator.types import FrozenModel

BackendKind = Literal["embedded", "vllm", "openai", "litellm", "scripted"]


class MissingApiKey(ValueError):
    pass


class BackendSpec(FrozenModel):
    """Where a role's model lives. `api_key_env` names an environment variable: never the key."""

    backend: BackendKind = "embedded"
    model: str = ""                      # model id / folder; `embedded` fills it in
    base_url: str | None = None
    api_key_env: str | None = None
    engine: dict[str, Any] = Field(default_factory=dict)   # vLLM engine arguments
    options: dict[str, Any] = Field(default_factory=dict)  # backend-specific extras

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        if not value:
            raise MissingApiKey(f"environment variable {self.api_key_env} is not set")
        return value


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
