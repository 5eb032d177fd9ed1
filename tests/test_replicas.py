"""A role served by several replicas (backends/replicas.py): litellm's Router spreads the calls,
a problem's calls stay on one replica, a killed replica leaves the rotation and the run still
completes with every attempt in the ledger. The replicas are real HTTP servers: two
`reasonloom serve` processes on a scripted recipe (cheap, no engine)."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonloom.backends.replicas import ReplicaBackend, choose_replica, rendezvous_order
from reasonloom.orchestrator.types import Problem
from reasonloom.recipe import Recipe, RecipeError
from tests.support.serving import ServeProcess

# What each replica serves: a scripted answer streamed in 4-character chunks, 30 ms apart, so a
# call lasts ~0.3 s and some are in flight when a replica is killed.
SERVED = """
seed: 0
models:
  strong:
    backend: scripted
    options: {{responder: echo, chunk_chars: 4, chunk_delay_s: {delay}}}
nodes:
  answer:
    type: generate
    params: {{n: 1, stream_answer: true, max_tokens: 64}}
output: answer
"""
# The client: one role on both replicas; four samples per problem, one request each (the served
# recipe answers n=1), so every problem makes four calls.
CLIENT = """
seed: 0
models:
  strong:
    backend: openai
    model: replica
    endpoints: [{{base_url: "{a}/v1"}}, {{base_url: "{b}/v1"}}]
    routing: {{allowed_fails: 0, cooldown_s: 60, health_check_s: 0.5}}
    options: {{n: false, timeout_s: 20}}
    concurrency: 4      # calls queue, so the kill lands mid-run with calls in flight
    retry: {{max_attempts: 5, base_delay_s: 0.05, max_delay_s: 0.5}}
nodes:
  samples:
    type: best_of_n
    params: {{n: 4, max_tokens: 32, system: null}}
  vote:
    type: majority
    inputs: {{candidates: samples.candidates}}
output: vote
"""


def start_replicas(folder: Path) -> list[ServeProcess]:
    folder.mkdir()
    (folder / "replica.yaml").write_text(SERVED.format(delay=0.03))
    return [ServeProcess(folder, folder / f"replica{i}.log", max_running=64) for i in range(2)]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two replicas the tests share (no test kills these)."""
    servers = start_replicas(tmp_path_factory.mktemp("replicas") / "served")
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def doomed_replicas(tmp_path):
    """Two replicas of the test's own: it kills one."""
    servers = start_replicas(tmp_path / "served")
    yield servers
    for server in servers:
        server.stop()


def client_recipe(servers) -> Recipe:
    return Recipe.from_text(CLIENT.format(a=servers[0].base, b=servers[1].base), "client.yaml")


async def run_problems(recipe: Recipe, count: int, on_start=None):
    """Runs `count` problems concurrently; returns {problem id: [call records as events]}."""
    roles = recipe.build_roles()
    calls: dict[str, list[dict]] = defaultdict(list)

    async def one(i: int):
        pid = f"p{i}"
        problem = Problem.from_text(f"What is {i} + {i}?", id=pid)
        subscriber = (lambda e, pid=pid: calls[pid].append({**e.data, "t": time.monotonic()})
                      if e.kind == "call_finished" else None)
        return await recipe.arun(problem, roles=roles, subscribers=[subscriber])

    backend = roles.pick("strong").backend
    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    if on_start is not None:
        await on_start(calls, backend)
    results = await asyncio.gather(*tasks)
    await backend.aclose()
    return results, calls, backend


def test_calls_of_one_problem_stay_on_one_replica_while_it_is_healthy(replicas):
    results, calls, backend = asyncio.run(run_problems(client_recipe(replicas), 10))
    assert isinstance(backend, ReplicaBackend)
    assert all(r.status == "ok" and r.answer is not None for r in results)
    urls = {f"{s.base}/v1" for s in replicas}
    per_problem = {pid: {c["served_by"] for c in recs} for pid, recs in calls.items()}
    assert all(len(recs) == 4 and all(c["ok"] for c in recs) for recs in calls.values())
    assert all(len(served) == 1 and served <= urls for served in per_problem.values())
    # the affinity is the problem's rendezvous rank, so problems spread over both replicas
    assert set().union(*per_problem.values()) == urls
    expected = {pid: backend.by_id[rendezvous_order(pid, ["replica0", "replica1"])[0]].base_url
                for pid in calls}
    assert per_problem == {pid: {url} for pid, url in expected.items()}


