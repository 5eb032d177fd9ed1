"""LiteLLMBackend: the Backend seam on `litellm.acompletion`, so any provider litellm knows
(`openai/...`, `anthropic/...`, `hosted_vllm/...`, `ollama/...`) can serve a role.

Requests and answers speak the OpenAI wire format, so this is OpenAIBackend with another
transport: litellm's own retries are off (`num_retries=0`, `max_retries=0`), and its errors
(subclasses of the openai SDK's) map to the same typed errors. vLLM's extras (prompt
log-probs, continuing an assistant message, /tokenize) are on for `hosted_vllm/` models.

Example:
    >>> backend = LiteLLMBackend("hosted_vllm/SmolLM2-135M-Instruct",
    ...                          base_url="http://127.0.0.1:8000/v1")
    >>> gen = await backend.generate(GenerateRequest(messages=(...,), n=2, temperature=0.8))
"""
from __future__ import annotations

import os
import re
from typing import Any

# litellm fetches its model price table from the network at import unless told not to.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm  # noqa: E402

from reasonloom.backends._openai_wire import one_line  # noqa: E402
from reasonloom.backends.errors import BackendError, BadRequest, Unreachable  # noqa: E402
from reasonloom.backends.errors import MissingApiKey  # noqa: E402
from reasonloom.backends.openai import OpenAIBackend  # noqa: E402

litellm.suppress_debug_info = True   # no "Give Feedback / Get Help" banners on every error
# Providers whose servers speak vLLM's extras (prompt_logprobs, continue_final_message, /tokenize).
VLLM_PROVIDERS = ("hosted_vllm",)
_KEY_NAME = re.compile(r"\b([A-Z][A-Z0-9_]*_(?:API_KEY|KEY|TOKEN))\b")


class LiteLLMBackend(OpenAIBackend):
    """`model` is litellm's `provider/model` name; `base_url` becomes litellm's `api_base`."""

    name = "litellm"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 **options: Any):
        try:
            self.server_model, self.provider, _, _ = litellm.get_llm_provider(
                model, api_base=base_url)
        except Exception:
            raise ValueError(f"litellm backend: no provider for model {model!r}: write it as "
                             f"provider/model, e.g. hosted_vllm/{model}") from None
        self.api_base = base_url
        self._supported = set(litellm.get_supported_openai_params(
            model=model, custom_llm_provider=self.provider) or ())
        super().__init__(model, base_url=base_url, api_key=api_key, **options)
        if base_url is None:
            self.base_url = f"litellm:{self.provider}"   # where errors and served_by point

    def _resolve_api_key(self, api_key: str | None) -> str | None:   # type: ignore[override]
        """litellm reads each provider's key from the environment: name the missing variable."""
        if api_key:
            return api_key
        if self.api_base:
            # a key litellm would read from the provider's variable must not go to another host
            return "EMPTY"
        missing = litellm.validate_environment(self.model, api_base=self.api_base)
        keys = [k for k in missing.get("missing_keys", [])
                if not (self.api_base and k.endswith(("_API_BASE", "_BASE_URL")))]
        if keys:
            raise MissingApiKey(f"litellm model {self.model!r}: environment variable "
                                f"{' / '.join(keys)} is not set")
        return None

    def default_capabilities(self) -> dict[str, Any]:
        vllm = self.provider in VLLM_PROVIDERS and self.api_base is not None
        return {"n": "n" in self._supported, "logprobs": "logprobs" in self._supported,
                "prompt_logprobs": vllm, "continue_final_message": vllm, "tokenize": vllm}

    def _probe_context_length(self) -> int | None:
        if self.api_base is None:
            try:
                return int(litellm.get_model_info(self.model).get("max_input_tokens") or 0) or None
            except Exception:   # a model litellm has no card for: unknown
                return None
        return super()._probe_context_length()

    @property
    def server_root(self) -> str:
        return re.sub(r"/v1$", "", (self.api_base or "").rstrip("/"))

    # -- transport -------------------------------------------------------------------------------
    def _args(self, body: dict[str, Any]) -> dict[str, Any]:
        args = {**body, "num_retries": 0, "max_retries": 0, "timeout": self.timeout_s}
        if "seed" in args and "seed" not in self._supported:
            del args["seed"]   # a provider without seeds samples unseeded; nothing to fake
        if self.api_base:
            args["api_base"] = self.api_base
        if self.api_key:
            args["api_key"] = self.api_key
        if self.headers:
            args["extra_headers"] = self.headers
        return args

    def fail(self, exc: BaseException, what: str) -> BackendError:
        """litellm reports some transport failures as a 500 and a missing key as a message."""
        if isinstance(exc, litellm.AuthenticationError) and (key := _KEY_NAME.search(str(exc))):
            return BadRequest(f"litellm model {self.model!r}: the provider refused the API key "
                              f"(check environment variable {key.group(1)})")
        mapped = super().fail(exc, what)
        if not isinstance(mapped, Unreachable) and "Cannot connect to host" in str(exc):
            return Unreachable(f"cannot reach {self.base_url}: {what} could not connect "
                               f"({one_line(exc, 160)})")
        return mapped

    async def complete(self, body: dict[str, Any]) -> Any:
        try:
            return await litellm.acompletion(**self._args(body))
        except Exception as exc:
            raise self.fail(exc, f"litellm.acompletion({self.model})") from None

    async def open_stream(self, body: dict[str, Any]) -> Any:
        try:
            return await litellm.acompletion(**self._args(body))
        except Exception as exc:
            raise self.fail(exc, f"litellm.acompletion({self.model}, stream)") from None

    def config_hash(self) -> str:
        return f"litellm:{self.api_base}:{self.model}"
