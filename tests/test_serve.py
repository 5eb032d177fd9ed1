"""`reasonloom serve` against the official openai client (sync and async, streaming and not)
and litellm, on scripted-backend recipes: the wire format, usage = the run's ledger, typed
errors, admission control, disconnects."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest

from reasonloom.orchestrator.types import Message, Problem
from reasonloom.recipe import load_recipe
from tests.support.serving import ServeProcess, ThreadServer, write_scripted_recipes

KEY = "test-key-6b1d0f"


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    return write_scripted_recipes(tmp_path_factory.mktemp("recipes"))


@pytest.fixture(scope="module")
def server(recipes, tmp_path_factory):
    proc = ServeProcess(recipes, tmp_path_factory.mktemp("serve") / "serve.log", api_key=KEY)
    yield proc
    proc.stop()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def local_run(recipes: Path, name: str, messages: list[dict], seed: int = 0):
    """The same recipe run in this process: what the server's answer and usage must equal."""
    recipe = load_recipe(recipes / f"{name}.yaml")
    problem = Problem(messages=tuple(Message(**m) for m in messages))
    return asyncio.run(recipe.arun(problem, seed=seed))


def test_models_lists_every_recipe_by_file_name(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["broken", "echo", "slow", "vote"]


def test_completion_text_and_usage_equal_the_runs_ledger(client, recipes):
    for name in ("echo", "vote"):
        out = client.chat.completions.create(model=name, messages=ask("What is 2+3?"), seed=4)
        local = local_run(recipes, name, ask("What is 2+3?"), seed=4)
        assert out.choices[0].message.content == local.answer.text
        assert out.choices[0].finish_reason == "stop"
        total = local.usage.total
        assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (
            total.prompt_tokens, total.completion_tokens)
        assert out.usage.total_tokens == total.prompt_tokens + total.completion_tokens
        assert out.model_extra["x_reasonloom"]["cost_usd"] == pytest.approx(total.cost_usd)


def test_stream_deltas_join_to_the_final_text_with_usage_last(client):
    question = ask("Name a prime number.")
    whole = client.chat.completions.create(model="echo", messages=question, seed=1)
    stream = client.chat.completions.create(model="echo", messages=question, seed=1,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert len(pieces) > 5   # token by token, not one blob
    assert "".join(pieces) == whole.choices[0].message.content
    assert {c.id for c in chunks} == {chunks[0].id}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_deltas_arrive_while_the_run_is_still_writing(client):
    # slow: one character every 0.2 s; the first piece must come long before the last.
    stream = client.chat.completions.create(model="slow", messages=ask("hi"), stream=True)
    times = [time.monotonic() for c in stream if c.choices and c.choices[0].delta.content]
    assert len(times) > 10 and times[-1] - times[0] > 1.5


def test_async_clients_each_get_their_own_stream(server):
    async def one(client, i: int) -> tuple[int, str]:
        stream = await client.chat.completions.create(
            model="echo", messages=ask(f"client {i} asks"), stream=True)
        return i, "".join([c.choices[0].delta.content or "" async for c in stream
                           if c.choices])

    async def main():
        client = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0)
        async with client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    for i, text in asyncio.run(main()):
        assert text.startswith(f"You said: client {i} asks The answer is")


def test_selecting_recipe_sends_its_choice_in_one_marked_chunk(client):
    chunks = list(client.chat.completions.create(model="vote", messages=ask("2+2?"), seed=3,
                                                 stream=True))
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 1
    assert content[0].model_extra["x_reasonloom"] == {"final_stage": "selection"}
    whole = client.chat.completions.create(model="vote", messages=ask("2+2?"), seed=3)
    assert content[0].choices[0].delta.content == whole.choices[0].message.content


def test_multi_turn_messages_reach_the_recipe_as_messages(client, recipes):
    turns = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "first question"},
             {"role": "assistant", "content": "first answer"},
             {"role": "user", "content": "second question"}]
    out = client.chat.completions.create(model="echo", messages=turns)
    # The echo responder repeats the LAST message only: a flattened prompt would repeat all.
    assert out.choices[0].message.content.startswith("You said: second question The answer")
    assert out.usage.prompt_tokens == local_run(recipes, "echo", turns).usage.total.prompt_tokens


