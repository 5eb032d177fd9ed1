"""The evolve_cost simulation (benchmarks/evolve_sim.py): its shortcuts keep its semantics, and
its cost accounting adds up (scripted-speed, no engine)."""
from __future__ import annotations

import asyncio
import random

from benchmarks.evolve_sim import (PRICES, SimBackend, SimWorld, _job, priced_roles, sim_arms,
                                   simulate)
from reasonloom.backends.base import GenerateRequest
from reasonloom.orchestrator.types import Message
from reasonloom.prompts import problem_messages, with_candidates
from reasonloom.verifiers.answers import extract_answer


def test_remembered_answers_are_what_extraction_reads_from_the_simulated_texts():
    world = SimWorld(3, hallucination=0.1)
    backend = SimBackend(world, "cheap")
    problem = world.problems[1]
    first = asyncio.run(backend.generate(GenerateRequest(
        messages=problem_messages(problem), n=8, seed=5, max_tokens=10)))
    texts = first.texts
    prompt = with_candidates(problem, texts[:4], "Write one improved solution. "
                             "The answer is X.")
    child = asyncio.run(backend.generate(GenerateRequest(messages=prompt, seed=6,
                                                         max_tokens=10)))
    for text in texts + child.texts:
        assert world.written[text] == extract_answer(text)
    # a member read back from the prompt: the remembered answer, never the instruction's "X"
    section = prompt[-1].content.split("### Solution ")[2].split("\n\n")[0]
    assert backend._member_answer(section, "wrong") == extract_answer(texts[1])
    # the prompt counts its members' simulated lengths
    assert child.prompt_tokens == 60 + sum(s.completion_tokens for s in first.samples[:4])


def test_a_problem_reads_the_same_prompt_once_and_counts_its_tokens_alike():
    world = SimWorld(2, hallucination=0.1)
    roles = priced_roles({"strong": SimBackend(world, "strong"),
                          "cheap": SimBackend(world, "cheap")})
    assert roles["strong"].spec.price_in_per_m / roles["cheap"].spec.price_in_per_m == 8
    messages = (Message(role="user", content="Simulated problem 0: find the value."),)
    assert world.prompts.parse(messages) is world.prompts.parse(messages)


def test_scoring_is_the_only_cost_a_routed_cut_point_adds_beyond_its_recombinations():
    arms = sim_arms()
    fixed = _job(4, 0.1, "random_member", arms["squeeze_p0"])[0]
    routed = _job(4, 0.1, "random_member", arms["squeeze_p10"])[0]
    # cut point 0 fixes the routing: no confidence reads, and every recombination is cheap
    assert fixed["routing"].get("strong", 0) == 0
    assert routed["scoring_tokens"] > 100 * fixed["scoring_tokens"]
    # every score call is a prefill priced at the cheap role's input price, 0 completion
    assert abs(routed["scoring_dollars"]
               - routed["scoring_tokens"] * PRICES["cheap"][0] / 1e6) < 1e-9
    # 2 of 16 groups per loop go to the strong role
    assert routed["routing_share"]["strong"] == 2 / 16


def test_worker_processes_give_the_in_process_results():
    arms = sim_arms()
    out = simulate([("t", 0.1, "random_member", 3)], workers=2)["t"]["arms"]
    for name in ("single_strong", "squeeze_p10"):
        local = _job(3, 0.1, "random_member", arms[name])[0]
        for key in ("accuracy", "population_accuracy", "dollars", "tokens", "routing",
                    "scoring_tokens"):
            assert out[name][key] == local[key], (name, key)


def test_sound_recombination_returns_the_answer_a_member_holds():
    world = SimWorld(1, hallucination=0.0)
    backend = SimBackend(world, "strong")
    question = world.problems[0].question
    world.accuracy[question]["strong"] = 1.0      # always sound
    gold = world.gold[question]
    rng = random.Random(0)
    sections = [f"{i + 1}\nAttempt: (simulated 300 tokens) The answer is {a}."
                for i, a in enumerate(["7", gold, "9", "7"])]
    assert all(backend._answer(question, sections, rng) == gold for _ in range(50))
    assert world.outcomes[("strong", 1)] == [50, 50]
