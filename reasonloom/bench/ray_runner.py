"""`reasonloom bench ... --ray [ADDRESS]`: the problems of a run, sharded over a Ray cluster.

Each Ray worker runs its shard of problems with the recipe's own orchestrator (throttles,
retries, ledger), against SHARED OpenAI-compatible servers: a role that names a server keeps
it; `embedded` / `vllm` roles are served by ONE `vllm` OpenAI server that the driver starts
(`python -m vllm.entrypoints.openai.api_server`) and points the roles at, rather than one
engine per worker. A worker streams each finished problem back as it ends (a Ray streaming
generator), so the driver writes the same results.jsonl, resumes the same way and drives one
progress bar. Ray is imported only here, and only with `--ray`.

Example:
    $ ray start --head                                    # or leave --ray empty: a local cluster
    $ reasonloom bench recipes/self_consistency.yaml --dataset reasoning-gym:basic_arithmetic \
          --limit 20 --ray auto
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from reasonloom.bench.datasets import Item
from reasonloom.bench.runner import ProblemResult, finished_ids, run_problem

# Configuration (never secrets) the workers need as the driver has it.
_WORKER_ENV = ("LITELLM_LOCAL_MODEL_COST_MAP", "TOKENIZERS_PARALLELISM", "VLLM_CPU_KVCACHE_SPACE")
LOCAL = "local"   # `--ray` without an address: start a local cluster (or join RAY_ADDRESS)


class RayBenchError(RuntimeError):
    """One line a user can act on (the CLI prints it without a traceback)."""


# -- the cluster ---------------------------------------------------------------------------------
def connect(address: str = LOCAL) -> dict[str, Any]:
    """Joins (or starts) the cluster; returns its size. A local cluster gets every core and a
    small object store: results are a few KB a problem, memory is for the engines."""
    try:
        import ray
    except ImportError:
        raise RayBenchError("--ray needs Ray: pip install 'reasonloom[ray]'") from None
    env = {k: os.environ[k] for k in _WORKER_ENV if k in os.environ}
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if not ray.is_initialized():
        try:
            if address == LOCAL and not os.environ.get("RAY_ADDRESS"):
                ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False,
                         object_store_memory=128 * 1024 ** 2, log_to_driver=False,
                         runtime_env={"env_vars": env})
            else:
                ray.init(address=None if address == LOCAL else address, log_to_driver=False,
                         runtime_env={"env_vars": env})
        except Exception as exc:   # ConnectionError, a bad address, a version mismatch ...
            raise RayBenchError(f"--ray {address}: cannot join the Ray cluster: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                ) from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "cpus": int(ray.cluster_resources().get("CPU", 1))}


# -- one shared vLLM server for embedded roles -----------------------------------------------------
def engine_cli_args(engine: dict[str, Any]) -> list[str]:
    """vLLM engine arguments (a recipe's `engine:`) as `api_server` flags."""
    out: list[str] = []
    for key, value in engine.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        elif value is not None:
            out += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return out


class EngineServer:
    """`python -m vllm.entrypoints.openai.api_server` in its own process group (stopped as
    one). `host` is where workers reach it: loopback on one machine, this node's address when
    the cluster spans several."""

    def __init__(self, model_path: str, served_name: str, engine: dict[str, Any], log: Path,
                 host: str = "127.0.0.1", start_timeout_s: float = 600, wait: bool = True):
        with socket.socket() as sock:
            sock.bind(("", 0))
            self.port = sock.getsockname()[1]
        self.served_name = served_name
        self.root = f"http://{host}:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.log = log
        from reasonloom.backends.vllm.cpu_defaults import cpu_engine_settings

        bind = "127.0.0.1" if host == "127.0.0.1" else "0.0.0.0"
        # the server makes its own engine config: its engine core starts as vLLM decides
        engine, engine_env, _ = cpu_engine_settings(engine)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
               "--served-model-name", served_name, "--host", bind, "--port", str(self.port),
               *engine_cli_args(engine)]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE",
                                                                      "1"), **engine_env}
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.start_timeout_s = start_timeout_s
        if wait:
            self.wait_healthy()

    def wait_healthy(self) -> "EngineServer":
        """Blocks until the server answers /health (`wait=False` starts several at once)."""
        try:
            self._wait_healthy(self.start_timeout_s)
        except BaseException:   # Ctrl-C while it starts: no engine is left behind
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise RayBenchError(f"the vLLM server for {self.served_name} exited "
                                    f"({self.proc.returncode}): {tail[0]} (log: {self.log})")
            try:
                if httpx.get(f"{self.root}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RayBenchError(f"the vLLM server for {self.served_name} was not healthy within "
                            f"{timeout_s:.0f} s (log: {self.log})")

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait_s)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue


Launcher = Callable[[str, str, dict[str, Any], Path], Any]


