"""The simulated half of benchmarks/evolve_cost.py, and the arm runner both halves share.

The REAL `evolve` node (form_groups, route_by_percentile, confidence scoring, majority vote)
runs through the real scheduler on a simulated backend: recombination quality depends on the
role and on the group's answers, prompt log-probs give confidences with AUROC 0.70, and token
counts follow the simulated lengths. SIM_SETTING states every modelling choice.

Speed: each (setting, arm) is an independent job (its world is rebuilt from the seed), so the
jobs run in worker processes, one per core; the backend remembers the answer it wrote into each
text instead of re-extracting it from every prompt it reads (same answers: the texts are ours).
"""
from __future__ import annotations

import asyncio
import bisect
import multiprocessing
import os
import random
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from statistics import NormalDist
from typing import AsyncIterator, Sequence

from reasonloom.backends.base import (Backend, Capabilities, Delta, Generation,
                                      GenerateRequest, Sample, TokenLogprob)
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Message, Problem
from reasonloom.verifiers.answers import answers_equal, extract_answer

# $ per million tokens (input, output): the strong role costs 8x the cheap one on both.
PRICES = {"strong": (0.8, 3.2), "cheap": (0.1, 0.4)}
SIM_SETTING = {
    "population": 16, "group_size": 4, "loops": 10, "price_ratio": "8:1",
    "prices_per_m": PRICES, "scorer": "cheap", "confidence_auroc": 0.70,
    "strong_accuracy": "Beta(1.275, 0.225) per problem (mean 0.85)",
    "cheap_accuracy": "Beta(0.92, 0.58) per problem (mean 0.61)",
    "why_these_betas": (
        "means = the AIME25 scores of Qwen3-30B-A3B Thinking-2507 / Instruct-2507 (85.0 / 61.3), "
        "the paper's Thinking+Instruct pair; concentration 1.5 (U-shaped: most problems are "
        "easy or hopeless for a model, as competition sets are); the two draws are coupled by "
        "rank (a problem hard for one role is hard for the other). A first try with "
        "Beta(4, 2) / Beta(2, 3) saturated single-strong at 100% and could not test +-1 point"),
    "cut_points": [0, 10, 20, 30, 50],
    "extra_cut_points": [5, 15, 40, 70],
    "why_extra_cut_points": (
        "extra frontier points, NOT used for cost_ratio_sim_at_equal_acc. With 16 groups a cut "
        "point p > 0 sends floor(15p/100)+1 groups per loop to the strong role: p5 = 1 group "
        "(the smallest non-zero share, the only one that can stay under 1/3 of the cost), "
        "p15 = 3, p40 = 7, p70 = 11"),
    "recombination_model": (
        "with probability p_role (the role's own accuracy on the problem) a recombination is "
        "sound: it returns the correct answer if any member holds it, else re-derives it with "
        "probability 0.5 (else copies a member's answer); otherwise it is swayed: it copies a "
        "random member's answer, or with probability h writes a fresh wrong answer"),
    "hallucination_h": 0.1,
    "swayed": "random_member",
    "sensitivity": [{"h": 0.0, "swayed": "random_member"}, {"h": 0.2, "swayed": "random_member"},
                    {"h": 0.1, "swayed": "plurality"}, {"h": 0.0, "swayed": "plurality"}],
    "why_h": "no measurement pins h: the primary run takes the middle of the bracket 0 .. 0.2",
    "why_plurality": "a swayed aggregator that follows the group's most common answer instead",
    "why_h0_plurality": (
        "the optimistic corner of the bracket: a swayed aggregator that never invents an answer "
        "and follows the group's majority. The paper's p=0 results (cheap recombination of a "
        "strong-written population matching single-model RSA on AIME25 and GPQA-D) say real "
        "cheap aggregators keep a consensus better than the primary model does"),
    "wrong_answers": "3 distractors drawn with weights 0.5/0.3/0.2 (wrong answers collide)",
    "lengths": "each solution 300-700 simulated tokens; prompts count their candidates' tokens",
    "confidence": ("candidate confidence = 5 + N(0,1) + 0.742 * correct "
                   "(AUROC = Phi(0.742/sqrt 2) = 0.70)"),
    "scoring_cost": (
        "every confidence read is a prefill of the candidate conditioned on the prompt that "
        "produced it (problem + its k parents), priced as the scorer's input tokens, no cache "
        "discount; cut points 0 and 100 fix the routing, so those arms score nothing"),
}
SHIFT = 2 ** 0.5 * NormalDist().inv_cdf(0.70)   # the correct-vs-wrong gap giving AUROC 0.70


