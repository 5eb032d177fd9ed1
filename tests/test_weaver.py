"""Weaver: normalisation, binarisation, filtering, the EM label model, selection, the node."""
from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from reasonloom.backends.scripted import ScriptedBackend
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.verifiers.rules import answer_frequencies
from reasonloom.verifiers.weaver import (LabelModel, WeaverParams, fit_label_model, minmax,
                                         weaver_fit, weaver_select)

PLANTED = [(0.9, 0.2), (0.85, 0.25), (0.8, 0.15), (0.75, 0.3), (0.7, 0.2)]


def planted_votes(n: int, prior: float, rates, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < prior
    rates = np.array(rates)
    p = np.where(truth[:, None], rates[:, 0], rates[:, 1])
    return (rng.random(p.shape) < p).astype(float), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_recovers_planted_verifier_rates_without_labels(seed):
    votes, truth = planted_votes(2000, 0.4, PLANTED, seed)
    model = fit_label_model(votes)
    planted = np.array(PLANTED)
    assert np.abs(np.array(model.tpr) - planted[:, 0]).max() < 0.05
    assert np.abs(np.array(model.fpr) - planted[:, 1]).max() < 0.05
    assert abs(model.prior - truth.mean()) < 0.05


def test_em_recovers_the_selection_benchmarks_weaker_verifiers_on_average():
    rates = [(0.9, 0.3), (0.8, 0.2), (0.7, 0.4), (0.6, 0.5), (0.95, 0.6)]
    errors = []
    for seed in range(5):
        votes, _ = planted_votes(2000, 0.5, rates, seed)
        model = fit_label_model(votes)
        errors.append(np.abs(np.array([model.tpr, model.fpr]).T - np.array(rates)).mean())
    assert np.mean(errors) < 0.03


def test_em_keeps_yes_meaning_correct_when_verifiers_beat_chance():
    votes, truth = planted_votes(1000, 0.3, PLANTED, 5)
    post = fit_label_model(votes).posterior(votes)
    assert post[truth].mean() > 0.7 > 0.3 > post[~truth].mean()


def test_a_labelled_dev_set_anchors_the_rates():
    votes, truth = planted_votes(400, 0.5, [(0.9, 0.1), (0.6, 0.4), (0.55, 0.45)], 3)
    labels = truth.astype(float)
    model = fit_label_model(votes, labels=labels, smoothing=0.0)
    empirical_tpr = votes[truth].mean(axis=0)
    assert np.allclose(model.tpr, empirical_tpr)   # fully labelled = counting
    partial = np.full(len(truth), np.nan)
    partial[:40] = labels[:40]
    assert fit_label_model(votes, labels=partial).tpr[0] > 0.8


def test_missing_votes_are_ignored_not_counted_as_no():
    votes, _ = planted_votes(2000, 0.5, PLANTED, 4)
    holes = votes.copy()
    holes[::3, 0] = np.nan
    full, part = fit_label_model(votes), fit_label_model(holes)
    assert abs(full.tpr[0] - part.tpr[0]) < 0.03 and abs(full.fpr[0] - part.fpr[0]) < 0.03


def test_minmax_scales_per_column_or_per_group_and_keeps_nan():
    scores = np.array([1.0, 3.0, np.nan, 10.0, 20.0, 5.0])
    assert np.allclose(minmax(scores)[[0, 1, 3, 4]], [0.0, 2 / 19, 9 / 19, 1.0])
    grouped = minmax(scores, np.array([0, 0, 0, 1, 1, 1]))
    assert np.allclose(grouped[[0, 1, 3, 4, 5]], [0.0, 1.0, 1 / 3, 1.0, 0.0])
    assert math.isnan(grouped[2])
    assert np.allclose(minmax(np.array([2.0, 2.0])), [1.0, 1.0])


def test_frequency_counts_equal_answers_within_each_problem():
    freq = answer_frequencies(["1/2", "0.5", "3", "7", "7", None], [0, 0, 0, 1, 1, 1])
    assert np.allclose(freq, [2 / 3, 2 / 3, 1 / 3, 2 / 3, 2 / 3, 0.0])


def test_verifiers_voting_yes_too_rarely_or_too_often_are_dropped():
    rng = np.random.default_rng(0)
    n = 500
    scores = np.column_stack([rng.random(n), np.r_[np.ones(480), np.zeros(20)],
                              np.r_[np.ones(20), np.zeros(480)], rng.random(n)])
    fit = weaver_fit(scores, [0] * n, ["a", "always", "never", "b"], WeaverParams())
    assert fit.kept == ["a", "b"]
    assert fit.yes_rate["always"] == pytest.approx(0.96)


def test_when_every_verifier_is_dropped_the_mean_score_decides():
    scores = np.array([[1.0], [1.0], [1.0]])
    fit = weaver_fit(scores, [0, 0, 0], ["constant"], WeaverParams())
    assert fit.model is None and fit.posterior == [1.0, 1.0, 1.0]


def test_ties_go_to_the_answer_with_the_higher_mean_posterior():
    post = [0.9, 0.9, 0.8, 0.1]
    answers = ["5", "6", "6", "5"]
    assert weaver_select(post, [0, 0, 0, 0], answers) == {0: 1}


def test_a_prefitted_label_model_is_applied_as_given():
    model = LabelModel(names=("b", "a"), prior=0.5, tpr=(0.9, 0.6), fpr=(0.1, 0.4))
    scores = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    fit = weaver_fit(scores, [0, 0, 0], ["a", "b"], WeaverParams(), model=model)
    assert fit.kept == ["b", "a"]
    assert fit.posterior[0] > fit.posterior[1]   # "b" is the trusted verifier


def test_weaver_beats_majority_when_verifiers_carry_signal():
    rng = np.random.default_rng(1)
    problems, n = 300, 8
    correct = rng.random((problems, n)) < rng.beta(2, 2, problems)[:, None]
    answers = np.where(correct, "42", "13").reshape(-1).tolist()   # one shared distractor
    truth = correct.reshape(-1)
    rates = np.array(PLANTED)
    p = np.where(truth[:, None], rates[:, 0], rates[:, 1])
    votes = (rng.random(p.shape) < p).astype(float)
    index = np.repeat(np.arange(problems), n)
    scores = np.column_stack([votes * 0.5 + 0.5 * rng.random(votes.shape),
                              answer_frequencies(answers, index)])
    fit = weaver_fit(scores, index, [f"v{i}" for i in range(5)] + ["frequency"], WeaverParams())
    chosen = weaver_select(fit.posterior, index, answers)
    weaver_acc = np.mean([truth[chosen[q]] for q in range(problems)])
    majority_acc = np.mean(correct.sum(axis=1) > n / 2)
    assert weaver_acc > majority_acc + 0.05


def test_weaver_node_scores_candidates_with_its_verifiers():
    backend = ScriptedBackend(lambda req, i: f"The answer is {[4, 4, 4, 9, 4, 2][i]}.")
    roles = Roles({"strong": Role(RoleSpec(name="strong"), backend)})
    g = Graph()
    g.add("samples", "best_of_n", {"n": 6, "max_tokens": 16}, {"problem": "problem"})
    g.add("weaver", "weaver", {"top_k": 3},
          {"problem": "problem", "candidates": "samples.candidates"})
    g.set_output("weaver")
    result = asyncio.run(run(g, "What is 2 + 2?", roles))
    answer = result.answer
    assert set(answer.details["yes_rate"]) == {"judge", "frequency", "logprob"}
    top = result.outputs["weaver"]["candidates"]
    assert len(top) == 3 and all(0.0 <= c.score <= 1.0 for c in top)
    assert top[0].score >= top[1].score >= top[2].score
    assert set(top[0].details["verifier_scores"]) == {"judge", "frequency", "logprob"}
    # judge: 2 scoring calls per candidate; log-prob: 1; frequency: none
    assert result.usage.by_node["weaver"].calls == 6 * 3