def serve_engine_roles(recipe, log_dir: Path, host: str = "127.0.0.1",
                       launch: Launcher | None = None) -> tuple[Any, list[Any]]:
    """The recipe with every `embedded` / `vllm` role pointed at a shared OpenAI server (one
    per distinct model + engine arguments), and the servers started for it."""
    from reasonloom.backends.vllm.backend import whole_prompt_prefill
    from reasonloom.backends.vllm.engine import DEFAULT_ENGINE_ARGS
    from reasonloom.recipe import Recipe

    launch = launch or (lambda path, name, engine, log: EngineServer(path, name, engine, log,
                                                                      host))
    servers: dict[str, Any] = {}
    models = {}
    try:
        for name, role in recipe.spec.models.items():
            if role.backend not in ("embedded", "vllm"):
                models[name] = role
                continue
            if role.backend == "embedded":
                from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model

                path, served = str(ensure_embedded_model()), MODEL_NAME
            else:
                path, served = role.model, role.model
            # the in-process engine's settings exactly, so the server answers as it would
            engine = whole_prompt_prefill({**DEFAULT_ENGINE_ARGS, **role.backend_spec().engine})
            key = json.dumps([path, engine], sort_keys=True, default=str)
            if key not in servers:
                servers[key] = launch(path, served, _translated(path, engine),
                                      log_dir / f"vllm-server-{len(servers)}.log")
            models[name] = role.model_copy(update={
                "backend": "openai", "model": served, "base_url": servers[key].base_url,
                "engine": {}, "steering": None, "speculative": None})
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    spec = recipe.spec.model_copy(update={"models": models})
    return Recipe.from_text(spec_text(spec), recipe.source), list(servers.values())


def _translated(path: str, engine: dict[str, Any]) -> dict[str, Any]:
    """Our engine entries (steering, speculative drafting) as the engine arguments vLLM takes."""
    from reasonloom.backends.vllm.engine import speculative_engine_args, steering_engine_args

    return steering_engine_args(path, speculative_engine_args(engine))


def spec_text(spec) -> str:
    """A recipe spec as recipe text (JSON is YAML): what travels to the workers, which load it
    as a recipe, so it is validated there too. Only what the recipe set is written."""
    return json.dumps(spec.model_dump(mode="json", exclude_unset=True))


# -- the workers ---------------------------------------------------------------------------------
def run_shard(recipe_text: str, source: str, items: list[Item], grader: str,
              concurrency: int) -> Iterator[tuple[str, str]]:
    """A Ray streaming-generator task: runs its problems `concurrency` at a time and yields
    (worker id, ProblemResult JSON) as each one finishes. The event loop is driven between
    yields, so a result leaves the worker as soon as it exists."""
    import ray

    from reasonloom.recipe import Recipe

    recipe = Recipe.from_text(recipe_text, source)
    worker = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"
    loop = asyncio.new_event_loop()
    try:
        roles = recipe.build_roles()
        gate = asyncio.Semaphore(concurrency)

        async def one(item: Item) -> ProblemResult:
            async with gate:
                return await run_problem(recipe, roles, item, grader)

        pending = {loop.create_task(one(item)) for item in items}
        while pending:
            done, pending = loop.run_until_complete(
                asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED))
            for task in done:
                yield worker, task.result().model_dump_json()
        for backend in {id(role.backend): role.backend for role in roles.values()}.values():
            loop.run_until_complete(backend.aclose())   # connection pools, health probes
    finally:
        loop.close()


def shards(items: list[Item], count: int) -> list[list[Item]]:
    """Round-robin: neighbouring items (often alike in cost) land on different workers."""
    return [s for s in (items[i::count] for i in range(count)) if s]


async def ray_bench_recipe(recipe, items: list[Item], grader: str, concurrency: int,
                           results_file: Path, on_done: Callable[[ProblemResult], None],
                           address: str = LOCAL, log_dir: Path | None = None,
                           launch: Launcher | None = None) -> dict[str, Any]:
    """`bench_recipe` over a Ray cluster: the same results.jsonl rows, appended by the driver as
    workers finish problems. Returns the wall seconds, the cluster's size and the workers used."""
    cluster = connect(address)   # first: without Ray installed, it says how to get it
    import ray

    done = finished_ids(results_file)
    todo = [it for it in items if (recipe.name, str(it.id)) not in done]
    host = "127.0.0.1" if cluster["nodes"] == 1 else ray.util.get_node_ip_address()
    served, servers = serve_engine_roles(recipe, log_dir or results_file.parent, host, launch)
    workers: set[str] = set()
    t0 = time.time()
    try:
        task = ray.remote(num_cpus=1)(run_shard).options(num_returns="streaming")
        streams = [task.remote(spec_text(served.spec), recipe.source, shard, grader, concurrency)
                   for shard in shards(todo, max(1, min(len(todo), cluster["cpus"])))]

        async def drain(stream) -> None:
            async for ref in stream:
                worker, row_json = await ref
                workers.add(worker)
                row = ProblemResult.model_validate_json(row_json)
                with results_file.open("a", encoding="utf-8") as f:   # resumable, as without Ray
                    f.write(row_json + "\n")
                on_done(row)

        await asyncio.gather(*(drain(s) for s in streams))
    finally:
        for server in servers:
            server.stop()
    return {"wall_s": time.time() - t0, "workers": sorted(workers), **cluster,
            "servers": [s.base_url for s in servers]}
