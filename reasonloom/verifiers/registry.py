"""Pointwise verifiers by name, built from one set of parameters (`VerifierParams`): every
selecting node that takes verifier names (pointwise_select, weaver) reads the same recipe
keys and builds the same verifier for the same name."""
from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field

from reasonloom.orchestrator.types import FrozenModel
from reasonloom.verifiers.base import PointwiseVerifier
from reasonloom.verifiers.judges import MeanLogprobVerifier, PointwiseJudge
from reasonloom.verifiers.rules import AnswerFrequencyVerifier, ReferenceVerifier

PointwiseName = Literal["judge", "logprob", "frequency", "reference"]


class VerifierParams(FrozenModel):
    """What the named verifiers need; a selecting node's config inherits these keys."""

    judge: str = "strongest"      # role of the pointwise judge
    scorer: str = "cheapest"      # role that reads the mean token log-prob (logprob)
    judge_mode: Literal["auto", "logprob", "rating"] = "auto"   # judge: P(yes) or a 1-10 rating
    judge_max_tokens: int = Field(512, ge=1)                     # judge, rating mode


POINTWISE: dict[str, Callable[[VerifierParams], PointwiseVerifier]] = {
    "judge": lambda p: PointwiseJudge(p.judge, mode=p.judge_mode, max_tokens=p.judge_max_tokens),
    "logprob": lambda p: MeanLogprobVerifier(p.scorer),
    "frequency": lambda p: AnswerFrequencyVerifier(),
    "reference": lambda p: ReferenceVerifier(),   # against Problem.gold
}


def pointwise_verifier(name: PointwiseName, params: VerifierParams) -> PointwiseVerifier:
    if name not in POINTWISE:
        raise ValueError(f"unknown verifier {name!r} (verifiers: {', '.join(POINTWISE)})")
    return POINTWISE[name](params)
