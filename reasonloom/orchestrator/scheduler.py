"""The scheduler: every node runs as soon as its inputs are ready; a failure cancels only
what depends on it; a budget stop ends the run but keeps what it had."""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Callable

from pydantic import BaseModel

from reasonloom.backends.base import AFFINITY_KEY
from reasonloom.orchestrator.budget import Budget, BudgetExceeded, BudgetSpec
from reasonloom.orchestrator.cache import CacheMode, RunStore, TieredStore
from reasonloom.orchestrator.context import SHAPING, PartialStream, RunContext, RunState
from reasonloom.orchestrator.events import Event, EventBus
from reasonloom.orchestrator.gc_tuning import during_a_run
from reasonloom.orchestrator.graph import PROBLEM, Graph, NodeSpec, Source
from reasonloom.orchestrator.result import NodeFailure, RunFailed, RunResult
from reasonloom.orchestrator.roles import Roles
from reasonloom.orchestrator.run_record import RECORD_KEY, RunRecorder
from reasonloom.orchestrator.types import Answer, Candidate, Candidates, Problem


class _UpstreamFailed(Exception):
    def __init__(self, node: str):
        super().__init__(node)
        self.node = node


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _as_answer(value: Any) -> Answer | None:
    """The run's answer from the output port: an Answer, or the best of candidates."""
    if value is None or isinstance(value, Answer):
        return value
    if isinstance(value, list) and value and isinstance(value[0], Candidate):
        best = Candidates(value).best() if any(c.score is not None for c in value) else value[0]
        return Answer(text=best.text, answer=best.answer, candidates=list(value))
    if isinstance(value, str):
        return Answer(text=value)
    return None


def _answer_summary(answer: Any) -> dict[str, Any]:
    """What a node's `node_finished` event says of its answer: the extracted answer and the
    strategy's scalar details (votes, samples ...), for progress displays."""
    if not isinstance(answer, Answer):
        return {}
    details = {key: value for key, value in (answer.details or {}).items()
               if isinstance(value, (int, float, str, bool)) and len(str(value)) <= 40}
    return {"answer": answer.answer, "answer_details": details}


