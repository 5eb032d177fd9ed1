"""Backend specs: where a role's model lives (what a recipe's `models:` entry says about it).
Kept apart from the factory, so that the backends that read a spec (replicas) and the factory
that builds them never import each other."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from reasonloom.backends.errors import MissingApiKey
from reasonloom.backends.key_policy import read_key
from reasonloom.types import FrozenModel

def _is_a_name(value: str) -> str:
    if not value.replace("_", "").isalnum():
        raise ValueError("api_key_env must be an environment variable NAME, not a key")
    return value


# The NAME of the environment variable that holds a key, never the key itself
EnvName = Annotated[str, AfterValidator(_is_a_name)]
BackendKind = Literal["embedded", "vllm", "openai", "litellm", "scripted"]


class Endpoint(FrozenModel):
    """One replica of a role's model: an OpenAI-compatible server (vLLM's api_server ...)."""

    base_url: str                        # http://host:port/v1
    model: str | None = None             # the name this server knows the model by; default: the role's
    api_key_env: EnvName | None = None   # default: the role's

    @field_validator("base_url")
    @classmethod
    def _is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")


class ReplicaRouting(FrozenModel):
    """How a role's calls spread over its endpoints: litellm Router settings plus our
    per-problem affinity rule (backends/replicas.py)."""

    # `problem`: a problem's calls go to one replica (its prefix cache), chosen by a hash of the
    # problem id among healthy replicas, least-busy while it cools down; `none`: litellm's
    # `strategy` picks every call
    affinity: Literal["problem", "none"] = "problem"
    strategy: Literal["least-busy", "latency-based-routing", "simple-shuffle"] = "least-busy"
    allowed_fails: int = Field(1, ge=0)        # failures a replica may have before cooling down
    cooldown_s: float = Field(30.0, gt=0)      # how long a failing replica sits out
    health_check_s: float | None = Field(5.0, gt=0)   # background probe period; None = off


class BackendSpec(FrozenModel):
    """Where a role's model lives. `api_key_env` names an environment variable: never the key."""

    backend: BackendKind = "embedded"
    model: str = ""                      # model id / folder; `embedded` fills it in
    base_url: str | None = None
    api_key_env: EnvName | None = None
    engine: dict[str, Any] = Field(default_factory=dict)   # vLLM engine arguments
    options: dict[str, Any] = Field(default_factory=dict)  # backend-specific extras
    endpoints: tuple[Endpoint, ...] = ()   # several replicas of one model (openai/litellm)
    routing: ReplicaRouting = ReplicaRouting()

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        # the recipe check ran already; this one covers specs built in code
        value = read_key(self.api_key_env, self.base_url)
        if not value:
            raise MissingApiKey(f"environment variable {self.api_key_env} is not set")
        return value