def test_seed_is_the_runs_seed(client):
    answers = {s: client.chat.completions.create(model="vote", messages=ask("pick"), seed=s)
               .choices[0].message.content for s in range(6)}
    again = client.chat.completions.create(model="vote", messages=ask("pick"), seed=2)
    assert again.choices[0].message.content == answers[2]
    assert len(set(answers.values())) > 1


def test_max_tokens_reaches_the_final_stage_and_budget_extension_caps_the_run(client):
    # The budget reserves a call's max_tokens before sending it: with 200 tokens allowed, a
    # 1000-token cap on the answer cannot start, a 16-token cap can.
    budget = {"x_reasonloom_budget": {"tokens": 200}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="echo", messages=ask("q"), max_tokens=1000,
                                       extra_body=budget)
    assert err.value.code == "budget_exceeded"
    ok = client.chat.completions.create(model="echo", messages=ask("q"), max_tokens=16,
                                        extra_body=budget)
    assert ok.choices[0].message.content
    # a selecting output node passes the cap to the nodes that write its candidates
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="vote", messages=ask("q"), max_tokens=1000,
                                       extra_body=budget)


def test_parameters_a_recipe_cannot_honour_are_rejected_not_ignored(client):
    cases = [dict(model="vote", temperature=0.2),          # its output node only selects
             dict(model="echo", stop=["\n"]), dict(model="echo", n=2),
             dict(model="echo", logprobs=True), dict(model="echo", extra_body={"foo": 1}),
             dict(model="echo", extra_body={"x_reasonloom_budget": {"tokns": 5}})]
    for case in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(messages=ask("q"), **case)
        assert err.value.body["message"] and err.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="echo", messages=[{"role": "tool",
                                                                "content": "x"}])
    out = client.chat.completions.create(model="echo", messages=ask("q"), temperature=0.1,
                                         top_p=0.9, stop=None, presence_penalty=0)
    assert out.choices[0].message.content


def test_errors_come_back_as_the_clients_typed_exceptions(server, client):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base}/v1", api_key="wrong",
                      max_retries=0).models.list()
    no_key = httpx.get(f"{server.base}/v1/models")
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="missing", messages=ask("q"))
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="broken", messages=ask("q"))
    message = err.value.body["message"]
    assert "Traceback" not in message and len(message) < 200
    with pytest.raises(openai.APIError) as err:   # mid-stream failures: an error event
        list(client.chat.completions.create(model="broken", messages=ask("q"), stream=True))
    assert "failed" in str(err.value)
    big = httpx.post(f"{server.base}/v1/chat/completions", headers={"Authorization":
                     f"Bearer {KEY}"}, content=b"{" + b" " * (2 << 20) + b"}")
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    bad = httpx.post(f"{server.base}/v1/chat/completions", headers={"Authorization":
                     f"Bearer {KEY}"}, content=b"not json")
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param",
                                                                  "code"}


def test_logs_hold_no_traceback_and_no_key(server, client):
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken", messages=ask("q"))
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and KEY not in log
    assert "failed" in log   # the failure is logged, in one line


def test_progress_goes_out_as_sse_comments(server):
    lines = []
    with httpx.stream("POST", f"{server.base}/v1/chat/completions",
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "vote", "messages": ask("q"), "stream": True}) as resp:
        lines = list(resp.iter_lines())
    progress = [json.loads(line[1:]) for line in lines if line.startswith(": {")]
    kinds = [p["event"] for p in progress]
    assert "node_started" in kinds and "call_finished" in kinds
    assert {p["node"] for p in progress if p["event"] == "node_finished"} == {"samples", "vote"}
    assert progress[-1]["run_cost_usd"] > 0
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"


def test_litellm_as_a_client(server):
    import litellm

    args = dict(model="openai/echo", api_base=f"{server.base}/v1", api_key=KEY,
                messages=ask("from litellm"), num_retries=0)
    out = litellm.completion(**args)
    text = out.choices[0].message.content
    assert text.startswith("You said: from litellm")
    assert out.usage.total_tokens > 0
    pieces = [c.choices[0].delta.content or "" for c in litellm.completion(**args, stream=True)]
    assert len([p for p in pieces if p]) > 3 and "".join(pieces) == text
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(**{**args, "api_key": "wrong"})
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(**{**args, "model": "openai/missing"})
    with pytest.raises(litellm.BadRequestError):
        litellm.completion(**{**args, "model": "openai/vote"}, temperature=0.3)


