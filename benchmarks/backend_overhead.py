"""What the runtime and VLLMBackend add on top of a bare AsyncLLM (issue: vLLM backend).

64 chat requests (n=1, max_tokens 64, temperature 0) sent (a) straight to the engine and
(b) as a 64-node graph through the runtime and VLLMBackend, on the SAME engine; the prefix
cache is reset before each arm; arms interleaved a, b three times; median ratio of walls.

    python benchmarks/backend_overhead.py --quick
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from benchmarks._common import machine, print_table, write_result  # noqa: E402

QUESTIONS = [f"Write one sentence about the number {i}." for i in range(64)]


async def direct_arm(backend, prompts: list[list[int]], max_tokens: int) -> tuple[float, int]:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = await backend.engine()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0,
                            output_kind=RequestOutputKind.FINAL_ONLY)

    async def one(ids: list[int]) -> int:
        final = None
        async for out in engine.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
            final = out
        return len(final.outputs[0].token_ids)

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(ids) for ids in prompts)))
    return time.perf_counter() - t0, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    from reasonloom.backends.vllm.backend import VLLMBackend
    from reasonloom.backends.vllm.embedded import ensure_embedded_model
    from reasonloom.orchestrator.types import Message

    backend = VLLMBackend(str(ensure_embedded_model()), {"max_model_len": 2048})

    prompts = [backend.render((Message(role="user", content=q),)) for q in QUESTIONS]

    async def bench() -> dict:
        await backend.engine()
        direct, through, dir_tok, thr_tok = [], [], 0, 0
        await direct_arm(backend, prompts[:4], 8)   # warm-up
        for _ in range(3):
            await (await backend.engine()).reset_prefix_cache()
            wall, dir_tok = await direct_arm(backend, prompts, args.max_tokens)
            direct.append(wall)
            await (await backend.engine()).reset_prefix_cache()
            wall, thr_tok = await runtime_arm_questions(backend, args.max_tokens)
            through.append(wall)
        return {"direct": direct, "through": through, "dir_tok": dir_tok, "thr_tok": thr_tok}

    res = asyncio.run(bench())
    ratios = [b / a for a, b in zip(res["direct"], res["through"])]
    ratio = statistics.median(ratios)
    tps_direct = res["dir_tok"] / statistics.median(res["direct"])
    tps_rl = res["thr_tok"] / statistics.median(res["through"])
    print_table([("direct AsyncLLM", f"{statistics.median(res['direct']):.2f}", f"{tps_direct:.1f}"),
                 ("runtime + VLLMBackend", f"{statistics.median(res['through']):.2f}",
                  f"{tps_rl:.1f}")], ("arm", "median wall s", "tokens/s"))
    print(f"ratio_wall (b/a), median of {len(ratios)} interleaved pairs: {ratio:.3f}")
    path = write_result("backend_overhead", {
        "ratio_wall": round(ratio, 4), "ratios": [round(r, 4) for r in ratios],
        "tokens_per_s_direct": round(tps_direct, 2), "tokens_per_s_reasonloom": round(tps_rl, 2),
        "completion_tokens_direct": res["dir_tok"], "completion_tokens_reasonloom": res["thr_tok"],
        "requests": len(QUESTIONS), "max_tokens": args.max_tokens, "machine": machine(),
        "target": {"ratio_wall": "<= 1.03"}})
    print(f"wrote {path}")


async def runtime_arm_questions(backend, max_tokens: int) -> tuple[float, int]:
    """64 one-call nodes, node qI sending question I with the direct arm's exact settings."""
    from reasonloom.backends.base import GenerateRequest
    from reasonloom.orchestrator.graph import Graph
    from reasonloom.orchestrator.registry import register_node
    from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
    from reasonloom.orchestrator.scheduler import run
    from reasonloom.orchestrator.types import (Candidate, Candidates, FrozenModel, Message,
                                               Problem)

    class AskConfig(FrozenModel):
        question: str
        max_tokens: int

    @register_node("bench_ask", AskConfig, inputs={"problem": "problem"},
                   outputs={"candidates": "candidates"})
    async def ask(inputs, cfg, ctx):
        req = GenerateRequest(messages=(Message(role="user", content=cfg.question),),
                              temperature=0.0, max_tokens=cfg.max_tokens, seed=0)
        gen = await ctx.generate("strong", req, "ask")
        return {"candidates": Candidates([Candidate(text=gen.texts[0])])}

    graph = Graph()
    for i, question in enumerate(QUESTIONS):
        graph.add(f"q{i}", "bench_ask", {"question": question, "max_tokens": max_tokens})
    graph.add("all", "majority", {}, {"candidates": [f"q{i}.candidates" for i in range(64)]})
    roles = Roles({"strong": Role(RoleSpec(name="strong"), backend)})
    t0 = time.perf_counter()
    result = await run(graph, Problem(messages=(Message(role="user", content="x"),)), roles)
    return time.perf_counter() - t0, result.usage.total.completion_tokens


if __name__ == "__main__":
    main()
