"""Fault tolerance on a real server: do answers survive injected faults, and does the ledger
account for every attempt?

One vLLM OpenAI-compatible server (SmolLM2-135M, float32, eager) runs as a subprocess, the way
the test fixture starts it (tests/support/vllm_server.py); the fault proxy
(tests/support/fault_proxy.py) sits in front of it. Two seeded workloads per problem, cache
off, every call through OpenAIBackend with a 2 s client timeout (raised to 3x the slowest
warm-up answer where the machine is too busy for 2 s; the result says so):
- Squeeze Evolve, N = 4, k = 2, T = 2 (two priced roles, cheap scorer: generation,
  n-sampling and prompt-log-prob scoring all cross the proxy);
- V1: 4 samples, then a pairwise tournament with B = 3N = 12 comparisons.
Arms: 0 % faults twice (is the run reproducible at all?), 10 % and 20 % (a mix of 429 with
Retry-After, 500, 503, hangs, cut and stalled answers). Then a kill -9 / resume cycle: the
evolve recipe as a `reasonloom run` subprocess (its own process group, OpenAIBackend to the
server) is SIGKILLed once a random number of its calls are recorded, resumed, and compared
with an uninterrupted run.

    python benchmarks/faults.py --quick     # 5 problems, < 15 min on 2 cores
    python benchmarks/faults.py             # 10 problems
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._common import machine, print_table, python_version, write_result  # noqa: E402
from reasonloom.backends.openai import OpenAIBackend  # noqa: E402
from reasonloom.backends.vllm.embedded import MODEL_NAME  # noqa: E402
from reasonloom.orchestrator.context import RunState  # noqa: E402
from reasonloom.orchestrator.graph import Graph  # noqa: E402
from reasonloom.orchestrator.ledger import CallRecord  # noqa: E402
from reasonloom.orchestrator.roles import RetryPolicy, Role, Roles, RoleSpec  # noqa: E402
from reasonloom.orchestrator.scheduler import Scheduler  # noqa: E402
from reasonloom.orchestrator.types import Problem  # noqa: E402
from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.vllm_server import VLLMServer  # noqa: E402

# The fault mix at rate r: each kind's share of the faulted requests.
MIX = {"429": 0.25, "500": 0.15, "503": 0.15, "hang": 0.1, "cut": 0.25, "stall": 0.1}
TIMEOUT_KINDS = {"hang", "stall"}   # these fail on the client's timeout
EVOLVE = {"population": 4, "group_size": 2, "loops": 2, "cut_points": [50], "scorer": "cheap",
          "max_tokens": 16, "temperature": 0.8}
V1_SAMPLES = {"n": 4, "max_tokens": 16, "temperature": 0.8}
V1_TOURNAMENT = {"judge": "strong", "reasoning": False, "max_tokens": 4, "budget_multiplier": 3}


def load_problems(count: int) -> list[Problem]:
    """One-digit additions from reasoning-gym (seeded): what the 135M model can sometimes do."""
    import reasoning_gym

    data = reasoning_gym.create_dataset("basic_arithmetic", size=10 * count, seed=14,
                                        min_terms=2, max_terms=2, min_digits=1, max_digits=1,
                                        operators=("+",))
    items = [x for x in data if "-" not in x["question"]][:count]
    return [Problem.from_text(x["question"], id=f"add-{i}", gold=str(x["answer"]))
            for i, x in enumerate(items)]


def workloads() -> dict[str, Graph]:
    evolve = Graph().add("evolve", "evolve", EVOLVE).set_output("evolve")
    v1 = Graph()
    v1.add("samples", "best_of_n", V1_SAMPLES)
    v1.add("tournament", "v1_tournament", V1_TOURNAMENT,
           {"problem": "problem", "candidates": "samples.candidates"})
    v1.set_output("tournament")
    return {"evolve": evolve, "v1": v1}


def make_roles(base_url: str, client_timeout_s: float, concurrency: int) -> Roles:
    backend = OpenAIBackend(MODEL_NAME, base_url=base_url, timeout_s=client_timeout_s)
    retry = RetryPolicy(max_attempts=10, base_delay_s=0.05, max_delay_s=1.0)
    roles = {name: Role(RoleSpec(name=name, price_in_per_m=p_in, price_out_per_m=p_out,
                                 concurrency=concurrency, retry=retry), backend)
             for name, p_in, p_out in (("strong", 0.8, 3.2), ("cheap", 0.1, 0.4))}
    return Roles(roles, order=["strong", "cheap"])


async def run_recorded(graph: Graph, problem: Problem, roles: Roles, seed: int
                       ) -> tuple[str | None, list[CallRecord], str | None]:
    """One run with the ledger's records kept (the scheduler, as `run` drives it)."""
    state = RunState(run_id=uuid.uuid4().hex[:12], seed=seed, roles=roles)
    scheduler = Scheduler(graph, state, problem)
    await scheduler.run()
    out = graph.output
    produced = scheduler.outputs.get(out.node)
    if produced is None:
        why = "; ".join(f"{f.node}: {f.error}" for f in scheduler.failures)
        return None, list(state.ledger.records), why or "no output"
    return produced[out.port].text, list(state.ledger.records), None


