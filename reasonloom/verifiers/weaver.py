"""Weaver (arXiv 2506.18203): combine weak verifiers without labels.

Pipeline, per problem set (a benchmark's problems, or one node's candidates):
1. Scores: each verifier v gives every candidate i a number s_iv (NaN = no verdict). An
   answer-frequency verifier is added: the share of samples agreeing with i's answer.
2. Normalise: min-max per verifier over the whole problem set (answer frequency: within
   each problem, as the paper's majority-vote verifier), so thresholds mean the same thing
   for every verifier.
3. Binarise: vote x_iv = 1 if the normalised score >= the verifier's threshold (0.5 unless
   set), else 0; NaN stays missing.
4. Filter: drop verifiers that vote yes on < 10% or > 90% of candidates: a near-constant
   vote says little about any one candidate and makes the label model ill-conditioned.
5. Label model (latent-class, Dawid-Skene with two classes). Each candidate has an unseen
   label y_i in {0, 1} (correct?), with prior pi = P(y = 1). Given y, the votes are
   independent, and verifier v has a true-positive rate TPR_v = P(x_v = 1 | y = 1) and a
   false-positive rate FPR_v = P(x_v = 1 | y = 0). EM fits pi, TPR, FPR with NO labels:
     E-step: q_i = P(y_i = 1 | x_i) = sigmoid(logit pi + sum_v [x_iv log(TPR_v / FPR_v)
             + (1 - x_iv) log((1 - TPR_v) / (1 - FPR_v))]) over i's observed votes;
     M-step: pi = mean q; TPR_v = (sum_i q_i x_iv + a) / (sum_i q_i + a + b), and FPR_v
             alike with 1 - q_i; a = b = `smoothing` (a Beta prior, which keeps a tiny
             problem set - one node's 8 candidates - away from rates of exactly 0 or 1).
   Initialisation: q_i = the mean of i's votes (soft majority vote), which picks the
   solution where verifiers beat chance; if EM still ends with mean TPR < mean FPR the
   classes are swapped back. A small labelled dev set is optional: its q_i are clamped to
   the labels in every E-step (semi-supervised EM), which anchors the rates.
6. Score: P(correct) = q_i under the fitted model. Select the argmax per problem; binary
   votes make ties common, so ties go to the candidate whose answer has the higher mean
   P(correct) among the problem's candidates, then to the first.
If every verifier is dropped, the score falls back to the mean normalised score.

Example:
    >>> fit = weaver_fit(scores, problem_index, ["judge", "logprob", "frequency"], WeaverParams())
    >>> best = weaver_select(fit.posterior, problem_index, answers)
"""
from __future__ import annotations

import asyncio
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, Field

from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.types import Candidates, FrozenModel
from reasonloom.verifiers.answers import answer_of, canonical
from reasonloom.verifiers.base import selection_outputs
from reasonloom.verifiers.registry import VerifierParams, pointwise_verifier

_EPS = 1e-4   # rates are kept inside (eps, 1 - eps) so log-odds stay finite


class LabelModel(FrozenModel):
    """A fitted latent-class model: class prior and each verifier's TPR / FPR."""

    names: tuple[str, ...]
    prior: float
    tpr: tuple[float, ...]
    fpr: tuple[float, ...]
    iterations: int = 0

    def posterior(self, votes: np.ndarray) -> np.ndarray:
        """P(y = 1 | votes) for an (items x verifiers) array of 0/1 with NaN = missing."""
        return _posterior(votes, self.prior, np.array(self.tpr), np.array(self.fpr))


def _posterior(votes: np.ndarray, prior: float, tpr: np.ndarray, fpr: np.ndarray) -> np.ndarray:
    tpr, fpr = np.clip(tpr, _EPS, 1 - _EPS), np.clip(fpr, _EPS, 1 - _EPS)
    seen = ~np.isnan(votes)
    x = np.nan_to_num(votes)
    yes, no = np.log(tpr / fpr), np.log((1 - tpr) / (1 - fpr))
    prior = min(max(prior, _EPS), 1 - _EPS)
    logit = np.log(prior / (1 - prior)) + (seen * (x * yes + (1 - x) * no)).sum(axis=1)
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))


