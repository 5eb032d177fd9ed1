"""Squeeze Evolve's cost against single-model evolution, measured two ways.

1. Real engine: MAWPS single-op problems, roles "strong" and "cheap" both on the embedded
   SmolLM2-135M, priced 8:1; Squeeze Evolve vs single-model evolution with the strong role at
   the same N, k, T. Both arms share their initial population (same seed, same call keys), so
   the comparison isolates the recombination routing. Same model twice = no accuracy gap to
   expect: this half measures what routing and scoring cost.
2. Simulation at the paper's setting (N=16, k=4, T=10): the REAL `evolve` node (form_groups,
   route_by_percentile, confidence scoring, majority vote) on a simulated backend whose
   recombination quality depends on the role and on the group's correct fraction, and whose
   prompt log-probs give confidences with AUROC 0.70. Prints the cost-accuracy frontier.

    python benchmarks/evolve_cost.py --quick    # < 15 min on 2 CPU cores
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from statistics import NormalDist
from typing import AsyncIterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from reasonloom.backends.base import (Backend, Capabilities, Delta, Generation,  # noqa: E402
                                      GenerateRequest, Sample, TokenLogprob)
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec  # noqa: E402
from reasonloom.orchestrator.scheduler import run  # noqa: E402
from reasonloom.orchestrator.types import Message, Problem  # noqa: E402
from reasonloom.verifiers.answers import answers_equal, extract_answer  # noqa: E402
from benchmarks._common import RESULTS, data_dir, machine, write_result  # noqa: E402

# $ per million tokens (input, output): the strong role costs 8x the cheap one on both.
PRICES = {"strong": (0.8, 3.2), "cheap": (0.1, 0.4)}
REAL = {"population": 8, "group_size": 2, "loops": 3, "cut_points": [10.0],
        "temperature": 0.7, "max_tokens": 80}
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
    "recombination_model": (
        "with probability p_role (the role's own accuracy on the problem) a recombination is "
        "sound: it returns the correct answer if any member holds it, else re-derives it with "
        "probability 0.5 (else copies a member's answer); otherwise it is swayed: it copies a "
        "random member's answer, or with probability h writes a fresh wrong answer"),
    "hallucination_h": 0.1,
    "swayed": "random_member",
    "sensitivity": [{"h": 0.0, "swayed": "random_member"}, {"h": 0.2, "swayed": "random_member"},
                    {"h": 0.1, "swayed": "plurality"}],
    "why_h": "no measurement pins h: the primary run takes the middle of the bracket 0 .. 0.2",
    "why_plurality": "a swayed aggregator that follows the group's most common answer instead",
    "wrong_answers": "3 distractors drawn with weights 0.5/0.3/0.2 (wrong answers collide)",
    "lengths": "each solution 300-700 simulated tokens; prompts count their candidates' tokens",
    "confidence": "candidate confidence = 5 + N(0,1) + 0.742 * correct (AUROC = Phi(0.742/sqrt 2) = 0.70)",
}
SHIFT = 2 ** 0.5 * NormalDist().inv_cdf(0.70)   # the correct-vs-wrong gap giving AUROC 0.70


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


# -- real engine -------------------------------------------------------------------------------
def load_mawps(count: int) -> list[Problem]:
    path = data_dir() / "mawps_singleop.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Problem.from_text(r["question"], id=r["id"], gold=str(r["answer"]))
            for r in rows[:count]]


async def real_engine(count: int) -> dict:
    from reasonloom.backends.factory import BackendSpec, build_backend
    from reasonloom.backends.vllm.engine import shutdown_engines

    # eager: skips the CPU engine's torch.compile warm-up (minutes on a busy 2-core machine).
    # No chunked prefill: vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset")
    # when a SEEDED request's prefill is split across steps, which 48 concurrent
    # recombination prompts (> 2048 batched tokens) trigger.
    backend = build_backend(BackendSpec(backend="embedded", engine={
        "max_model_len": 4096, "enforce_eager": True, "enable_chunked_prefill": False}))
    await backend.engine()
    roles = priced_roles({"strong": backend, "cheap": backend})
    problems = load_mawps(count)
    arms = {"initial_only": {**REAL, "loops": 1, "roles": ["strong"]},   # loop 1 + vote, context
            "single_strong": {**REAL, "roles": ["strong"]},
            "squeeze": {**REAL, "roles": ["strong", "cheap"], "scorer": "cheap"}}
    try:
        # warm-up outside the timings: the first requests of a fresh engine are slow
        await run_arm(problems[:1], roles, {**REAL, "loops": 1, "population": 2}, True)
        out = {name: await run_arm(problems, roles, params, concurrent=True)
               for name, params in arms.items()}
    finally:
        shutdown_engines()
    return {"problems": count, "setting": REAL, "prices_per_m": PRICES, "arms": out}


# -- simulation --------------------------------------------------------------------------------
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


def _question_and_candidates(messages: Sequence[Message]) -> tuple[str, list[str]]:
    content = [m for m in messages if m.role == "user"][-1].content
    # each section is "i\n<candidate text>", up to the blank line before the next section or
    # the instruction (whose own "The answer is X" must not count as a member's answer)
    sections = [s.split("\n\n")[0] for s in content.split("### Solution ")[1:]]
    return content.split("\n\n")[0], sections


class SimBackend(Backend):
    """One simulated role (see SIM_SETTING["recombination_model"])."""

    name = "simulated"

    def __init__(self, world: SimWorld, role: str):
        self.world, self.role, self.model = world, role, f"sim-{role}"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(context_length=1_000_000)

    def _tokens(self, messages: Sequence[Message]) -> int:
        text = "".join(m.content for m in messages)
        return 60 + sum(int(n) for n in _LEN.findall(text))

    def _answer(self, question: str, sections: list[str], rng: random.Random) -> str:
        gold = self.world.gold[question]
        skill = self.world.accuracy[question][self.role]
        wrong = str(int(gold) + rng.choices((1, 2, 3), weights=(0.5, 0.3, 0.2))[0])
        if not sections:                      # loop 1: an independent attempt
            return gold if rng.random() < skill else wrong
        members = [extract_answer(s) or wrong for s in sections]
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
        question, sections = _question_and_candidates(req.messages)
        samples = []
        for i in range(req.n):
            rng = random.Random(f"{req.seed}/{i}/{self.role}")
            length = rng.randint(300, 700)
            text = (f"Attempt {rng.getrandbits(40):x}: (simulated {length} tokens of reasoning) "
                    f"The answer is {self._answer(question, sections, rng)}.")
            samples.append(Sample(text=text, completion_tokens=length, finish_reason="stop"))
        return Generation(samples=samples, prompt_tokens=self._tokens(req.messages),
                          model=self.model)

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Delta]:
        raise NotImplementedError("the simulation never streams")
        yield Delta()   # pragma: no cover

    async def prompt_logprobs(self, messages: Sequence[Message], text: str,
                              top_k: int = 0) -> list[TokenLogprob]:
        question, _ = _question_and_candidates(messages)
        correct = extract_answer(text) == self.world.gold[question]
        rng = random.Random(f"conf/{text}")
        confidence = 5.0 + rng.gauss(0, 1) + SHIFT * correct
        self.world.confidences.append((confidence, correct))
        scored = _Scored(TokenLogprob(token="t", logprob=-confidence, top=(-confidence,) * top_k)
                         for _ in range(4))
        length = int(_LEN.search(text).group(1)) if _LEN.search(text) else 1
        scored.prompt_tokens = self._tokens(messages) + length   # the prefill the scorer reads
        return scored


class _Scored(list):
    prompt_tokens: int = 0


def auroc(pairs: list[tuple[float, bool]]) -> float | None:
    pos = sorted(c for c, ok in pairs if ok)
    neg = sorted(c for c, ok in pairs if not ok)
    if not pos or not neg:
        return None
    import bisect

    wins = sum(bisect.bisect_left(neg, c) + 0.5 * (bisect.bisect_right(neg, c)
                                                   - bisect.bisect_left(neg, c)) for c in pos)
    return wins / (len(pos) * len(neg))


async def simulation(count: int, hallucination: float, swayed: str) -> dict:
    world = SimWorld(count, hallucination, swayed)
    roles = priced_roles({"strong": SimBackend(world, "strong"),
                          "cheap": SimBackend(world, "cheap")})
    base = {k: SIM_SETTING[k] for k in ("population", "group_size", "loops")}
    base.update(temperature=1.0, max_tokens=1024)
    arms = {"single_strong": {**base, "roles": ["strong"]},
            "single_cheap": {**base, "roles": ["cheap"]}}
    for p in SIM_SETTING["cut_points"]:
        arms[f"squeeze_p{p}"] = {**base, "roles": ["strong", "cheap"], "scorer": "cheap",
                                 "cut_points": [float(p)]}
    out = {name: await run_arm(world.problems, roles, params, concurrent=False)
           for name, params in arms.items()}
    strong = out["single_strong"]
    for arm in out.values():
        arm["cost_ratio"] = arm["dollars"] / strong["dollars"]
        # counterfactual: what the ratio would be if the confidence reads cost nothing
        arm["cost_ratio_without_scoring"] = (arm["dollars"] - arm["scoring_dollars"]) \
            / strong["dollars"]
        arm["acc_gap_points"] = 100 * (arm["accuracy"] - strong["accuracy"])
    equal = [(out[f"squeeze_p{p}"]["cost_ratio"], p) for p in SIM_SETTING["cut_points"]
             if out[f"squeeze_p{p}"]["acc_gap_points"] >= -1.0 - 1e-9]
    best = min(equal) if equal else None
    return {"problems": count, "hallucination_h": hallucination, "swayed": swayed, "arms": out, "measured_auroc": auroc(world.confidences),
            "cost_ratio_at_equal_acc": best[0] if best else None,
            "cut_point_at_equal_acc": best[1] if best else None}


# -- report ------------------------------------------------------------------------------------
def table(title: str, arms: dict[str, dict], ref: str) -> None:
    print(f"\n{title}")
    print(f"{'arm':<15}{'acc':>7}{'pop acc':>9}{'$ total':>11}{'x ref $':>9}{'$ scoring':>11}"
          f"{'tokens':>11}{'wall s':>8}  routing share")
    for name, a in arms.items():
        share = ", ".join(f"{k} {v:.0%}" for k, v in a["routing_share"].items())
        print(f"{name:<15}{a['accuracy']:>7.3f}{a['population_accuracy']:>9.3f}"
              f"{a['dollars']:>11.5f}{a['dollars'] / arms[ref]['dollars']:>9.3f}"
              f"{a['scoring_dollars']:>11.5f}"
              f"{a['tokens']:>11}{a['wall_s']:>8.1f}  {share}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 real problems, smaller simulation")
    parser.add_argument("--sim-only", action="store_true",
                        help="only the simulation (keeps the real half of an earlier result)")
    parser.add_argument("--real-only", action="store_true",
                        help="only the real engine (keeps the simulation of an earlier result)")
    args = parser.parse_args()
    n_real, n_sim = (6, 120) if args.quick else (20, 1000)
    previous = RESULTS / "evolve_cost.json"
    report: dict = json.loads(previous.read_text()) if previous.exists() else {}
    report["machine"] = machine()

    if not args.real_only:
        t0 = time.perf_counter()
        sims: dict[str, dict] = {}
        runs = [("primary", SIM_SETTING["hallucination_h"], SIM_SETTING["swayed"], n_sim)] + [
            (f"h{v['h']}_{v['swayed']}", v["h"], v["swayed"], n_sim * 3 // 10)
            for v in SIM_SETTING["sensitivity"]]
        for label, h, swayed, count in runs:
            sim = sims[label] = asyncio.run(simulation(count, h, swayed))
            table(f"Simulation ({label}): {count} problems, N=16 k=4 T=10, 8:1 prices, scorer "
                  f"cheap (measured confidence AUROC {sim['measured_auroc']:.3f})",
                  sim["arms"], "single_strong")
            cut = sim["cut_point_at_equal_acc"]
            print("no cut point reaches single-strong accuracy within 1 point" if cut is None
                  else f"cheapest Squeeze within 1 point of single-strong: cut point {cut} at "
                       f"{sim['cost_ratio_at_equal_acc']:.3f}x its cost")
        primary = sims.pop("primary")
        ratio = primary["cost_ratio_at_equal_acc"]
        report.update(quick_sim=args.quick, sim_setting=SIM_SETTING, simulation=primary,
                      simulation_sensitivity=sims, cost_ratio_sim_at_equal_acc=ratio,
                      sim_target_met=ratio is not None and ratio <= 1 / 3,
                      sim_wall_s=time.perf_counter() - t0)

    if not args.sim_only:
        t0 = time.perf_counter()
        real = asyncio.run(real_engine(n_real))
        arms = real["arms"]
        table(f"Real engine (embedded SmolLM2-135M as both roles): {n_real} MAWPS single-op "
              f"problems, N=8 k=2 T=3, cut point 10, $/M in/out {PRICES}", arms, "single_strong")
        report.update(quick_real=args.quick, real=real,
                      cost_ratio_real=arms["squeeze"]["dollars"] / arms["single_strong"]["dollars"],
                      acc_squeeze_real=arms["squeeze"]["accuracy"],
                      acc_single_strong_real=arms["single_strong"]["accuracy"],
                      routing_real=arms["squeeze"]["routing"],
                      real_wall_s=time.perf_counter() - t0)
    print(f"\nwrote {write_result('evolve_cost', report).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