def calibrate_timeout(server: VLLMServer, requested_s: float, problem: Problem) -> dict:
    """The client timeout to use. A timeout shorter than a sound answer takes turns every call
    into a timeout: on a busy shared CPU, 2 s may be that. Time the benchmark's largest
    requests (4 samples of 16 tokens, a recombination-sized prompt) straight to the server
    after one discarded warm-up request, and raise the timeout to 3x the slowest if 2 s is
    too short (reported)."""
    from reasonloom.backends.base import GenerateRequest
    from reasonloom.prompts import problem_messages, with_candidates

    backend = OpenAIBackend(MODEL_NAME, base_url=server.base_url, timeout_s=120)
    long_prompt = with_candidates(problem, ["Let me add the numbers step by step. " * 6] * 2,
                                  "Write one improved solution.")
    requests = [GenerateRequest(messages=problem_messages(problem), n=4, max_tokens=16,
                                temperature=0.8, seed=1000 + i) for i in range(3)]
    requests.append(GenerateRequest(messages=long_prompt, max_tokens=16, seed=7))

    async def timed() -> list[float]:
        out = []
        for req in requests:
            t0 = time.monotonic()
            await backend.generate(req)
            out.append(time.monotonic() - t0)
        await backend.aclose()
        return out[1:]   # the first request pays the server's warm-up

    latencies = asyncio.run(timed())
    effective = max(requested_s, round(3 * max(latencies), 1))
    return {"requested_s": requested_s, "effective_s": effective,
            "warmup_latencies_s": [round(x, 2) for x in latencies],
            "raised": effective > requested_s}


def arm(server: VLLMServer, problems: list[Problem], rate: float, seed: int,
        client_timeout_s: float, concurrency: int) -> dict:
    """Every problem x workload through a fresh proxy at this fault rate."""
    faults = {kind: rate * share for kind, share in MIX.items()} if rate else {}
    proxy = FaultProxy(server.root, faults, seed=seed, retry_after=0.2,
                       hang_s=10 * client_timeout_s).start()
    runs: dict[str, dict] = {}
    t0 = time.monotonic()
    try:
        roles = make_roles(proxy.url + "/v1", client_timeout_s, concurrency)

        async def all_runs() -> None:
            for problem in problems:
                for name, graph in workloads().items():
                    text, records, error = await run_recorded(graph, problem, roles, seed=0)
                    runs[f"{problem.id}/{name}"] = {"answer": text, "error": error,
                                                    "records": records}
            await roles["strong"].backend.aclose()

        asyncio.run(all_runs())
    finally:
        proxy.stop()
    records = [r for run in runs.values() for r in run["records"]]
    failed = [r for r in records if not r.ok]
    return {"rate": rate, "runs": runs, "wall_s": time.monotonic() - t0,
            "calls_sent": proxy.fault_path_requests(), "attempts": len(records),
            "failed_attempts": len(failed), "faults_injected": proxy.faults_injected,
            "injected_by_kind": dict(proxy.injected),
            "timeouts": sum(1 for r in failed if (r.error or "").startswith("Timeout")),
            "failed_runs": sum(1 for run in runs.values() if run["error"])}