# -- arms (shared with the real-engine half) -------------------------------------------------
def evolve_graph(params: dict) -> Graph:
    return Graph().add("evolve", "evolve", params).set_output("evolve")


def priced_roles(backends: dict[str, Backend]) -> Roles:
    return Roles({name: Role(RoleSpec(name=name, price_in_per_m=PRICES[name][0],
                                      price_out_per_m=PRICES[name][1]), backends[name])
                  for name in ("strong", "cheap")}, order=["strong", "cheap"])


async def run_arm(problems: list[Problem], roles: Roles, params: dict,
                  concurrent: bool) -> dict:
    """Every problem through one evolve configuration; totals and per-problem correctness."""
    graph = evolve_graph(params)
    scoring = {"dollars": 0.0, "tokens": 0}

    def count_scoring(event) -> None:   # the confidence reads: prefill-only calls, kind score
        if event.kind == "call_finished" and event.data.get("call_kind") == "score":
            scoring["dollars"] += event.data["cost_usd"]
            scoring["tokens"] += event.data["prompt_tokens"]

    t0 = time.perf_counter()
    if concurrent:
        results = await asyncio.gather(*(run(graph, p, roles, seed=i, subscribers=[count_scoring])
                                         for i, p in enumerate(problems)))
    else:
        results = [await run(graph, p, roles, seed=i, subscribers=[count_scoring])
                   for i, p in enumerate(problems)]
    wall = time.perf_counter() - t0
    correct = [answers_equal(r.answer.answer, p.gold) for r, p in zip(results, problems)]
    routing: dict[str, int] = {}
    for r in results:
        for role, count in r.answer.details["routing"].items():
            routing[role] = routing.get(role, 0) + count
    recombinations = sum(routing.values()) or 1
    population_acc = [sum(answers_equal(c.answer, p.gold) for c in r.answer.candidates)
                      / len(r.answer.candidates) for r, p in zip(results, problems)]
    return {
        "accuracy": sum(correct) / len(problems),
        "population_accuracy": sum(population_acc) / len(problems),
        "dollars": sum(r.usage.total.cost_usd for r in results),
        "tokens": sum(r.usage.total.total_tokens for r in results),
        "scoring_dollars": scoring["dollars"],
        "scoring_tokens": scoring["tokens"],
        "by_role_dollars": {role: sum(r.usage.by_model[role].cost_usd for r in results
                                      if role in r.usage.by_model) for role in PRICES},
        "wall_s": wall,
        "routing": routing,
        "routing_share": {k: v / recombinations for k, v in routing.items()},
    }


# -- the simulated world and backend ---------------------------------------------------------
_LEN = re.compile(r"\(simulated (\d+) tokens")


class SimWorld:
    """The simulated problems: each one's gold answer and each role's accuracy on it."""

    def __init__(self, count: int, hallucination: float, swayed: str = "random_member",
                 seed: int = 0):
        self.hallucination, self.swayed = hallucination, swayed
        rng = random.Random(seed)
        self.problems = [Problem.from_text(f"Simulated problem {i}: find the value.", id=i,
                                           gold=str(100 + i)) for i in range(count)]
        # comonotone coupling with the stated marginals: sort both draws, pair them by rank
        strong = sorted(rng.betavariate(1.275, 0.225) for _ in range(count))
        cheap = sorted(rng.betavariate(0.92, 0.58) for _ in range(count))
        order = list(range(count))
        rng.shuffle(order)
        self.accuracy = {self.problems[i].question: {"strong": strong[j], "cheap": cheap[j]}
                         for j, i in enumerate(order)}
        self.gold = {p.question: p.gold for p in self.problems}
        self.confidences: list[tuple[float, bool]] = []
        self.prompts = _Prompts()
        self.written: dict[str, str] = {}    # text -> the answer the backend wrote into it
        # (role, members holding the gold answer) -> [recombinations, correct outputs]
        self.outcomes: dict[tuple[str, int], list[int]] = {}

    def answer_of(self, text: str) -> str | None:
        """What extract_answer reads from a simulated text ("The answer is X."), remembered."""
        written = self.written.get(text)
        return written if written is not None else extract_answer(text)


def _question_and_candidates(messages: Sequence[Message]) -> tuple[str, list[str]]:
    content = [m for m in messages if m.role == "user"][-1].content
    # each section is "i\n<candidate text>", up to the blank line before the next section or
    # the instruction (whose own "The answer is X" must not count as a member's answer)
    sections = [s.split("\n\n")[0] for s in content.split("### Solution ")[1:]]
    return content.split("\n\n")[0], sections


