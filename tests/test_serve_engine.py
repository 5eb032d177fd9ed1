"""`reasonloom serve` on the embedded vLLM engine: engine tokens stream as chunks, max_tokens
caps the answer, a client that hangs up aborts its engine request, and staircase MoA shows its
first token early. The server runs on the session loop (the engine's output handler lives
there), the clients too."""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.support.serving import free_port, stop_sse_watchers

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).parent / "support" / "recipes"


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("engine_recipes")
    shutil.copy(SUPPORT / "engine_generate.yaml", folder)
    # engine_generate.yaml's engine arguments are the session engine's (tests/conftest.py)
    session_engine = yaml.safe_load((SUPPORT / "engine_generate.yaml").read_text())[
        "models"]["strong"]["engine"]
    moa = ROOT / "recipes" / "moa_staircase.yaml"
    if moa.exists():   # served as shipped, but on the session's engine (float32, eager)
        spec = yaml.safe_load(moa.read_text())
        for role in spec["models"].values():
            role["engine"] = dict(session_engine)
        (folder / "moa_staircase.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


@contextlib.asynccontextmanager
async def serving(recipes: Path):
    import uvicorn

    from reasonloom.serve.app import create_app
    from reasonloom.serve.catalog import Catalog

    app = create_app(Catalog.from_dir(recipes), max_running=8)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app.app.state
    finally:
        server.should_exit = True
        await task
        await stop_sse_watchers()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_generate_recipe_streams_engine_tokens_and_max_tokens_caps_them(embedded, recipes, arun):
    async def main():
        async with serving(recipes) as (base, _):
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
            stream = await client.chat.completions.create(
                model="engine_generate", messages=ask("Name three colours."), stream=True,
                max_tokens=24, stream_options={"include_usage": True})
            chunks = [c async for c in stream]
            capped = await client.chat.completions.create(
                model="engine_generate", messages=ask("Tell me about the sea."), max_tokens=6)
            await client.close()
            return chunks, capped

    chunks, capped = arun(main())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert len(pieces) > 3
    usage = chunks[-1].usage
    by_node = chunks[-1].model_extra["x_reasonloom"]["by_node"]["answer"]
    assert 0 < usage.completion_tokens <= 24 and usage.completion_tokens == by_node[
        "completion_tokens"]
    assert 0 < capped.usage.completion_tokens <= 6
    assert capped.choices[0].message.content


def test_a_client_that_hangs_up_leaves_no_engine_request_running(embedded, recipes, arun):
    async def main():
        engine = await embedded.engine()
        async with serving(recipes) as (base, state):
            body = {"model": "engine_generate", "stream": True, "max_tokens": 1000,
                    "messages": ask("Write a very long story about a dragon and a knight.")}
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                    seen = 0
                    async for line in resp.aiter_lines():
                        seen += '"content":"' in line and '"content":""' not in line
                        if seen >= 2:
                            break
                    in_engine = engine.get_num_unfinished_requests()
            left = time.monotonic()
            while time.monotonic() - left < 2:
                if engine.get_num_unfinished_requests() == 0 and state.runs.running == 0:
                    break
                await asyncio.sleep(0.05)
            return in_engine, engine.get_num_unfinished_requests(), state.runs.running, \
                time.monotonic() - left

    in_engine, after, running, waited = arun(main())
    assert in_engine == 1                 # the request was decoding when the client left
    assert (after, running) == (0, 0)     # aborted, not left to write 1000 tokens
    assert waited < 2


@pytest.mark.slow
def test_moa_staircase_first_chunk_arrives_before_half_the_run(embedded, recipes, arun):
    if not (recipes / "moa_staircase.yaml").exists():
        pytest.skip("recipes/moa_staircase.yaml is not in this checkout")

    async def main():
        async with serving(recipes) as (base, _):
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
            t0 = time.monotonic()
            first, pieces = None, []
            stream = await client.chat.completions.create(
                model="moa_staircase", messages=ask("Give two tips for learning to cook."),
                stream=True, max_tokens=96)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first if first is not None else time.monotonic() - t0
                    pieces.append(chunk.choices[0].delta.content)
            total = time.monotonic() - t0
            await client.close()
            return first, total, pieces

    first, total, pieces = arun(main())
    print(f"moa_staircase: first content chunk {first:.2f}s of {total:.2f}s")
    assert len(pieces) > 3 and first is not None
    assert first < total / 2, (first, total)