def ledger_check(result: dict, clean: dict) -> dict:
    """The ledger against the proxy: one record per request on the wire; a failed attempt
    costs nothing and produces nothing; each injected fault is one failed attempt (timeouts of
    unfaulted requests come on top, and are counted); a run whose answer equals the clean
    run's has the clean run's successful calls and completion tokens exactly."""
    records = [r for run in result["runs"].values() for r in run["records"]]
    failed = [r for r in records if not r.ok]
    injected = result["injected_by_kind"]
    non_timeout = sum(v for k, v in injected.items() if k not in TIMEOUT_KINDS)
    timeout_faults = sum(v for k, v in injected.items() if k in TIMEOUT_KINDS)
    failed_not_timeout = [r for r in failed if not (r.error or "").startswith("Timeout")]
    spontaneous = len(failed) - len(failed_not_timeout) - timeout_faults
    same_output = []
    for key, run in result["runs"].items():
        base = clean["runs"][key]
        if run["answer"] is None or run["answer"] != base["answer"]:
            continue
        ok, base_ok = ([r for r in rs if r.ok] for rs in (run["records"], base["records"]))
        same_output.append(len(ok) == len(base_ok) and sum(r.completion_tokens for r in ok)
                           == sum(r.completion_tokens for r in base_ok))
    checks = {
        "one_record_per_request": len(records) == result["calls_sent"],
        "failed_attempts_cost_nothing": all(r.completion_tokens == 0 and r.cost_usd == 0
                                            for r in failed),
        "each_fault_one_failed_attempt": len(failed_not_timeout) == non_timeout
        and spontaneous >= 0,
        "same_answer_same_output_tokens": all(same_output),
    }
    return {"ok": all(checks.values()), **checks, "spontaneous_timeouts": spontaneous}


# -- kill -9 / resume ----------------------------------------------------------------------------
RESUME_RECIPE = """\
seed: 0
models:
  strong: {{backend: openai, model: {model}, base_url: "{url}", price_in_per_m: 0.8,
           price_out_per_m: 3.2, concurrency: 1, options: {{timeout_s: 120}}}}
  cheap: {{backend: openai, model: {model}, base_url: "{url}", price_in_per_m: 0.1,
          price_out_per_m: 0.4, concurrency: 1, options: {{timeout_s: 120}}}}
order: [strong, cheap]
nodes:
  evolve:
    type: evolve
    params: {params}
output: evolve
"""


def cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reasonloom.cli.main", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)   # its own group: kill -9 takes all of it


def run_id_of(stderr_lines) -> str:
    """The id from the CLI's `run ID (resume with: ...)` line (other lines may come first)."""
    for line in stderr_lines:
        if line.startswith("run ") and "resume" in line:
            return line.split()[1]
    raise RuntimeError("reasonloom run printed no run id")


def stored_calls(home: Path, run_id: str) -> int:
    path = home / "runs" / f"{run_id}.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    except sqlite3.Error:
        return 0


