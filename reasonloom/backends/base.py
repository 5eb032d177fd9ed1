"""The one Backend seam (DESIGN.md, "The seams"): everything above it is backend-agnostic."""
from __future__ import annotations

import abc
from contextvars import ContextVar
from typing import AsyncIterator, Sequence

from pydantic import BaseModel, Field

from reasonloom.types import FrozenModel, Message

# The key that every request of one unit of work shares (the problem id), set by the scheduler
# for each run. A backend with several replicas keeps requests of one key on one replica, so
# that replica's prefix cache serves the problem's repeated prompt (backends/replicas.py).
AFFINITY_KEY: ContextVar[str | None] = ContextVar("reasonloom_affinity_key", default=None)


class TokenLogprob(FrozenModel):
    """One token's log-prob and, when asked for, the top-k alternatives at its position."""

    token: str
    logprob: float
    top: tuple[float, ...] = ()   # the top-k log-probs at this position, best first


class GenerateRequest(FrozenModel):
    messages: tuple[Message, ...]
    n: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0, le=20)   # top-k per generated token
    # DeepConf's token confidence from the top-k log-probs of each generated token: returned
    # as Sample.confidences (one float a token), never as per-token log-prob objects.
    confidence_k: int | None = Field(None, ge=1, le=20)
    assistant_prefix: str | None = None                # continue a partially written answer

    def with_seed(self, seed: int) -> "GenerateRequest":
        """`model_copy(update={"seed": seed})` without pydantic's generic copy, which costs
        twice as much: the runtime seeds every unseeded call (benchmarks/overhead.py)."""
        copied = object.__new__(GenerateRequest)
        object.__setattr__(copied, "__dict__", {**self.__dict__, "seed": seed})
        object.__setattr__(copied, "__pydantic_fields_set__",
                           self.__pydantic_fields_set__ | {"seed"})
        object.__setattr__(copied, "__pydantic_extra__", self.__pydantic_extra__)
        object.__setattr__(copied, "__pydantic_private__", self.__pydantic_private__)
        return copied


class Sample(BaseModel):
    text: str
    completion_tokens: int
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    confidences: list[float] | None = None   # per token, when the request set confidence_k


class Generation(BaseModel):
    samples: list[Sample]
    prompt_tokens: int
    cached_prompt_tokens: int | None = None   # engine prefix-cache hits, where known
    served_by: str | None = None              # which server or replica answered
    model: str = ""

    @property
    def completion_tokens(self) -> int:
        return sum([s.completion_tokens for s in self.samples])

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]


class Delta(BaseModel):
    """A streamed piece: text of sample `index`; the last one carries `usage`."""

    index: int = 0
    text: str = ""
    tokens: int | None = None      # generated tokens this piece adds, where the backend knows
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    served_by: str | None = None   # on the last delta: which server or replica answered
    confidences: list[float] | None = None   # of the tokens this piece adds (confidence_k)


class Capabilities(FrozenModel):
    n: bool = True
    logprobs: bool = True
    prompt_logprobs: bool = True
    continue_final_message: bool = True
    context_length: int | None = None
    steering: bool = False
    tokenize: bool = True


class Backend(abc.ABC):
    """A model server or engine. A backend that cannot do something raises CapabilityMissing."""

    name: str = "backend"
    model: str = ""

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    async def generate(self, req: GenerateRequest) -> Generation: ...

    @abc.abstractmethod
    def stream(self, req: GenerateRequest) -> AsyncIterator[Delta]: ...

    @abc.abstractmethod
    async def prompt_logprobs(self, messages: Sequence[Message], text: str,
                              top_k: int = 0) -> list[TokenLogprob]: ...

    async def tokenize(self, text: str) -> list[int]:
        from reasonloom.backends.errors import CapabilityMissing

        raise CapabilityMissing(f"{self.name}: tokenize is not supported")

    async def detokenize(self, ids: Sequence[int]) -> str:
        """Token ids back to text (the inverse of `tokenize`), e.g. to cut a document by tokens."""
        from reasonloom.backends.errors import CapabilityMissing

        raise CapabilityMissing(f"{self.name}: detokenize is not supported")

    def estimate_tokens(self, text: str) -> int:
        """Cheap upper-ish estimate used only for budget reservations before a call."""
        return len(text) // 3 + 1

    def config_hash(self) -> str:
        """Engine-configuration hash that enters cache keys (model id + engine args)."""
        return self.model

    async def aclose(self) -> None:
        return None


def confidence_of(top: Sequence[float]) -> float:
    """DeepConf's token confidence C = -mean(top-k log-probs), rounded: high = peaked."""
    return round(-sum(top) / len(top), 4) if top else 0.0


def logprob_k(req: GenerateRequest) -> int | None:
    """The top-k to ask the engine for: what log-probs and token confidence each need."""
    wanted = max(req.logprobs or 0, req.confidence_k or 0)
    return wanted if (req.logprobs is not None or req.confidence_k) else None