class _Prompts:
    """Each prompt is read twice (its recombination, then the scorer's read of the child):
    parse it once. Bounded: a problem's prompts are read within its own run."""

    def __init__(self, limit: int = 4096):
        self.limit, self.seen = limit, {}

    def parse(self, messages: Sequence[Message]) -> tuple[str, list[str], int]:
        key = messages[-1].content
        hit = self.seen.get(key)
        if hit is None:
            if len(self.seen) >= self.limit:
                self.seen.clear()
            question, sections = _question_and_candidates(messages)
            tokens = 60 + sum(int(n) for n in _LEN.findall("".join(m.content for m in messages)))
            hit = self.seen[key] = (question, sections, tokens)
        return hit


class SimBackend(Backend):
    """One simulated role (see SIM_SETTING["recombination_model"])."""

    name = "simulated"
    _CAPS = Capabilities(context_length=1_000_000)

    def __init__(self, world: SimWorld, role: str):
        self.world, self.role, self.model = world, role, f"sim-{role}"

    @property
    def capabilities(self) -> Capabilities:
        return self._CAPS

    def _member_answer(self, section: str, wrong: str) -> str:
        text = section.partition("\n")[2]   # "i\n<text>": the text as the node sent it
        return self.world.written.get(text) or extract_answer(section) or wrong

    def _answer(self, question: str, sections: list[str], rng: random.Random) -> str:
        gold = self.world.gold[question]
        skill = self.world.accuracy[question][self.role]
        wrong = str(int(gold) + rng.choices((1, 2, 3), weights=(0.5, 0.3, 0.2))[0])
        if not sections:                      # loop 1: an independent attempt
            return gold if rng.random() < skill else wrong
        members = [self._member_answer(s, wrong) for s in sections]
        out = self._recombine(gold, skill, members, wrong, rng)
        tally = self.world.outcomes.setdefault((self.role, members.count(gold)), [0, 0])
        tally[0] += 1
        tally[1] += out == gold
        return out

    def _recombine(self, gold: str, skill: float, members: list[str], wrong: str,
                   rng: random.Random) -> str:
        if rng.random() < skill:              # sound recombination
            if gold in members or rng.random() < 0.5:
                return gold
            return rng.choice(members)
        if rng.random() < self.world.hallucination:
            return wrong
        if self.world.swayed == "plurality":
            top = max(members.count(a) for a in members)
            return rng.choice(sorted({a for a in members if members.count(a) == top}))
        return rng.choice(members)

    async def generate(self, req: GenerateRequest) -> Generation:
        question, sections, prompt_tokens = self.world.prompts.parse(req.messages)
        samples = []
        for i in range(req.n):
            rng = random.Random(f"{req.seed}/{i}/{self.role}")
            length = rng.randint(300, 700)
            tag = rng.getrandbits(40)   # drawn before the answer: the random stream's order
            answer = self._answer(question, sections, rng)
            text = (f"Attempt {tag:x}: (simulated {length} tokens of reasoning) "
                    f"The answer is {answer}.")
            self.world.written[text] = answer
            samples.append(Sample(text=text, completion_tokens=length, finish_reason="stop"))
        return Generation(samples=samples, prompt_tokens=prompt_tokens,
                          model=self.model)

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Delta]:
        raise NotImplementedError("the simulation never streams")
        yield Delta()   # pragma: no cover

    async def prompt_logprobs(self, messages: Sequence[Message], text: str,
                              top_k: int = 0) -> list[TokenLogprob]:
        question, _, prompt_tokens = self.world.prompts.parse(messages)
        correct = self.world.answer_of(text) == self.world.gold[question]
        rng = random.Random(f"conf/{text}")
        confidence = 5.0 + rng.gauss(0, 1) + SHIFT * correct
        self.world.confidences.append((confidence, correct))
        scored = _Scored(TokenLogprob(token="t", logprob=-confidence, top=(-confidence,) * top_k)
                         for _ in range(4))
        length = int(_LEN.search(text).group(1)) if _LEN.search(text) else 1
        scored.prompt_tokens = prompt_tokens + length   # the prefill the scorer reads
        return scored


class _Scored(list):
    prompt_tokens: int = 0


def auroc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    neg = sorted(neg)
    wins = sum(bisect.bisect_left(neg, c) + 0.5 * (bisect.bisect_right(neg, c)
                                                   - bisect.bisect_left(neg, c)) for c in pos)
    return wins / (len(pos) * len(neg))