def resume_cycle(server: VLLMServer, problem: Problem, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="reasonloom-faults-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "REASONLOOM_HOME": str(home)}
        recipe = Path(tmp) / "evolve.yaml"
        recipe.write_text(RESUME_RECIPE.format(model=MODEL_NAME, url=server.base_url,
                                               params=json.dumps(EVOLVE)))
        args = ["run", str(recipe), "--input", problem.question, "--json"]
        clean_proc = cli(args, env)
        out, err = clean_proc.communicate(timeout=600)
        if clean_proc.returncode != 0:
            return {"identical": False, "error": f"uninterrupted run failed: {err[-500:]}"}
        clean = json.loads(out)
        clean_run_id = run_id_of(err.splitlines())
        total_rows = stored_calls(home, clean_run_id)   # cached samples of every call
        kill_at = random.Random(seed).randint(1, max(1, total_rows - 2))

        proc = cli(args, env)
        run_id = run_id_of(proc.stderr)
        t0 = time.monotonic()
        while stored_calls(home, run_id) < kill_at and proc.poll() is None \
                and time.monotonic() - t0 < 600:
            time.sleep(0.02)
        killed_mid_run = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rows_at_kill = stored_calls(home, run_id)

        resumed_proc = cli(["run", "--resume", run_id, "--json"], env)
        out, err = resumed_proc.communicate(timeout=600)
        if resumed_proc.returncode != 0:
            return {"identical": False, "error": f"resumed run failed: {err[-500:]}"}
        resumed = json.loads(out)
        return {"identical": killed_mid_run and resumed["answer"]["text"] == clean["answer"]["text"]
                and resumed["answer"]["answer"] == clean["answer"]["answer"],
                "killed_mid_run": killed_mid_run, "kill_after_stored_samples": rows_at_kill,
                "stored_samples_of_a_full_run": total_rows,
                "calls": resumed["usage"]["total"]["calls"],
                "calls_from_store": resumed["usage"]["total"]["cached_calls"],
                "answer": clean["answer"]["answer"]}


def agreement(a: dict, b: dict) -> float:
    keys = list(a["runs"])
    same = sum(1 for k in keys if a["runs"][k]["answer"] is not None
               and a["runs"][k]["answer"] == b["runs"][k]["answer"])
    return same / len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 problems instead of 10")
    parser.add_argument("--problems", type=int, help="override the number of problems")
    parser.add_argument("--client-timeout", type=float, default=2.0, metavar="S")
    parser.add_argument("--fixed-timeout", action="store_true",
                        help="use --client-timeout even where warm-up answers take longer")
    parser.add_argument("--concurrency", type=int, default=2, metavar="N",
                        help="calls in flight per role (keeps answers under the client timeout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # a plain kill must still stop the server subprocess (the `with` block below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    count = args.problems or (5 if args.quick else 10)
    problems = load_problems(count)
    t_start = time.monotonic()
    log = Path(tempfile.gettempdir()) / f"reasonloom-faults-server-{os.getpid()}.log"
    with VLLMServer(log, start_timeout_s=1200) as server:
        print(f"server up after {time.monotonic() - t_start:.0f} s; {count} problems",
              flush=True)
        timeout = calibrate_timeout(server, args.client_timeout, problems[0])
        if args.fixed_timeout:
            timeout.update(effective_s=args.client_timeout, raised=False)
        print(f"client timeout {timeout['effective_s']} s (warm-up latencies "
              f"{timeout['warmup_latencies_s']} s)", flush=True)
        arms = {}
        for label, rate, seed in (("0pct", 0.0, args.seed), ("0pct_again", 0.0, args.seed),
                                  ("10pct", 0.10, args.seed + 1),
                                  ("20pct", 0.20, args.seed + 2)):
            arms[label] = arm(server, problems, rate, seed, timeout["effective_s"],
                              args.concurrency)
            a = arms[label]
            print(f"{label}: {a['wall_s']:.0f} s, {a['calls_sent']} requests, "
                  f"{a['faults_injected']} faults, {a['failed_runs']} failed runs", flush=True)
        resume = resume_cycle(server, problems[0], args.seed)
    clean = arms["0pct"]
    checks = {label: ledger_check(a, clean) for label, a in arms.items()}
    rows = [(label, f"{a['rate']:.0%}", a["calls_sent"], a["faults_injected"],
             a["failed_attempts"], a["timeouts"], a["failed_runs"],
             f"{agreement(a, clean):.2f}", checks[label]["ok"], f"{a['wall_s']:.0f}")
            for label, a in arms.items()]
    print_table(rows, ("arm", "faults", "requests", "injected", "failed", "timeouts",
                       "failed runs", "same answers", "ledger ok", "wall s"))
    print(f"resume after kill -9: {resume}")
    result = {
        "benchmark": "faults", "quick": args.quick, "machine": machine(),
        "python": python_version(), "model": MODEL_NAME, "dtype": "float32",
        "client_timeout_s": timeout["effective_s"], "client_timeout": timeout,
        "concurrency_per_role": args.concurrency,
        "fault_mix": MIX, "workloads": {"evolve": EVOLVE, "v1": {**V1_SAMPLES,
                                                                 **V1_TOURNAMENT}},
        "problems": [p.question for p in problems],
        "reproducible_0pct": agreement(arms["0pct_again"], clean),
        "identical_answers_10pct": agreement(arms["10pct"], clean),
        "identical_answers_20pct": agreement(arms["20pct"], clean),
        "calls_sent": {label: a["calls_sent"] for label, a in arms.items()},
        "faults_injected": sum(a["faults_injected"] for a in arms.values()),
        "faults_by_arm": {label: a["injected_by_kind"] for label, a in arms.items()},
        "extra_calls_20pct": arms["20pct"]["calls_sent"] - clean["calls_sent"],
        "extra_calls_10pct": arms["10pct"]["calls_sent"] - clean["calls_sent"],
        "timeouts_by_arm": {label: a["timeouts"] for label, a in arms.items()},
        "failed_runs_by_arm": {label: a["failed_runs"] for label, a in arms.items()},
        "wall_s_by_arm": {label: round(a["wall_s"], 1) for label, a in arms.items()},
        "resume_identical": resume.get("identical", False),
        "resume": resume,
        "ledger_consistent": all(c["ok"] for c in checks.values()),
        "ledger_checks": checks,
        "answers": {label: {k: run["answer"] for k, run in a["runs"].items()}
                    for label, a in arms.items()},
        "total_wall_s": round(time.monotonic() - t_start, 1),
    }
    path = write_result("faults", result)
    print(f"wrote {path} ({result['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
