"""The chunked node on the real embedded engine: a generated needle that only the LAST chunk
holds is found by that chunk's worker and reaches the final answer, in both modes."""
from __future__ import annotations

import random

import pytest

from reasonloom.orchestrator.budget import BudgetSpec
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.result import RunFailed
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Problem

pytestmark = pytest.mark.engine

FILLER = ["The garden behind the library was quiet all afternoon.",
          "A delivery van stopped at the corner and left again.",
          "Two students argued about the best route to the station.",
          "The bakery sold out of bread before noon.",
          "Rain was expected later in the week.",
          "A cat slept on the warm stones near the fountain."]


def needle_problem(seed: int) -> tuple[Problem, str]:
    """Filler sentences, then the needle as the document's last sentence."""
    rng = random.Random(seed)
    code = str(rng.randint(1000, 9999))
    sentences = [rng.choice(FILLER) for _ in range(24)] + [f"The secret code is {code}."]
    return Problem.from_text("What is the secret code?", context=" ".join(sentences)), code


def reader(mode: str, **params) -> Graph:
    g = Graph()
    g.add("reader", "chunked", {"mode": mode, "chunk_tokens": 96, "overlap_tokens": 12,
                                "worker_max_tokens": 24, "manager_max_tokens": 24,
                                "worker_role": "cheap", "manager_role": "strong", **params},
          {"problem": "problem"})
    g.set_output("reader")
    return g


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_needle_in_the_last_chunk_is_found_by_its_worker_and_answered(mode, embedded,
                                                                      embedded_roles, arun):
    problem, code = needle_problem(seed=3)
    # The 135M model cannot follow Chain-of-Agents' "rewrite the notes" instruction (it writes
    # "The secret code is:" over and over): a user's own, simpler instruction, which the node
    # takes, keeps this a test of the plumbing: the last chunk's fact reaches the answer.
    params = ({"worker_instruction": "Copy the sentence of the notes or of this part that "
                                     "answers the question."} if mode == "sequential" else {})
    result = arun(run(reader(mode, **params), problem, embedded_roles, seed=0))
    details = result.answer.details
    spans = details["spans"]
    ids = embedded.tokenizer.encode(problem.context, add_special_tokens=False)
    assert details["exact_tokens"] and details["document_tokens"] == len(ids)
    assert details["workers"] >= 3 and spans[-1][1] == len(ids)
    chunks = [embedded.tokenizer.decode(ids[s:e]) for s, e in spans]
    assert code in chunks[-1] and not any(code in c for c in chunks[:-1])
    last = result.answer.candidates[-1]
    assert code in last.text and last.details["found"]
    assert code in result.answer.text
    usage = result.usage.by_model
    assert usage["cheap"].calls == details["workers"] and usage["strong"].calls == 1


def test_a_document_too_long_for_the_budget_fails_before_the_engine_is_called(embedded_roles,
                                                                              arun):
    problem, _ = needle_problem(seed=4)
    with pytest.raises(RunFailed) as info:
        arun(run(reader("parallel"), problem, embedded_roles, budget=BudgetSpec(tokens=300)))
    message = str(info.value)
    assert "\n" not in message and "token budget of 300" in message
    assert info.value.result.usage.total.calls == 0
