"""Issue 26's attacks, counted: hostile code against the sandbox, bad inputs against the CLI,
recipes that try to steal keys, hostile and idle clients against `reasonloom serve`, and two
resumes of one killed run. Everything runs on this machine; network only on 127.0.0.1.

    python benchmarks/hostile.py            # writes benchmarks/results/hostile.json

Targets: 0 escapes, 0 forged verdicts, 0 leaked secrets, 0 tracebacks; /health answers
while 1,000 idle or half-sent connections are open; no call sent twice by two resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, print_table, python_version, write_result  # noqa: E402
from benchmarks.hostile_code import (ATTACKS, DISARM, FORGERIES, try_attack,  # noqa: E402
                                     try_forgery)
from benchmarks.hostile_inputs import SCRIPTED, SECRET, all_cases, run_case  # noqa: E402
from tests.support.key_catcher import KeyCatcher  # noqa: E402
from tests.support.serving import ServeProcess, write_scripted_recipes  # noqa: E402


def sandbox_area() -> list[dict]:
    from reasonloom.verifiers.sandbox import SandboxLimits

    limits = SandboxLimits(cpu_s=2, wall_s=10, memory_mb=256)
    rows = []
    for attack in ATTACKS:
        for armed in (False, True):   # guard rail switched off first (the default), or left on
            outcome = _armed(attack, limits) if armed else try_attack(attack, limits)
            rows.append({"name": f"{attack.name}{'+guard' if armed else ''}",
                         "escaped": outcome["escaped"], "status": outcome["status"],
                         "evidence": outcome["evidence"]})
    for name in FORGERIES:
        outcome = try_forgery(name, limits)
        rows.append({"name": f"forge:{name}", "forged": outcome["forged"],
                     "status": outcome["status"], "escaped": False})
    return rows


def _armed(attack, limits) -> dict:
    """The same attack without switching the guard rail off first."""
    import benchmarks.hostile_code as code

    saved = code.DISARM
    code.DISARM = ""
    try:
        return try_attack(attack, limits)
    finally:
        code.DISARM = saved


def control_arm() -> dict:
    """Validity check of the escape detector: with isolation='none' a write must be seen."""
    from reasonloom.verifiers.sandbox import SandboxLimits

    write = next(a for a in ATTACKS if a.name == "write_host_tmp")
    outcome = try_attack(write, SandboxLimits(cpu_s=2, wall_s=10, isolation="none"))
    return {"attack": write.name, "isolation": "none", "escape_detected": outcome["escaped"]}


def input_area(work: Path) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / "scripted.yaml"
    recipe.write_text(SCRIPTED)
    return [run_case(case, work / f"case{i}", recipe) for i, case in enumerate(all_cases())]


def key_routes(work: Path) -> list[dict]:
    """Recipes that would send a key to a loopback catcher they were not given it for."""
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASONLOOM_")}
    env.update(OPENAI_API_KEY=SECRET, REASONLOOM_HOME=str(work / "home"))
    for name, role in {
        "implicit_openai_key": "{backend: openai, model: m, base_url: '%s'}",
        "implicit_litellm_key": "{backend: litellm, model: openai/m, base_url: '%s'}",
        "implicit_key_replicas": "{backend: openai, model: m, endpoints: [{base_url: '%s'}]}",
    }.items():
        with KeyCatcher() as catcher:
            path = work / f"{name}.yaml"
            path.write_text(f"models: {{s: {role % catcher.url}}}\n"
                            "nodes: {a: {type: generate, params: {max_tokens: 4}}}\n")
            proc = subprocess.run([sys.executable, "-m", "reasonloom.cli.main", "run", str(path),
                                   "--input", "2+2?"], env=env, capture_output=True, text=True,
                                  timeout=180, cwd=ROOT)
            rows.append({"area": "secrets", "name": name, "requests": len(catcher.headers),
                         "leaked": catcher.saw(SECRET) or SECRET in proc.stdout + proc.stderr,
                         "traceback": "Traceback" in proc.stderr, "ok": proc.returncode == 0})
    return rows


BODIES = {f"nesting_{d}": b'{"model": "echo", "messages": ' + b"[" * d + b"]" * d + b"}"
          for d in (1000, 10_000, 100_000, 400_000)}
BODIES.update({f"max_tokens_{n}_digits": b'{"model": "echo", "messages": [{"role": "user", '
               b'"content": "hi"}], "max_tokens": ' + b"7" * n + b"}" for n in (40, 4300, 5000,
                                                                            200_000)})
BODIES.update({
    "surrogate_content": b'{"model": "echo", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "surrogate_model": b'{"model": "\\udfff", "messages": [{"role": "user", "content": "x"}]}',
    "surrogate_key": b'{"model": "echo", "\\ud800": 1, "messages": [{"role": "user", '
                     b'"content": "x"}]}',
    "invalid_utf8": b'{"model": "echo", "messages": [{"role": "user", "content": "\xff"}]}',
    "seed_inf": b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "seed": 1e999}',
    "temperature_nan": b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], '
                       b'"temperature": NaN}',
    "content_part_int": b'{"model": "echo", "messages": [{"role": "user", "content": [{"type": '
                        b'"text", "text": 5}]}]}',
    "messages_dict": b'{"model": "echo", "messages": {"role": "user"}}',
    "budget_huge": b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], '
                   b'"x_reasonloom_budget": {"tokens": ' + b"9" * 4000 + b"}}",
    "not_object": b"[]", "empty": b"", "garbage": os.urandom(64),
    "over_limit": b'{"model": "echo", "messages": [{"role": "user", "content": "'
                  + b"x" * (2 << 20) + b'"}]}',
    "unknown_model": b'{"model": "../../etc/passwd", "messages": [{"role": "user", '
                     b'"content": "x"}]}',
    "tool_role": b'{"model": "echo", "messages": [{"role": "tool", "content": "x"}]}',
})


def server_area(work: Path) -> tuple[list[dict], dict]:
    work.mkdir(parents=True, exist_ok=True)
    folder = write_scripted_recipes(work / "recipes")
    (folder / "leaky.yaml").write_text(
        "models: {s: {backend: openai, model: m, base_url: 'http://127.0.0.1:9/v1', "
        "api_key_env: UPSTREAM_API_KEY, retry: {max_attempts: 1}}}\n"
        "nodes: {a: {type: generate, params: {max_tokens: 4, stream_answer: true}}}\n")
    os.environ["UPSTREAM_API_KEY"] = SECRET
    try:
        server = ServeProcess(folder, work / "serve.log")
    finally:
        os.environ.pop("UPSTREAM_API_KEY")
    rows = []
    try:
        for name, body in BODIES.items():
            r = httpx.post(f"{server.base}/v1/chat/completions", content=body, timeout=60,
                           headers={"content-type": "application/json"})
            shaped = _openai_error(r)
            rows.append({"area": "server", "name": name, "status": r.status_code,
                         # a valid request (a huge budget is only tightened) may run: 200
                         "ok": r.status_code == 200 or (400 <= r.status_code < 500 and shaped),
                         "traceback": r.status_code >= 500 or "Traceback" in r.text,
                         "leaked": SECRET in r.text})
        for model in ("broken", "leaky"):
            for stream in (False, True):
                r = httpx.post(f"{server.base}/v1/chat/completions", timeout=60, json={
                    "model": model, "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}]})
                upstream = "127.0.0.1:9" in r.text or "onnect" in r.text
                kind = "stream" if stream else "json"
                rows.append({"area": "server", "name": f"upstream_{model}_{kind}",
                             "status": r.status_code, "ok": not upstream,
                             "traceback": "Traceback" in r.text, "leaked": SECRET in r.text,
                             "upstream_text_leaked": upstream})
        idle = idle_connections(server)
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    idle["server_log_tracebacks"] = log.count("Traceback")
    idle["server_log_secret"] = SECRET in log
    return rows, idle


def _openai_error(r: httpx.Response) -> bool:
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and bool(error.get("message")) and "type" in error


def idle_connections(server: ServeProcess, count: int = 1000) -> dict:
    """`count` connections, half silent and half with half a request, then /health."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * count)), hard))
    socks = []
    t0 = time.monotonic()
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if i % 2:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        socks.append(s)
    health = []
    for _ in range(5):
        try:
            health.append(httpx.get(f"{server.base}/health", timeout=5).status_code)
        except httpx.HTTPError as exc:
            health.append(type(exc).__name__)
        time.sleep(0.5)
    time.sleep(max(0.0, 12 - (time.monotonic() - t0)))   # past the 10 s header deadline
    dropped = 0
    for s in socks:
        s.settimeout(3)
        try:
            dropped += s.recv(1) == b""
        except ConnectionResetError:
            dropped += 1
        except OSError:
            pass
        s.close()
    after = httpx.get(f"{server.base}/health", timeout=5).status_code
    return {"connections": count, "health_while_open": health,
            "health_ok_while_open": all(h == 200 for h in health),
            "dropped_by_server": dropped, "health_after": after}


