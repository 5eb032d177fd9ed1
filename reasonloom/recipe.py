"""Recipes: YAML -> pydantic spec -> Graph + Roles. Every mistake a user can make is ONE line,
`FILE:LINE:COL: path.to.field: what is wrong`, raised before anything runs.

Recipes are data: no eval, no import paths; node types come only from the registry.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from pathlib import Path
from typing import Any, Iterable

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from reasonloom.backends.key_policy import name_problem, route_problem
from reasonloom.backends.spec import BackendSpec, Endpoint
from reasonloom.notebook import NotebookProgress, in_notebook
from reasonloom.orchestrator.budget import BudgetSpec
from reasonloom.orchestrator.cache import CacheSpec, SharedCache
from reasonloom.orchestrator.graph import Graph, GraphError
from reasonloom.orchestrator.result import RunResult
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec, RoleTerms
from reasonloom.orchestrator.types import FrozenModel, Problem
from reasonloom.recipe_yaml import YamlSyntaxError, load_with_positions, position_of

# Parameter names that refer to roles, checked against `models:` at load time.
ROLE_KEYS = {"role", "roles", "scorer", "judge", "aggregator", "initial_role"}
ROLE_ALIASES = {"strongest", "cheapest"}


class RoleConfig(RoleTerms, BackendSpec):
    """One `models:` entry: where the model lives (BackendSpec), what it costs and how hard to
    push it (RoleTerms), and the engine-side extras of an embedded/vllm role."""

    steering: dict[str, Any] | None = None
    speculative: str | dict[str, Any] | None = None

    @field_validator("endpoints")
    @classmethod
    def _replicas_of_a_server_backend(cls, value: tuple[Endpoint, ...],
                                      info: ValidationInfo) -> tuple[Endpoint, ...]:
        # runs only when a recipe gives `endpoints:`
        backend = info.data.get("backend")
        if backend not in ("openai", "litellm"):
            raise ValueError(f"endpoints are OpenAI-compatible servers: use `backend: openai` "
                             f"or `backend: litellm`, not {backend!r}")
        if info.data.get("base_url"):
            raise ValueError("give either base_url or endpoints, not both")
        if not value:
            raise ValueError("endpoints needs at least one {base_url: ...}")
        seen: set[str] = set()
        for i, endpoint in enumerate(value):
            if endpoint.base_url in seen:
                raise ValueError(f"endpoints[{i}]: {endpoint.base_url} is listed twice")
            seen.add(endpoint.base_url)
        return value

    @field_validator("speculative")
    @classmethod
    def _known_speculative(cls, value: str | dict[str, Any] | None
                           ) -> str | dict[str, Any] | None:
        from reasonloom.backends.vllm.engine import SpeculativeSpec

        try:   # `none | ngram | history`, or {method: ..., its parameters}
            SpeculativeSpec.parse(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"speculative{'.' + where if where else ''}: {err['msg']}") from None
        return value

    def backend_spec(self) -> BackendSpec:
        engine = dict(self.engine)
        if self.steering is not None:
            engine["reasonloom_steering"] = self.steering
        if self.speculative is not None:
            engine["reasonloom_speculative"] = self.speculative
        return BackendSpec(**{**{name: getattr(self, name) for name in BackendSpec.model_fields},
                              "engine": engine})


class NodeConfig(FrozenModel):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)


class RecipeSpec(FrozenModel):
    description: str | None = None
    seed: int = 0
    models: dict[str, RoleConfig]
    order: list[str] | None = None
    nodes: dict[str, NodeConfig]
    output: str | None = None
    budget: BudgetSpec = BudgetSpec()
    cache: CacheSpec = CacheSpec()   # `off | record | read_write | replay`, or {mode, path}
    shaping: bool = True     # `on | off`: prefix-aware prompt layout and n-sampling


    @field_validator("cache", mode="before")
    @classmethod
    def _cache_mode_alone(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value


class RecipeError(ValueError):
    """One line: `FILE:LINE:COL: path.to.field: what is wrong`."""

    def __init__(self, file: str, line: int, col: int, path: Iterable[str | int], message: str):
        self.file, self.line, self.col = file, line, col
        self.path = ".".join(str(p) for p in path) or "(recipe)"
        self.message = " ".join(str(message).split())
        super().__init__(f"{file}:{line}:{col}: {self.path}: {self.message}")


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    target = data
    for key in keys[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[keys[-1]] = value


def _override_value(item: str, dotted: str, raw: str) -> Any:
    """A `--set` value, parsed as YAML under the same guards as a recipe file (size, depth,
    aliases, tags); text that is not YAML stays a string."""
    if not raw:
        return ""
    try:
        return load_with_positions(raw)[0]
    except YamlSyntaxError as exc:
        if "syntax" in str(exc):   # e.g. `a: b: c`: the user meant the text
            return raw
        raise RecipeError("--set", exc.line, exc.col, (dotted,), f"{exc} in {item[:80]!r}"
                          ) from None


def _role_refs(params: Any, path: tuple) -> Iterable[tuple[tuple, str]]:
    """Every (path, role name) a node's params mention."""
    if isinstance(params, dict):
        for key, value in params.items():
            here = (*path, key)
            if key in ROLE_KEYS or (isinstance(key, str) and key.endswith("_role")):
                names = value if isinstance(value, (list, tuple)) else [value]
                for i, name in enumerate(names):
                    if isinstance(name, str):
                        yield (here if len(names) == 1 and not isinstance(value, list)
                               else (*here, i)), name
            else:
                yield from _role_refs(value, here)
    elif isinstance(params, list):
        for i, item in enumerate(params):
            yield from _role_refs(item, (*path, i))


