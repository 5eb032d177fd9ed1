"""ReplicaBackend: one role served by several OpenAI-compatible servers (vLLM replicas), spread
by litellm's Router.

The Router does the distributed-systems work: it counts failures per replica and cools a
failing one down (`allowed_fails`, `cooldown_time`), filters replicas that failed their health
check (`enable_health_check_routing`; a daemon thread here probes each replica's `/health`, or
`/models`, and writes litellm's health-state cache), and, with `affinity: none`, picks by its own
`routing_strategy` (least-busy, latency-based-routing, simple-shuffle). Failover is the
orchestrator's retry: the Router makes ONE attempt per call (`num_retries=0`, no fallbacks), the
failed attempt reaches the ledger with the replica that failed, and the next attempt lands on a
healthy replica because the failed one is cooling down.

Prefix affinity (`affinity: problem`, the default) is a custom routing rule registered with the
Router: every call of one problem (backends.base.AFFINITY_KEY, which the scheduler sets per
run, sent along as request metadata) goes to the replica that ranks first for the problem id by
rendezvous hashing, so that replica's prefix cache serves the problem's shared prompt; while it
is cooling down or unhealthy the call goes to the least busy healthy replica, and the problem
returns to its own replica once that one is healthy again. Rendezvous hashing moves only the
problems of a replica that leaves (1/N of them), never the others.

Example:
    >>> spec = BackendSpec(backend="openai", model="SmolLM2-135M-Instruct", endpoints=(
    ...     Endpoint(base_url="http://10.0.0.1:8000/v1"), Endpoint(base_url="http://10.0.0.2:8000/v1")))
    >>> backend = build_backend(spec)          # a ReplicaBackend
    >>> gen = await backend.generate(GenerateRequest(messages=(...,)))
    >>> gen.served_by                          # 'http://10.0.0.2:8000/v1'
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from reasonloom.backends._openai_wire import field_of, map_error, one_line, status_error
from reasonloom.backends.base import AFFINITY_KEY
from reasonloom.backends.errors import (BackendError, BadRequest, CapabilityMissing, MissingApiKey,
                                        RateLimited, StreamCut, Unreachable)
from reasonloom.backends.key_policy import read_key
from reasonloom.backends.spec import BackendSpec, ReplicaRouting
from reasonloom.backends.litellm import LiteLLMBackend, litellm
# after reasonloom.backends.litellm, which keeps litellm from fetching its price table
from litellm.types.router import (CustomRoutingStrategyBase,  # noqa: E402
                                  RouterRateLimitError, RouterRateLimitErrorBasic)

_META = "reasonloom"   # our entry in the request metadata litellm hands the routing rule


@dataclass(frozen=True)
class Replica:
    id: str              # litellm's deployment id (model_info.id)
    base_url: str        # http://host:port/v1
    litellm_model: str   # provider/model as litellm calls it
    api_key: str | None

    @property
    def root(self) -> str:
        return re.sub(r"/v1$", "", self.base_url)


def rendezvous_order(key: str, ids: Sequence[str]) -> list[str]:
    """Replica ids ranked for `key` by highest random weight: each key has its own stable order,
    and removing a replica only moves the keys it ranked first."""
    def weight(rid: str) -> bytes:
        return hashlib.blake2b(f"{key}\x00{rid}".encode(), digest_size=8).digest()

    return sorted(ids, key=weight, reverse=True)


def choose_replica(key: str | None, ids: Sequence[str], excluded: set[str],
                   in_flight: dict[str, int], picked: dict[str, int]) -> str | None:
    """The affinity rule: the key's first-ranked replica while it is healthy, else the least
    busy healthy one (ties: the key's rank, then fewest calls so far). None if all are out."""
    order = rendezvous_order(key, ids) if key else list(ids)
    healthy = [rid for rid in order if rid not in excluded]
    if not healthy:
        return None
    if key and healthy[0] == order[0]:
        return order[0]
    rank = {rid: i for i, rid in enumerate(order)}
    return min(healthy, key=lambda rid: (in_flight.get(rid, 0),
                                         0 if key else picked.get(rid, 0), rank[rid]))


class AffinityRule(CustomRoutingStrategyBase):
    """The Router's pick for `affinity: problem`: reads the Router's cooldowns and health-check
    state, so failing replicas are skipped exactly as litellm's own strategies skip them."""

    def __init__(self, backend: "ReplicaBackend", router: Any):
        self.backend = backend
        self.router = router

    async def async_get_available_deployment(self, model: str, messages: Any = None,
                                             input: Any = None, specific_deployment: Any = False,
                                             request_kwargs: dict | None = None) -> Any:
        ours = field_of(field_of(request_kwargs, "metadata"), _META) or {}
        deployments = {d["model_info"]["id"]: d for d in self.router.registry().deployments(model)}
        ids = [r.id for r in self.backend.replicas if r.id in deployments]
        cooling, unhealthy = await self.backend.excluded(self.router, ids)
        key, busy, picked = ours.get("affinity"), self.backend.in_flight, self.backend.picked
        # a probe is a hint: when it rules out every replica (a slow /health under load), only
        # the Router's cooldowns, which real failures set, keep a replica out
        rid = (choose_replica(key, ids, cooling | unhealthy, busy, picked)
               or choose_replica(key, ids, cooling, busy, picked))
        if rid is None:
            raise Unreachable(f"every replica of {self.backend.model!r} is cooling down or "
                              f"failing its health check: "
                              f"{', '.join(self.backend.by_id[i].base_url for i in ids)}")
        self.backend.reserve(ours.get("call"), rid)
        return deployments[rid]


class ReplicaBackend(LiteLLMBackend):
    """A role's model on several OpenAI-compatible servers. `model` is the role's model name (the
    Router's model group); each endpoint may name the model its own way."""

    name = "replicas"

    def __init__(self, model: str, replicas: Sequence[Replica], routing: ReplicaRouting,
                 **options: Any):
        if not replicas:
            raise ValueError(f"replicas backend for {model!r}: no endpoints")
        self.replicas = tuple(replicas)
        self.by_id = {r.id: r for r in self.replicas}
        self.routing = routing
        self.group = model
        self.in_flight: dict[str, int] = {r.id: 0 for r in self.replicas}
        self.picked: dict[str, int] = {r.id: 0 for r in self.replicas}   # calls sent so far
        self.served: dict[str, int] = {r.base_url: 0 for r in self.replicas}   # answered
        self._calls: dict[str, str] = {}     # call id -> replica id, until the call ends
        self._routers: dict[int, Any] = {}
        self._health: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None
        first = self.replicas[0]
        super().__init__(first.litellm_model, base_url=first.base_url, api_key=first.api_key,
                         **options)
        self.model = model

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> "ReplicaBackend":
        def key(env: str | None, base_url: str) -> str | None:
            value = read_key(env, base_url)
            if env and not value:
                raise MissingApiKey(f"environment variable {env} is not set")
            return value

        replicas = []
        for i, ep in enumerate(spec.endpoints):
            name = ep.model or spec.model
            if not name:
                raise ValueError(f"replicas backend: endpoint {ep.base_url} needs a model name "
                                 f"(the role's `model` or the endpoint's)")
            # `openai` roles are self-hosted servers here: litellm's vLLM provider keeps the
            # extras (prompt log-probs, continuing an answer, /tokenize) as OpenAIBackend does
            litellm_model = name if spec.backend == "litellm" else f"hosted_vllm/{name}"
            replicas.append(Replica(id=f"replica{i}", base_url=ep.base_url,
                                    litellm_model=litellm_model,
                                    api_key=key(ep.api_key_env or spec.api_key_env, ep.base_url)))
        return cls(spec.model or replicas[0].litellm_model, replicas, spec.routing,
                   **spec.options)

    # -- the Router (one per event loop: its pooled connections must not cross loops) ----------
    def router(self) -> Any:
        loop = id(asyncio.get_running_loop())
        if loop not in self._routers:
            model_list = [{"model_name": self.group,
                           "litellm_params": {"model": r.litellm_model, "api_base": r.base_url,
                                              "api_key": r.api_key or "EMPTY",
                                              "timeout": self.timeout_s},
                           "model_info": {"id": r.id}} for r in self.replicas]
            interval = self.routing.health_check_s
            router = litellm.Router(
                model_list=model_list, routing_strategy=self.routing.strategy, num_retries=0,
                allowed_fails=self.routing.allowed_fails, cooldown_time=self.routing.cooldown_s,
                timeout=self.timeout_s, enable_health_check_routing=interval is not None,
                # a probe result older than three periods means the prober stopped: ignore it
                health_check_staleness_threshold=int(max(10.0, 3 * (interval or 0))))
            if self.routing.affinity == "problem":
                router.register_plugin(AffinityRule(self, router))
            if self._health:
                router.health().health_checks.set_deployment_health_states(dict(self._health))
            self._routers = {loop: router}
            self._start_prober()
        return self._routers[loop]

    async def excluded(self, router: Any, ids: Sequence[str]) -> tuple[set[str], set[str]]:
        """Replicas litellm says to avoid: (cooling down, unhealthy by the probes)."""
        health = router.health()
        cooling = await health.cooldowns.async_get_active_cooldowns(list(ids), None)
        unhealthy = await health.health_checks.async_get_unhealthy_deployment_ids()
        return {rid for rid, _ in cooling}, set(unhealthy)

    def reserve(self, call: str | None, rid: str) -> None:
        self.picked[rid] += 1
        if call:   # counted in flight only when our transport will release it
            self.in_flight[rid] += 1
            self._calls[call] = rid

    def release(self, call: str) -> Replica | None:
        rid = self._calls.pop(call, None)
        if rid is None:
            return None
        self.in_flight[rid] -= 1
        return self.by_id[rid]

    # -- health checks ---------------------------------------------------------------------------
    def _start_prober(self) -> None:
        if self.routing.health_check_s is None or self._prober is not None:
            return
        self._stop = threading.Event()   # a fresh one: aclose() set the last
        self._prober = threading.Thread(target=self._probe_forever, daemon=True,
                                        name=f"reasonloom-health-{self.group}")
        self._prober.start()

    def probe(self, replica: Replica, timeout_s: float = 2.0) -> tuple[bool, str]:
        """vLLM's `/health` answers 503 once its engine died; a server without it (404) is asked
        for `/models`, which every OpenAI-compatible server has."""
        import httpx

        headers = {"Authorization": f"Bearer {replica.api_key or 'EMPTY'}"}
        try:
            resp = httpx.get(f"{replica.root}/health", timeout=timeout_s, headers=headers)
            if resp.status_code == 404:
                resp = httpx.get(f"{replica.base_url}/models", timeout=timeout_s,
                                 headers=headers)
        except httpx.HTTPError as exc:
            return False, one_line(exc, 120) or type(exc).__name__
        return resp.status_code == 200, f"health check answered {resp.status_code}"

    def _probe_forever(self) -> None:
        interval = float(self.routing.health_check_s or 5.0)
        stop = self._stop
        misses = {r.id: 0 for r in self.replicas}
        while not stop.is_set():
            states = {}
            for replica in self.replicas:
                ok, reason = self.probe(replica)
                misses[replica.id] = 0 if ok else misses[replica.id] + 1
                # two misses in a row: one slow answer on a loaded machine is not a death
                states[replica.id] = {"is_healthy": misses[replica.id] < 2,
                                      "timestamp": time.time(), "reason": "" if ok else reason}
            self._health = states
            for router in list(self._routers.values()):
                router.health().health_checks.set_deployment_health_states(dict(states))
            stop.wait(interval)

    # -- transport -------------------------------------------------------------------------------
    def _router_args(self, body: dict[str, Any], call: str) -> dict[str, Any]:
        args = {**body, "model": self.group, "num_retries": 0, "timeout": self.timeout_s,
                "metadata": {_META: {"affinity": AFFINITY_KEY.get(), "call": call}}}
        if "seed" in args and "seed" not in self._supported:
            del args["seed"]
        if self.headers:
            args["extra_headers"] = self.headers
        return args

    def fail_at(self, exc: BaseException, what: str, replica: Replica | None) -> BackendError:
        """A failure -> the typed error, naming (and tagging, for the ledger) the replica."""
        url = replica.base_url if replica else f"the replicas of {self.group!r}"
        if isinstance(exc, (RouterRateLimitError, RouterRateLimitErrorBasic)):
            mapped: BackendError = RateLimited(
                f"every replica of {self.group!r} is cooling down: {one_line(exc, 160)}",
                getattr(exc, "cooldown_time", None))
        elif isinstance(exc, litellm.AuthenticationError):
            mapped = BadRequest(f"{url} refused the API key: {one_line(exc, 160)}")
        else:
            found = map_error(exc, url=url, model=self.group, what=what)
            if found is None:
                raise exc
            mapped = found
            if not isinstance(mapped, Unreachable) and "Cannot connect to host" in str(exc):
                mapped = Unreachable(f"cannot reach {url}: {what} could not connect "
                                     f"({one_line(exc, 160)})")
        mapped.served_by = replica.base_url if replica else None   # type: ignore[attr-defined]
        return mapped

    def served_for(self, response: Any) -> str:
        """The replica that answered, from litellm's hidden response parameters."""
        if isinstance(response, _ReplicaStream):
            return response.served_by
        hidden = getattr(response, "_hidden_params", None) or {}
        rid = hidden.get("model_id")
        if rid in self.by_id:
            return self.by_id[rid].base_url
        return (hidden.get("api_base") or "").rstrip("/") or self.base_url

    async def complete(self, body: dict[str, Any]) -> Any:
        call = uuid.uuid4().hex
        what = f"POST /chat/completions of {self.group!r}"
        try:
            resp = await self.router().acompletion(**self._router_args(body, call))
        except Exception as exc:
            raise self.fail_at(exc, what, self.release(call)) from None
        self.release(call)
        url = self.served_for(resp)
        self.served[url] = self.served.get(url, 0) + 1
        return resp

    async def open_stream(self, body: dict[str, Any]) -> Any:
        call = uuid.uuid4().hex
        what = f"POST /chat/completions of {self.group!r} (stream)"
        try:
            chunks = await self.router().acompletion(**self._router_args(body, call))
        except Exception as exc:
            raise self.fail_at(exc, what, self.release(call)) from None
        rid = self._calls.get(call)
        replica = self.by_id[rid] if rid else None
        return _ReplicaStream(self, chunks, call, replica.base_url if replica else
                              self.served_for(chunks), replica)

    # -- vLLM's /tokenize on one healthy replica (the problem's own, where it can) --------------
    def _route_sideways(self) -> Replica:
        router = self._routers.get(id(asyncio.get_running_loop()))
        excluded: set[str] = set()
        if router is not None:
            ids = [r.id for r in self.replicas]
            excluded = {rid for rid, _ in router.health().cooldowns.get_active_cooldowns(ids, None)}
            excluded |= set(router.health().health_checks.get_unhealthy_deployment_ids())
        rid = choose_replica(AFFINITY_KEY.get(), [r.id for r in self.replicas], excluded,
                             self.in_flight, self.picked)
        return self.by_id[rid] if rid else self.replicas[0]

    async def _post_server(self, path: str, body: dict[str, Any], purpose: str) -> Any:
        import httpx

        replica = self._route_sideways()
        url = f"{replica.root}{path}"
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                resp = await http.post(url, json=body, headers={
                    "Authorization": f"Bearer {replica.api_key or 'EMPTY'}"})
        except Exception as exc:
            raise self.fail_at(exc, f"POST {url}", replica) from None
        if resp.status_code == 404 and "model" not in resp.text.lower():
            raise CapabilityMissing(f"{replica.root} has no {path} endpoint ({purpose})")
        if resp.status_code >= 400:
            raise status_error(resp.status_code, resp.text, resp.headers, url=replica.base_url,
                               model=self.group, what=f"POST {url}")
        return resp.json()

    def config_hash(self) -> str:
        # replicas serve one model: which ones answer does not change a call's result
        return f"replicas:{self.group}"

    async def aclose(self) -> None:
        self._stop.set()
        self._prober = None   # the next call, on whatever loop, starts routers and probes anew
        self._routers = {}
        await super().aclose()


class _ReplicaStream:
    """A litellm stream that knows its replica: a cut names it, and the end (or close) releases
    the replica's in-flight slot."""

    def __init__(self, backend: ReplicaBackend, inner: Any, call: str, served_by: str,
                 replica: Replica | None):
        self.backend, self.inner, self.call, self.served_by = backend, inner, call, served_by
        self.replica = replica
        self._released = False

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.backend.release(self.call)
            self.backend.served[self.served_by] = self.backend.served.get(self.served_by, 0) + 1

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[Any]:
        texts: dict[int, str] = {}
        try:
            async for chunk in self.inner:
                for choice in field_of(chunk, "choices", []):
                    index = field_of(choice, "index", 0)
                    texts[index] = texts.get(index, "") + (
                        field_of(field_of(choice, "delta"), "content") or "")
                yield chunk
        except Exception as exc:
            mapped = self.backend.fail_at(exc, "stream", self.replica)
            if not isinstance(mapped, (BadRequest, StreamCut)):
                cut = StreamCut(f"{self.served_by}: stream of {self.backend.group!r} cut: "
                                f"{one_line(exc)}", partial="".join(texts[i] for i in sorted(texts)))
                cut.served_by = self.served_by   # type: ignore[attr-defined]
                mapped = cut
            raise mapped from None
        finally:
            self._release()

    async def aclose(self) -> None:
        self._release()
        from reasonloom.backends._openai_wire import close_stream

        await close_stream(self.inner)