# -- in-process server: look inside ------------------------------------------------------------
@pytest.fixture
def inner(recipes):
    from reasonloom.serve.app import create_app
    from reasonloom.serve.catalog import Catalog

    app = create_app(Catalog.from_dir(recipes), max_running=2)
    server = ThreadServer(app)
    yield server, app.app.state
    server.stop()


def test_a_full_server_answers_429_at_once(inner):
    server, state = inner
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0)
    streams = [client.chat.completions.create(model="slow", messages=ask(f"s{i}"),
                                              stream=True) for i in range(2)]
    for s in streams:
        next(iter(s))
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="echo", messages=ask("third"))
    assert time.monotonic() - t0 < 1
    for s in streams:
        s.close()
    deadline = time.monotonic() + 2
    while state.runs.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.chat.completions.create(model="echo", messages=ask("now")).choices


def _post_then_hang_up(port: int, body: dict, wait_for: bytes | None, wait_s: float,
                       before_leaving) -> None:
    """A raw HTTP client that sends a request, reads until `wait_for` (or waits), and leaves."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload),
                                                                             payload))
        seen = b""
        while wait_for is not None and wait_for not in seen:
            seen += sock.recv(4096)
        time.sleep(wait_s)
        before_leaving()


def test_a_client_that_hangs_up_cancels_its_run_and_model_calls(inner):
    server, state = inner
    backend = state.catalog.get("slow").roles["strong"].backend
    for streaming in (True, False):
        running_now: list[tuple[int, int]] = []
        body = {"model": "slow", "messages": ask("a long question " * 3), "stream": streaming}
        # streaming: leave after the first answer character; not streaming: after 0.5 s
        _post_then_hang_up(server.port, body, b'"content":"Y"' if streaming else None,
                           0.0 if streaming else 0.5, lambda: running_now.append(
                               (backend.in_flight, state.runs.running)))
        # the answer would take ~15 s; hanging up must stop it at once
        deadline = time.monotonic() + 2
        while (backend.in_flight or state.runs.running) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running_now == [(1, 1)]   # its model call was running when it left
        assert backend.in_flight == 0 and state.runs.running == 0, streaming


# -- request parameters -> recipe overrides (no server) -------------------------------------------
MOA = """
models:
  strong: {backend: scripted}
nodes:
  moa:
    type: moa
    params:
      layers: [[{role: strong, max_tokens: 32}, {role: strong, max_tokens: 32}]]
      aggregator: {role: strong, temperature: 0.3, max_tokens: 128}
output: moa
budget: {tokens: 5000, seconds: 60}
"""


def test_request_parameters_land_on_the_final_stage(recipes, tmp_path):
    from reasonloom.orchestrator.budget import BudgetSpec
    from reasonloom.serve.catalog import ServedRecipe
    from reasonloom.serve.protocol import ApiError, ChatRequest

    def served(path: Path) -> ServedRecipe:
        return ServedRecipe(path.stem, path, path.read_text(), load_recipe(path), roles=None)

    (tmp_path / "moa.yaml").write_text(MOA)
    moa = served(tmp_path / "moa.yaml")
    req = ChatRequest(model="moa", messages=ask("q"), max_tokens=7, temperature=0.2,
                      x_reasonloom_budget=BudgetSpec(tokens=99_999, dollars=0.5))
    variant = moa.for_request(req)
    config = variant.graph.nodes["moa"].config
    assert (config.aggregator.max_tokens, config.aggregator.temperature) == (7, 0.2)
    assert config.aggregator.role == "strong"                  # the rest of the stage is kept
    assert [p.max_tokens for p in config.layers[0]] == [32, 32]  # proposers are not the answer
    assert moa.recipe.graph.nodes["moa"].config.aggregator.max_tokens == 128   # base untouched
    # a request may tighten the recipe's budget, never loosen it
    assert moa.budget_for(req) == BudgetSpec(tokens=5000, dollars=0.5, seconds=60)
    vote = served(recipes / "vote.yaml")
    capped = vote.for_request(ChatRequest(model="vote", messages=ask("q"), max_tokens=5))
    assert capped.graph.nodes["samples"].config.max_tokens == 5
    with pytest.raises(ApiError) as err:
        vote.for_request(ChatRequest(model="vote", messages=ask("q"), top_p=0.5))
    assert err.value.status == 400 and err.value.param == "top_p"
