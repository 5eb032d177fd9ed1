"""The ground floor: value types that every layer may import (backends included), so that no
layer has to reach upward for them. Nothing here imports another reasonloom module."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class FrozenModel(BaseModel):
    """Immutable config/result base: hashable, typo-proof (unknown fields rejected)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(FrozenModel):
    role: Literal["system", "user", "assistant"]
    content: str