class Upstream:
    """A slow loopback OpenAI-shaped server that counts every request body by phase."""

    def __init__(self, delay_s: float = 0.5):
        self.bodies: list[tuple[str, bytes]] = []
        self.phase = "first"
        up = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                up.bodies.append((up.phase, body))
                time.sleep(delay_s)
                data = json.dumps({"id": "c", "object": "chat.completion", "created": 0,
                                   "model": "m", "choices": [{"index": 0, "finish_reason":
                                                              "stop", "message": {
                                                                  "role": "assistant",
                                                                  "content": "4"}}],
                                   "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                                             "total_tokens": 4}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except BrokenPipeError:   # the run we killed on purpose
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def concurrent_resumes(work: Path) -> dict:
    """Kill a run after a few calls, then resume it twice at once: no call may go out twice."""
    work.mkdir(parents=True, exist_ok=True)
    up = Upstream()
    recipe = work / "resume.yaml"
    recipe.write_text(f"seed: 0\nmodels: {{s: {{backend: openai, model: m, base_url: '{up.url}',"
                      " options: {n: false}, concurrency: 1}}\nnodes:\n"
                      "  samples: {type: best_of_n, params: {n: 8, max_tokens: 4}}\n"
                      "  vote: {type: majority, inputs: {candidates: samples.candidates}}\n"
                      "output: vote\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASONLOOM_")}
    env["REASONLOOM_HOME"] = str(work / "home")
    cmd = [sys.executable, "-m", "reasonloom.cli.main", "run"]
    first = subprocess.Popen([*cmd, str(recipe), "--input", "2+2?"], env=env, cwd=ROOT,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    run_id = first.stderr.readline().split()[1]
    deadline = time.monotonic() + 60
    while len(up.bodies) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    up.phase = "resume"
    resumes = [subprocess.Popen([*cmd, "--resume", run_id], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in resumes]
    again = Counter(body for phase, body in up.bodies if phase == "resume")
    return {"calls_before_kill": sum(p == "first" for p, _ in up.bodies),
            "calls_by_resumes": sum(again.values()),
            "calls_sent_twice": sum(n - 1 for n in again.values() if n > 1),
            "resume_exit_codes": sorted(p.returncode for p in resumes),
            "refused_lines": [e.strip().splitlines()[-1] for _, e in outs if "in progress" in e],
            "tracebacks": sum("Traceback" in e for _, e in outs)}


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="reasonloom-hostile-") as tmp:
        work = Path(tmp)
        sandbox = sandbox_area()
        control = control_arm()
        inputs = input_area(work / "inputs") + key_routes(work / "keys")
        server, idle = server_area(work / "server")
        resumes = concurrent_resumes(work / "resume")
    by_area: dict[str, list[dict]] = {"sandbox": sandbox}
    for row in inputs + server:
        by_area.setdefault(row["area"], []).append(row)
    summary = {area: {"attempts": len(rows), "handled": sum(bool(r.get("ok", True)) and
                                                            not r.get("escaped") and
                                                            not r.get("forged") for r in rows)}
               for area, rows in by_area.items()}
    everything = [r for rows in by_area.values() for r in rows]
    result = {
        "benchmark": "hostile", "machine": machine(), "python": python_version(),
        "wall_s": round(time.monotonic() - t0, 1),
        "attempts_total": len(everything) + 1 + 1,   # + the idle flood + the double resume
        "attempts_by_area": {a: s["attempts"] for a, s in summary.items()} | {
            "idle_connections": 1, "concurrent_resumes": 1},
        "handled_by_area": {a: s["handled"] for a, s in summary.items()},
        "escapes": sum(bool(r.get("escaped")) for r in sandbox),
        "forged_verdicts": sum(bool(r.get("forged")) for r in sandbox),
        "tracebacks": sum(bool(r.get("traceback")) for r in everything)
        + idle["server_log_tracebacks"] + resumes["tracebacks"],
        "leaked_secrets": sum(bool(r.get("leaked")) for r in everything)
        + idle["server_log_secret"],
        "not_handled": [f"{r['area']}:{r['name']}" for r in inputs + server if not r.get("ok")],
        "upstream_text_leaked": sum(bool(r.get("upstream_text_leaked")) for r in server),
        "idle_connections": idle, "concurrent_resumes": resumes, "control_arm": control,
        "failures": [r for r in everything if not r.get("ok", True) or r.get("escaped")
                     or r.get("forged")],
        "disarm_program": DISARM.strip().splitlines()[0:2],
    }
    path = write_result("hostile", result)
    print_table([(a, s["attempts"], s["handled"]) for a, s in summary.items()],
                ("area", "attempts", "handled"))
    print(json.dumps({k: result[k] for k in ("attempts_total", "escapes", "forged_verdicts",
                                             "tracebacks", "leaked_secrets")}))
    print(f"idle: {idle}\nresumes: {resumes}\nwrote {path}")


if __name__ == "__main__":
    main()