def _known_options(backend: str) -> set[str]:
    """What a backend's `options:` may hold (the same names its constructor accepts)."""
    if backend in ("openai", "litellm"):
        from reasonloom.backends.base import Capabilities

        return {"timeout_s", "extra_body", "headers"} | set(Capabilities.model_fields)
    if backend == "scripted":
        import inspect

        from reasonloom.backends.scripted import ScriptedBackend

        return set(inspect.signature(ScriptedBackend).parameters) - {"model"}
    return set()   # embedded/vllm: engine arguments go under `engine:`


def _role_problem(role: RoleConfig) -> tuple[str, str] | None:
    """(field, what is wrong) for a role its backend would refuse at build time."""
    unknown = sorted(set(role.options) - _known_options(role.backend))
    if unknown:
        known = ", ".join(sorted(_known_options(role.backend))) or "none; use `engine:`"
        return "options", (f"unknown option {unknown[0]!r} for backend {role.backend} "
                           f"(known: {known})")
    named = bool(role.endpoints) and all(e.model for e in role.endpoints)
    if role.backend in ("openai", "litellm", "vllm") and not role.model and not named:
        return "model", f"backend {role.backend} needs `model` (the name its server knows)"
    return None


def _key_problem(env_name: str | None, base_url: str | None, backend: str) -> str | None:
    """Why a role may not read `env_name` as its key (backends/key_policy.py), or None."""
    if not env_name:
        return None
    problem = name_problem(env_name)
    if problem is None and not os.environ.get(env_name):
        problem = f"environment variable {env_name} is not set"
    # only server backends send a key anywhere; without base_url it goes to the provider
    return problem or (route_problem(base_url) if backend in ("openai", "litellm") else None)