# -- running the settings ----------------------------------------------------------------------
def sim_arms() -> dict[str, dict]:
    base = {k: SIM_SETTING[k] for k in ("population", "group_size", "loops")}
    base.update(temperature=1.0, max_tokens=1024)
    arms = {"single_strong": {**base, "roles": ["strong"]},
            "single_cheap": {**base, "roles": ["cheap"]}}
    for p in sorted(SIM_SETTING["cut_points"] + SIM_SETTING["extra_cut_points"]):
        arms[f"squeeze_p{p}"] = {**base, "roles": ["strong", "cheap"], "scorer": "cheap",
                                 "cut_points": [float(p)]}
    return arms


def _job(count: int, hallucination: float, swayed: str, params: dict) -> tuple:
    """One arm of one setting, in a worker process: its result, its confidence reads (correct
    / wrong) and its recombination outcomes."""
    world = SimWorld(count, hallucination, swayed)
    roles = priced_roles({"strong": SimBackend(world, "strong"),
                          "cheap": SimBackend(world, "cheap")})
    result = asyncio.run(run_arm(world.problems, roles, params, concurrent=False))
    pos = [c for c, ok in world.confidences if ok]
    neg = [c for c, ok in world.confidences if not ok]
    return result, pos, neg, world.outcomes


def simulate(settings: list[tuple[str, float, str, int]], workers: int | None = None
             ) -> dict[str, dict]:
    """Every arm of every (label, h, swayed, problems) setting, spread over worker processes."""
    arms = sim_arms()
    jobs = [(label, name, count, h, swayed) for label, h, swayed, count in settings
            for name in arms]
    # longest first (scoring arms cost about twice the others) so the cores finish together
    jobs.sort(key=lambda j: -j[2] * (2 if j[1].startswith("squeeze_p") and j[1] != "squeeze_p0"
                                    else 1))
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    t0, done = time.perf_counter(), {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_job, j[2], j[3], j[4], arms[j[1]]): j[:2] for j in jobs}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            print(f"  sim {len(done)}/{len(jobs)}: {'/'.join(futures[future])} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {}
    for label, h, swayed, count in settings:
        parts = {name: done[(label, name)] for name in arms}
        pos = [c for part in parts.values() for c in part[1]]
        neg = [c for part in parts.values() for c in part[2]]
        outcomes: dict[tuple[str, int], list[int]] = {}
        for part in parts.values():
            for key, (n, ok) in part[3].items():
                acc = outcomes.setdefault(key, [0, 0])
                acc[0] += n
                acc[1] += ok
        out[label] = summarize(count, h, swayed, {n: p[0] for n, p in parts.items()},
                               auroc(pos, neg), outcomes)
    return out


def summarize(count: int, h: float, swayed: str, arms: dict[str, dict], measured_auroc,
              outcomes: dict[tuple[str, int], list[int]]) -> dict:
    strong = arms["single_strong"]
    for arm in arms.values():
        arm["cost_ratio"] = arm["dollars"] / strong["dollars"]
        # counterfactual: what the ratio would be if the confidence reads cost nothing
        arm["cost_ratio_without_scoring"] = (arm["dollars"] - arm["scoring_dollars"]) \
            / strong["dollars"]
        arm["acc_gap_points"] = 100 * (arm["accuracy"] - strong["accuracy"])

    def best(cuts: list[int]) -> tuple[float, int] | None:
        equal = [(arms[f"squeeze_p{p}"]["cost_ratio"], p) for p in cuts
                 if arms[f"squeeze_p{p}"]["acc_gap_points"] >= -1.0 - 1e-9]
        return min(equal) if equal else None

    primary = best(SIM_SETTING["cut_points"])
    extra = best(SIM_SETTING["cut_points"] + SIM_SETTING["extra_cut_points"])
    return {"problems": count, "hallucination_h": h, "swayed": swayed, "arms": arms,
            "measured_auroc": measured_auroc,
            "cost_ratio_at_equal_acc": primary[0] if primary else None,
            "cut_point_at_equal_acc": primary[1] if primary else None,
            "cost_ratio_at_equal_acc_with_extra_cuts": extra[0] if extra else None,
            "cut_point_at_equal_acc_with_extra_cuts": extra[1] if extra else None,
            "recombination_outcomes": {
                f"{role}/{k}_of_{SIM_SETTING['group_size']}_correct":
                    {"recombinations": n, "p_correct_out": ok / n}
                for (role, k), (n, ok) in sorted(outcomes.items())}}