def test_killed_replica_leaves_the_rotation_and_every_call_is_accounted(doomed_replicas):
    replicas = doomed_replicas
    victim = replicas[0]
    victim_url = f"{victim.base}/v1"
    killed_at: list[float] = []

    async def kill_mid_run(calls, backend):
        # some calls done, and some in flight on the victim (a deadline: never hang the suite)
        deadline = time.monotonic() + 60
        while ((sum(len(v) for v in calls.values()) < 8 or not backend.in_flight["replica0"])
               and time.monotonic() < deadline):
            await asyncio.sleep(0.005)
        os.killpg(victim.proc.pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    results, calls, backend = asyncio.run(run_problems(client_recipe(replicas), 16,
                                                       kill_mid_run))
    assert killed_at
    assert [r.status for r in results] == ["ok"] * 16
    records = [c for recs in calls.values() for c in recs]
    failed = [c for c in records if not c["ok"]]
    # every logical call (problem, sample) succeeded exactly once; the ledger counts every attempt
    ok_keys = Counter((pid, i) for pid, recs in calls.items()
                      for i, c in enumerate(recs) if c["ok"])
    assert sum(ok_keys.values()) == 16 * 4
    assert sum(r.usage.total.calls for r in results) == len(records)
    assert sum(r.usage.total.failed_calls for r in results) == len(failed)
    # the kill cost some attempts, all on the victim, and named it
    assert failed and {c["served_by"] for c in failed} == {victim_url}
    # out of rotation: nothing succeeded on the victim after it died, and the survivor took the
    # victim's problems
    assert not [c for c in records if c["ok"] and c["served_by"] == victim_url
                and c["t"] > killed_at[0] + 0.5]
    moved = {pid for pid, recs in calls.items() if any(not c["ok"] for c in recs)}
    for pid in moved:
        assert recs_after_failure_on(calls[pid], f"{replicas[1].base}/v1")
    # the health probe saw it die too (litellm's health-check routing reads the same state)
    assert backend._health["replica0"]["is_healthy"] is False
    assert backend._health["replica1"]["is_healthy"] is True


def recs_after_failure_on(recs: list[dict], survivor: str) -> bool:
    first_fail = next(i for i, c in enumerate(recs) if not c["ok"])
    return all(c["served_by"] == survivor for c in recs[first_fail + 1:] if c["ok"])


def test_streams_and_failed_attempts_name_the_replica_that_served_them(replicas):
    from reasonloom.backends.base import AFFINITY_KEY, GenerateRequest
    from reasonloom.backends.errors import Unreachable
    from reasonloom.backends.factory import build_backend
    from reasonloom.backends.spec import BackendSpec, Endpoint, ReplicaRouting
    from reasonloom.orchestrator.types import Message

    live, dead = f"{replicas[0].base}/v1", "http://127.0.0.1:9/v1"   # nothing listens on 9
    backend = build_backend(BackendSpec(
        backend="openai", model="replica", endpoints=(Endpoint(base_url=dead),
                                                      Endpoint(base_url=live)),
        routing=ReplicaRouting(allowed_fails=0, health_check_s=None)))
    key = next(k for k in map(str, range(100))   # a problem whose own replica is the dead one
               if rendezvous_order(k, ["replica0", "replica1"])[0] == "replica0")
    req = GenerateRequest(messages=(Message(role="user", content="hello"),), max_tokens=16)

    async def go():
        AFFINITY_KEY.set(key)
        with pytest.raises(Unreachable) as failed:
            await backend.generate(req)
        deltas = [d async for d in backend.stream(req)]   # the dead one is cooling down now
        await backend.aclose()
        return failed.value, deltas

    error, deltas = asyncio.run(go())
    assert dead in str(error) and error.served_by == dead
    assert "".join(d.text for d in deltas).startswith("You said: hello")
    assert deltas[-1].served_by == live and deltas[-1].completion_tokens > 0
    assert backend.in_flight == {"replica0": 0, "replica1": 0}


# -- the routing rule, without servers ------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=12), st.integers(2, 6), st.data())
def test_removing_a_replica_moves_only_the_keys_it_ranked_first(key, count, data):
    ids = [f"r{i}" for i in range(count)]
    gone = data.draw(st.sampled_from(ids))
    before = rendezvous_order(key, ids)
    after = rendezvous_order(key, [i for i in ids if i != gone])
    assert after == [i for i in before if i != gone]


def test_a_cooling_replica_sends_its_problems_to_the_least_busy_healthy_one():
    ids = ["r0", "r1", "r2"]
    key = next(k for k in map(str, range(100)) if rendezvous_order(k, ids)[0] == "r0")
    assert choose_replica(key, ids, set(), {"r0": 9}, {}) == "r0"   # busy, but its own
    assert choose_replica(key, ids, {"r0"}, {"r1": 3, "r2": 1}, {}) == "r2"
    assert choose_replica(key, ids, {"r0", "r1", "r2"}, {}, {}) is None
    # without a problem id: least busy, then fewest calls so far
    assert choose_replica(None, ids, set(), {"r0": 1, "r1": 0, "r2": 0}, {"r1": 5}) == "r2"


# -- the recipe schema: one line, pointing at the field --------------------------------------------
ROLE = """models:
  strong:
{role}
nodes:
  a: {{type: generate}}
"""


@pytest.mark.parametrize("role, where, says", [
    ("    backend: embedded\n    endpoints: [{base_url: 'http://h:1/v1'}]",
     "models.strong.endpoints", "backend: openai"),
    ("    backend: openai\n    model: m\n    base_url: http://h:1/v1\n"
     "    endpoints: [{base_url: 'http://h:2/v1'}]", "models.strong.endpoints", "not both"),
    ("    backend: openai\n    model: m\n    endpoints: [{base_url: 'http://h:1/v1'}, "
     "{base_url: 'http://h:1/v1/'}]", "models.strong.endpoints", "listed twice"),
    ("    backend: openai\n    model: m\n    endpoints: [{base_url: 'h:1/v1'}]",
     "models.strong.endpoints.0.base_url", "http://"),
    ("    backend: openai\n    model: m\n    endpoints: [{base_url: 'http://h:1/v1'}]\n"
     "    routing: {strategy: round-robin}", "models.strong.routing.strategy", "least-busy"),
    ("    backend: openai\n    model: m\n    base_url: http://h:1/v1\n"
     "    routing: {cooldown_s: 5}", "models.strong.routing", "endpoints"),
    ("    backend: openai\n    model: m\n    endpoints: [{base_url: 'http://h:1/v1', "
     "api_key_env: REASONLOOM_TEST_UNSET_API_KEY}]", "models.strong.endpoints.0.api_key_env",
     "not set"),
])
def test_endpoint_mistakes_are_one_line_errors_at_the_field(role, where, says):
    os.environ.pop("REASONLOOM_TEST_UNSET_API_KEY", None)
    with pytest.raises(RecipeError) as err:
        Recipe.from_text(ROLE.format(role=role), "r.yaml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("r.yaml:")
    assert f": {where}: " in message and says in message


def test_a_role_with_endpoints_builds_a_replica_backend_with_per_endpoint_model_names():
    recipe = Recipe.from_text(ROLE.format(role=(
        "    backend: openai\n    model: smol\n    endpoints:\n"
        "      - {base_url: 'http://10.0.0.1:8000/v1'}\n"
        "      - {base_url: 'http://10.0.0.2:8000/v1', model: smol-b}\n"
        "    routing: {affinity: none, strategy: latency-based-routing, health_check_s: null}")),
        "r.yaml")
    backend = recipe.build_roles().pick("strong").backend
    assert isinstance(backend, ReplicaBackend)
    assert [r.litellm_model for r in backend.replicas] == ["hosted_vllm/smol",
                                                           "hosted_vllm/smol-b"]
    assert backend.routing.strategy == "latency-based-routing"
    assert backend.config_hash() == "replicas:smol"