class Recipe:
    """A validated recipe: `load_recipe(path).run("question")` or build the same graph in code."""

    def __init__(self, spec: RecipeSpec, graph: Graph, source: str = "<recipe>"):
        self.spec = spec
        self.graph = graph
        self.source = source
        self.name = Path(source).stem

    @classmethod
    def from_text(cls, text: str, source: str = "<recipe>",
                  overrides: Iterable[str] = ()) -> "Recipe":
        def fail(path: tuple, message: str, positions: dict | None = None) -> RecipeError:
            line, col = position_of(positions or {}, path)
            return RecipeError(source, line, col, path, message)

        try:
            data, positions = load_with_positions(text)
        except YamlSyntaxError as exc:
            raise RecipeError(source, exc.line, exc.col, (), str(exc)) from None
        if not isinstance(data, dict):
            raise fail((), "a recipe is a mapping with `models:` and `nodes:`")
        for item in overrides:
            dotted, sep, raw = item.partition("=")
            if not sep or not dotted:
                raise RecipeError("--set", 1, 1, (dotted,), f"expected path=value, got {item!r}")
            value = _override_value(item, dotted, raw)
            _set_path(data, dotted.strip(), value)
        try:
            spec = RecipeSpec.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = tuple(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r}"
            elif err["type"] == "missing":
                msg = f"missing required key {loc[-1]!r}"
            raise fail(loc, msg, positions) from None
        roles = set(spec.models)
        if not roles:
            raise fail(("models",), "at least one model role is needed", positions)
        for i, name in enumerate(spec.order or []):
            if name not in roles:
                raise fail(("order", i), f"unknown role {name!r} (models: "
                           f"{', '.join(spec.models)})", positions)
        for role_name, role in spec.models.items():
            here = ("models", role_name)
            problem = _key_problem(role.api_key_env, role.base_url, role.backend)
            if problem:
                raise fail((*here, "api_key_env"), problem, positions)
            if "routing" in role.model_fields_set and not role.endpoints:
                raise fail((*here, "routing"), "routing spreads calls over "
                           "`endpoints`; this role has none", positions)
            for i, endpoint in enumerate(role.endpoints or ()):
                problem = _key_problem(endpoint.api_key_env or role.api_key_env,
                                       endpoint.base_url, role.backend)
                if problem:
                    raise fail((*here, "endpoints", i, "api_key_env"), problem, positions)
            if (role.backend in ("openai",) and not role.base_url and not role.endpoints
                    and not role.api_key_env):
                raise fail(("models", role_name), "an openai role needs base_url or "
                           "api_key_env", positions)
            problem = _role_problem(role)
            if problem:
                raise fail((*here, problem[0]), problem[1], positions)
        for node_name, node in spec.nodes.items():
            for path, name in _role_refs(node.params, ("nodes", node_name, "params")):
                if name not in roles and name not in ROLE_ALIASES:
                    raise fail(path, f"unknown role {name!r} (models: "
                               f"{', '.join(spec.models)})", positions)
        graph = Graph()
        try:
            for node_name, node in spec.nodes.items():
                graph.add(node_name, node.type, node.params, node.inputs)
            if spec.output:
                graph.set_output(spec.output)
            graph.validate()
        except GraphError as exc:
            raise fail(exc.path, str(exc), positions) from None
        return cls(spec, graph, source)

    @classmethod
    def load(cls, path: str | Path, overrides: Iterable[str] = ()) -> "Recipe":
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise RecipeError(str(path), 0, 0, (), f"cannot read recipe: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            raise RecipeError(str(path), line, col, (), f"not UTF-8 text (byte "
                              f"0x{raw[exc.start]:02x})") from None
        return cls.from_text(text, str(path), overrides)

    # -- running ---------------------------------------------------------------------------
    def build_roles(self) -> Roles:
        from reasonloom.backends.factory import build_backend

        roles = {}
        for name, cfg in self.spec.models.items():
            spec = RoleSpec(name=name, model=cfg.model, **cfg.terms())
            roles[name] = Role(spec, build_backend(cfg.backend_spec()))
        return Roles(roles, self.spec.order or list(self.spec.models))

    async def arun(self, problem: Problem | str, *, roles: Roles | None = None,
                   **kwargs: Any) -> RunResult:
        """Run on the caller's loop (`await recipe.arun(...)` in async code or a notebook)."""
        from reasonloom.orchestrator.scheduler import run

        kwargs.setdefault("recipe", self.name)
        kwargs.setdefault("seed", self.spec.seed)
        kwargs.setdefault("budget", self.spec.budget)
        kwargs.setdefault("shaping", self.spec.shaping)
        cache = self.spec.cache
        if cache.path is None or kwargs.get("shared_cache") is not None:
            kwargs.setdefault("cache", cache.mode)
            return await run(self.graph, problem, roles or self.build_roles(), **kwargs)
        kwargs.setdefault("cache", "off")   # a run's own file only where the caller asks
        shared = SharedCache(Path(cache.path), cache.mode)
        try:
            return await run(self.graph, problem, roles or self.build_roles(),
                             shared_cache=shared, **kwargs)
        finally:
            shared.close()

    def with_shared_cache(self, path: str | Path | None = None) -> "Recipe":
        """This recipe reading and writing the shared call cache at `path` (`--cache PATH`)."""
        spec = self.spec.model_copy(update={"cache": self.spec.cache.shared(path)})
        return Recipe(spec, self.graph, self.source)

    def run(self, problem: Problem | str, *, progress: bool | None = None,
            **kwargs: Any) -> RunResult:
        """Synchronous convenience: runs on one long-lived background loop, so engines started
        by one call keep serving the next, and a caller whose own loop is running (Jupyter,
        an `async def`) just waits for it. In a notebook a progress bar shows while it runs
        (`progress=False` hides it). Interrupting (Ctrl-C, the kernel's stop) cancels the run."""
        loop = background_loop()
        if threading.current_thread() is _LOOP_THREAD:   # waiting here would block the run
            raise RuntimeError("Recipe.run inside a run's own loop: await recipe.arun()")
        bar = None
        if in_notebook() if progress is None else progress:
            bar = NotebookProgress(self.name, len(self.graph.nodes))
            kwargs["subscribers"] = [*kwargs.get("subscribers", ()), bar]
        future = asyncio.run_coroutine_threadsafe(self.arun(problem, **kwargs), loop)
        try:
            if bar is not None:
                bar.show()
                while not concurrent.futures.wait([future], timeout=0.25).done:
                    bar.refresh()
            return future.result()
        except BaseException:   # KeyboardInterrupt: stop the run, not just the wait for it
            future.cancel()
            raise
        finally:
            if bar is not None:
                bar.refresh("cancelled" if future.cancelled() else None)


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_THREAD: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    global _LOOP, _LOOP_THREAD
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        _LOOP_THREAD = threading.Thread(target=_LOOP.run_forever, daemon=True,
                                        name="reasonloom")
        _LOOP_THREAD.start()
    return _LOOP


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    return Recipe.load(path, overrides)
