"""DeepConf's confidence measures of a reasoning trace (arXiv 2508.15260, section 3), pure.

Token confidence C_i = -mean of the top-k log-probs at position i (high = the model was sure);
group confidence = the mean of C over a sliding window of `window` tokens; a trace's lowest
group confidence is the minimum over its windows (a trace shorter than the window is one group).
"""
from __future__ import annotations

import math
from typing import Hashable, Sequence

import numpy as np


def group_confidences(confidences: Sequence[float], window: int) -> np.ndarray:
    """Mean token confidence of every window of `window` consecutive tokens."""
    conf = np.asarray(confidences, dtype=float)
    if conf.size == 0:
        return np.zeros(1)
    if conf.size <= window:
        return np.array([conf.mean()])
    sums = np.convolve(conf, np.ones(window), mode="valid")
    return sums / window


def lowest_group_confidence(confidences: Sequence[float], window: int) -> float:
    return float(group_confidences(confidences, window).min())


def keep_threshold(scores: Sequence[float], keep_share: float) -> float:
    """The score above which the top `keep_share` of traces lie: DeepConf's online stop
    threshold s = Percentile_(100 - eta)(warm-up traces' lowest group confidence)."""
    return float(np.percentile(np.asarray(scores, dtype=float), 100.0 * (1.0 - keep_share)))


def most_confident(scores: Sequence[float], keep_share: float) -> list[int]:
    """Indices of the top ceil(keep_share * n) traces by score, in their original order."""
    keep = max(1, math.ceil(keep_share * len(scores)))
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:keep]
    return sorted(order)


def weighted_vote(answers: Sequence[Hashable | None], weights: Sequence[float]
                  ) -> tuple[Hashable | None, float]:
    """Confidence-weighted majority: the answer with the largest summed weight and its share of
    all weight (DeepConf's consensus beta). Unanswered traces do not vote."""
    totals: dict[Hashable, float] = {}
    for answer, weight in zip(answers, weights):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + max(weight, 0.0)
    if not totals:
        return None, 0.0
    leader = max(totals, key=lambda a: totals[a])
    total = sum(totals.values())
    return leader, (totals[leader] / total if total > 0 else 1.0 / len(totals))


class WindowWatch:
    """The online stop rule: stop a trace once a full window's mean confidence falls below the
    threshold. Keeps a running window sum, so each new token costs O(1)."""

    def __init__(self, threshold: float, window: int):
        self.threshold, self.window = threshold, window
        self._seen = 0
        self._sum = 0.0

    def __call__(self, confidences: Sequence[float], _text: str) -> bool:
        for i in range(self._seen, len(confidences)):
            self._sum += confidences[i]
            if i >= self.window:
                self._sum -= confidences[i - self.window]
        self._seen = len(confidences)
        return self._seen >= self.window and self._sum / self.window < self.threshold