class Scheduler:
    def __init__(self, graph: Graph, state: RunState, problem: Problem,
                 finished: dict[str, dict[str, Any]] | None = None):
        self.graph = graph
        self.state = state
        self.problem = problem
        self.dag = graph.validate()
        self.results: dict[str, asyncio.Future] = {}
        self.partials: dict[str, dict[str, PartialStream]] = {n: {} for n in graph.nodes}
        self.outputs: dict[str, dict[str, Any]] = dict(finished or {})
        self.failures: list[NodeFailure] = []
        self.budget_error: BudgetExceeded | None = None

    def _stream_of(self, src: Source) -> PartialStream:
        stream = self.partials[src.node].get(src.port)
        if stream is None:
            stream = self.partials[src.node][src.port] = PartialStream()
            if src.node in self.outputs:   # the producer finished before we subscribed
                stream.publish(self.outputs[src.node][src.port], final=True)
        return stream

    async def _input(self, name: str, src: Source) -> Any:
        if src.node == PROBLEM:
            return self.problem
        try:
            produced = await self.results[src.node]
        except (_UpstreamFailed, Exception) as exc:
            cause = exc.node if isinstance(exc, _UpstreamFailed) else src.node
            self.failures.append(NodeFailure(node=name, error="cancelled",
                                             cancelled_because=cause))
            raise _UpstreamFailed(cause) from None
        return produced[src.port]

    async def _run_node(self, spec: NodeSpec) -> dict[str, Any]:
        name = spec.name
        if name in self.outputs:   # finished in an earlier, resumed run
            return self.outputs[name]
        inputs: dict[str, Any] = {}
        upstream: dict[str, PartialStream] = {}
        streaming = spec.streaming
        for port, ref in spec.inputs.items():
            if isinstance(ref, list):   # several producers: candidates concatenate
                values = []
                for src in ref:   # a plain loop: an async comprehension is one more coroutine
                    values.append(await self._input(name, src))
                inputs[port] = (Candidates(c for value in values for c in value)
                                if spec.type.inputs[port] == "candidates" else values)
            elif port in streaming:
                upstream[port] = self._stream_of(ref)
            elif ref.node == PROBLEM:   # no coroutine for the run's input
                inputs[port] = self.problem
            else:
                inputs[port] = await self._input(name, ref)
        events = self.state.events
        if events.active:
            events.emit("node_started", name, type=spec.type.name)
        partials = self.partials[name]
        ctx = RunContext(self.state, name, partials, upstream)
        try:
            out = await spec.type.fn(inputs, spec.config, ctx)
        except BudgetExceeded as exc:
            # the whole run stops: cancel every other node, keep what finished
            self.budget_error = self.budget_error or exc
            for task in self.results.values():
                if task is not asyncio.current_task():
                    task.cancel()
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures.append(NodeFailure(node=name, error=f"{type(exc).__name__}: {exc}"))
            if events.active:
                events.emit("node_failed", name, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            for stream in partials.values():
                stream.close()
        out = dict(out)
        self.outputs[name] = out
        for port, stream in partials.items():   # streaming consumers get the end
            if port in out:
                stream.publish(out[port], final=True)
        if self.state.store is not None:
            self.state.store.put_node_output(name, _jsonable(out))
        if events.active:
            events.emit("node_finished", name, **_answer_summary(out.get("answer")))
        return out

    async def run(self) -> None:
        """One task per node; a node's task is also the future its consumers await (tasks
        only start once all exist). Failures are recorded where they happen."""
        loop = asyncio.get_running_loop()
        for name, spec in self.graph.nodes.items():
            self.results[name] = loop.create_task(self._run_node(spec))
        tasks = list(self.results.values())
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:   # the caller was cancelled (e.g. a client went away): stop every node
            unfinished = [task for task in tasks if not task.done()]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self.budget_error is not None:
            raise self.budget_error


@during_a_run
async def run(graph: Graph, problem: Problem | str, roles: Roles, *, seed: int = 0,
              budget: BudgetSpec | None = None, cache: CacheMode = "off",
              run_id: str | None = None, subscribers: list[Callable[[Event], None]] = (),
              keep_events: bool = False, shaping: bool = True,
              shared_cache: RunStore | None = None, recipe: str | None = None) -> RunResult:
    """Run a graph on one problem; returns the pydantic RunResult (`recipe`: the name it and
    the run's record carry).

    Raises RunFailed (a node the answer needs failed) or BudgetExceeded (with partial results
    and the best published answer); both keep every finished output. `shaping=False` turns
    prefix-aware prompt layout and n-sampling off (for comparison; reasonloom/prompts.py).
    """
    if isinstance(problem, str):
        problem = Problem.from_text(problem)
    run_id = run_id or uuid.uuid4().hex[:12]
    own = None if cache == "off" else RunStore.for_run(run_id, cache)
    store = own if shared_cache is None else (
        shared_cache if own is None else TieredStore(own, shared_cache))
    events = EventBus()
    kept: list[dict[str, Any]] = []
    if keep_events:
        events.subscribe(lambda e: kept.append(e.to_json()))
    for fn in subscribers:
        events.subscribe(fn)
    # a run with its own file keeps what `reasonloom report` explains (run_record.py)
    recorder = RunRecorder(run_id, graph, problem) if own is not None else None
    if recorder is not None:
        events.subscribe(recorder)
    state = RunState(run_id=run_id, seed=seed, roles=roles, budget=Budget(budget),
                     events=events, store=store, shaping=shaping)
    scheduler = Scheduler(graph, state, problem)
    shaping_token = SHAPING.set(shaping)   # node tasks copy it when they are created
    # replicas keep one problem's calls on one server (its prefix cache); the default id "0"
    # is shared by every ad-hoc question, so those runs are keyed by their run id instead
    affinity_token = AFFINITY_KEY.set(run_id if str(problem.id) == "0" else str(problem.id))
    t0 = time.time()
    ended: RunResult | None = None   # what the run ended with, for its record
    events.emit("run_started", None, run_id=run_id)

    def result(status: str, answer: Answer | None) -> RunResult:
        ttft = (events.first_answer_t - t0) if events.first_answer_t else None
        return RunResult(run_id=run_id, recipe=recipe, answer=answer,
                         outputs=scheduler.outputs, usage=state.ledger.report(),
                         wall_s=time.time() - t0, ttft_s=ttft, events=kept, status=status,
                         failures=scheduler.failures, dropped=state.dropped)

    try:
        try:
            await scheduler.run()
        except BudgetExceeded as exc:
            ended = result("budget_exceeded", state.best)
            events.emit("run_finished", None, status="budget_exceeded")
            raise BudgetExceeded(str(exc), partial=ended, best=state.best) from None
        finally:
            SHAPING.reset(shaping_token)
            AFFINITY_KEY.reset(affinity_token)
        out = graph.output
        assert out is not None
        if out.node not in scheduler.outputs:
            failed = [f for f in scheduler.failures if f.cancelled_because is None]
            why = "; ".join(f"{f.node}: {f.error}" for f in failed) or "unknown"
            ended = result("failed", state.best)
            events.emit("run_finished", None, status="failed")
            raise RunFailed(f"run {run_id} failed: {why}", ended)
        ended = result("ok", _as_answer(scheduler.outputs[out.node].get(out.port)))
        events.emit("run_finished", None, status="ok")
        return ended
    except BaseException as exc:
        # a run stopped from outside (Ctrl-C, a closed connection) is recorded as cancelled
        stopped = isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt))
        ended = ended or result("cancelled" if stopped else "failed", state.best)
        raise
    finally:
        if recorder is not None and own is not None and ended is not None:
            own.set_meta(RECORD_KEY, recorder.record(ended, state.ledger))
        if store is not None and store is not shared_cache:   # its owner closes a shared one
            store.close()