def fit_label_model(votes: np.ndarray, names: Sequence[str] | None = None,
                    labels: np.ndarray | None = None, smoothing: float = 1.0,
                    max_iter: int = 500, tol: float = 1e-7) -> LabelModel:
    """EM for the two-class Dawid-Skene model (see the module docstring).

    votes: (items x verifiers), entries 0/1 or NaN (missing). labels: optional (items,),
    1/0 for a labelled dev item, NaN for unlabelled ones.
    """
    votes = np.asarray(votes, dtype=float)
    n, m = votes.shape
    names = tuple(names) if names is not None else tuple(f"v{j}" for j in range(m))
    seen = ~np.isnan(votes)
    x = np.nan_to_num(votes)
    known = np.zeros(n, bool) if labels is None else ~np.isnan(np.asarray(labels, float))
    truth = np.nan_to_num(np.asarray(labels, float)) if labels is not None else np.zeros(n)
    counts = seen.sum(axis=1)
    q = np.where(counts > 0, (x * seen).sum(axis=1) / np.maximum(counts, 1), 0.5)
    q = np.where(known, truth, q)
    prior, tpr, fpr = 0.5, np.full(m, 0.5), np.full(m, 0.5)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        pos, neg = q[:, None] * seen, (1 - q)[:, None] * seen
        tpr = ((pos * x).sum(axis=0) + smoothing) / (pos.sum(axis=0) + 2 * smoothing)
        fpr = ((neg * x).sum(axis=0) + smoothing) / (neg.sum(axis=0) + 2 * smoothing)
        prior = float(np.clip(q.mean(), _EPS, 1 - _EPS))
        new_q = np.where(known, truth, _posterior(votes, prior, tpr, fpr))
        delta = float(np.abs(new_q - q).max()) if n else 0.0
        q = new_q
        if delta < tol:
            break
    if tpr.mean() < fpr.mean() and not known.any():
        prior, tpr, fpr = 1 - prior, fpr, tpr   # label switching: "yes" must mean correct
    return LabelModel(names=names, prior=prior, tpr=tuple(map(float, tpr)),
                      fpr=tuple(map(float, fpr)), iterations=iterations)


def minmax(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Min-max scale one score column to [0, 1] over all rows, or within each group; NaN
    stays NaN; a constant group maps to 1 (the paper's convention for all-equal votes)."""
    scores = np.asarray(scores, float)
    out = np.full_like(scores, np.nan)
    keys = np.zeros(len(scores), int) if groups is None else np.asarray(groups)
    for key in np.unique(keys):
        rows = keys == key
        col = scores[rows]
        if np.isnan(col).all():
            continue
        lo, hi = np.nanmin(col), np.nanmax(col)
        out[rows] = (col - lo) / (hi - lo) if hi > lo else np.where(np.isnan(col), np.nan, 1.0)
    return out


class WeaverParams(FrozenModel):
    """Weaver's knobs; defaults follow the paper's generic config."""

    threshold: float = Field(0.5, ge=0, le=1)            # on the normalised score
    thresholds: dict[str, float] = Field(default_factory=dict)   # per-verifier overrides
    min_yes_rate: float = Field(0.1, ge=0, le=1)
    max_yes_rate: float = Field(0.9, ge=0, le=1)
    per_problem: tuple[str, ...] = ("frequency",)       # normalised within each problem
    smoothing: float = Field(1.0, ge=0)                  # Beta(a, a) prior on TPR / FPR


class WeaverFit(BaseModel):
    names: list[str]
    kept: list[str]
    yes_rate: dict[str, float]
    model: LabelModel | None      # None: every verifier was dropped (mean-score fallback)
    posterior: list[float]


def binarise(normalised: np.ndarray, names: Sequence[str], params: WeaverParams) -> np.ndarray:
    cuts = np.array([params.thresholds.get(name, params.threshold) for name in names])
    return np.where(np.isnan(normalised), np.nan, (normalised >= cuts).astype(float))


def weaver_fit(scores: np.ndarray, problem_index: Sequence[int], names: Sequence[str],
               params: WeaverParams = WeaverParams(), labels: np.ndarray | None = None,
               model: LabelModel | None = None) -> WeaverFit:
    """Steps 2-6 on an (items x verifiers) score array; `model` skips fitting (pre-fitted)."""
    scores = np.asarray(scores, float)
    index = np.asarray(problem_index)
    normalised = np.column_stack([
        minmax(scores[:, j], index if name in params.per_problem else None)
        for j, name in enumerate(names)]) if len(names) else np.zeros((len(scores), 0))
    votes = binarise(normalised, names, params)
    yes_rate = {name: float(np.nanmean(votes[:, j])) if (~np.isnan(votes[:, j])).any() else 0.0
                for j, name in enumerate(names)}
    keep = [j for j, name in enumerate(names)
            if params.min_yes_rate <= yes_rate[name] <= params.max_yes_rate]
    if model is not None:
        keep = [j for j, name in enumerate(names) if name in model.names]
    if not keep:
        fallback = np.nan_to_num(np.nanmean(normalised, axis=1)) if len(names) else \
            np.zeros(len(scores))
        return WeaverFit(names=list(names), kept=[], yes_rate=yes_rate, model=None,
                         posterior=list(map(float, fallback)))
    kept = [names[j] for j in keep]
    if model is None:
        model = fit_label_model(votes[:, keep], kept, labels, smoothing=params.smoothing)
    else:
        order = [kept.index(name) for name in model.names]
        keep, kept = [keep[i] for i in order], list(model.names)
    return WeaverFit(names=list(names), kept=kept, yes_rate=yes_rate, model=model,
                     posterior=list(map(float, model.posterior(votes[:, keep]))))


def weaver_select(posterior: Sequence[float], problem_index: Sequence[int],
                  answers: Sequence[str | None]) -> dict[int, int]:
    """Problem -> chosen item: argmax P(correct); ties by the mean P(correct) of the
    candidate's answer within its problem, then the first item."""
    post = np.asarray(posterior, float)
    index = np.asarray(problem_index)
    chosen = {}
    for p in dict.fromkeys(index.tolist()):
        rows = np.flatnonzero(index == p).tolist()
        keys = [canonical(answers[i]) if answers[i] is not None else f"#none{i}" for i in rows]
        group = {k: float(np.mean([post[r] for r, kk in zip(rows, keys) if kk == k]))
                 for k in set(keys)}
        best = max(range(len(rows)),
                   key=lambda t: (round(post[rows[t]], 9), group[keys[t]], -t))
        chosen[p] = rows[best]
    return chosen


VerifierName = Literal["judge", "frequency", "logprob"]   # no `reference`: Weaver has no gold


class WeaverConfig(VerifierParams):
    """Weaver (arXiv 2506.18203) as a selecting node over one problem's candidates.

    With no `label_model` the latent-class model is fitted by EM on these candidates alone
    (smoothed); pass one fitted on a problem set (or a labelled dev set) for a stronger fit.
    """

    verifiers: tuple[VerifierName, ...] = ("judge", "frequency", "logprob")
    params: WeaverParams = WeaverParams()
    label_model: LabelModel | None = None
    top_k: int | None = Field(None, ge=1)


@register_node("weaver", WeaverConfig, inputs={"problem": "problem", "candidates": "candidates"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def weaver(inputs: dict, cfg: WeaverConfig, ctx: RunContext) -> dict:
    candidates = Candidates(inputs["candidates"])
    candidates = Candidates(c if c.answer is not None else
                            c.model_copy(update={"answer": answer_of(c)})
                            for c in candidates)
    verifiers = [pointwise_verifier(name, cfg) for name in dict.fromkeys(cfg.verifiers)]
    columns = await asyncio.gather(*(v.score(inputs["problem"], candidates, ctx, "weaver")
                                     for v in verifiers))
    names = [v.name for v in verifiers]
    scores = np.column_stack(columns) if columns else np.zeros((len(candidates), 0))
    index = [0] * len(candidates)
    fit = weaver_fit(scores, index, names, cfg.params, model=cfg.label_model)
    best = weaver_select(fit.posterior, index, candidates.answers())[0]
    candidates = Candidates(c.model_copy(update={"details": {
        **c.details, "verifier_scores": dict(zip(names, map(float, scores[i])))}})
        for i, c in enumerate(candidates))
    details = {"kept": fit.kept, "yes_rate": fit.yes_rate,
               "label_model": fit.model.model_dump() if fit.model else None}
    return selection_outputs(candidates, fit.posterior, cfg.top_k, details, best=best)
