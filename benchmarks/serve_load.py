"""Load test of `reasonloom serve`: N concurrent streaming clients (the official openai
AsyncOpenAI) against a server started with --max-running >= N, serving a recipe on the
`scripted` backend (no model: what is measured is the server).

Each client asks its own question; the scripted `echo` responder repeats it inside the answer,
so a stream whose text or chunk ids are not its own is counted as interleaved. Each answer
chunk carries the server's event time (`x_reasonloom_timestamps`), so "added latency per chunk"
= when the client parsed the chunk - when the recipe produced the delta (one machine, one clock):
queueing, SSE encoding, the socket and the client's own parsing.

    python benchmarks/serve_load.py --quick      # 100 and 1,000 clients, < 3 min
    python benchmarks/serve_load.py              # 100 .. 2,000 clients

Every count runs with the openai client; the largest runs again with a bare-socket client
that only splits lines and calls json.loads, which shows how much of the latency is the
server's and how much one Python process parsing every chunk with the openai client adds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

RECIPE = """
description: scripted echo for the load test
seed: 0
models:
  strong:
    backend: scripted
    options: {{responder: echo, chunk_chars: {chunk_chars}, chunk_delay_s: {chunk_delay_s}}}
    price_in_per_m: 1.0
    price_out_per_m: 2.0
    concurrency: {concurrency}
nodes:
  answer:
    type: generate
    params: {{n: 1, stream_answer: true, max_tokens: 64}}
output: answer
"""


def raise_open_files(want: int) -> int:
    """Each client holds a socket on both ends: 2 descriptors per client in one machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, want)) if hard != resource.RLIM_INFINITY else max(soft, want)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path, max_running: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "reasonloom.cli.main", "serve", "--recipes", str(folder),
           "--port", str(port), "--max-running", str(max_running), "--no-access-log",
           "--log-level", "warning"]
    log = open(folder / "serve.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {(folder / 'serve.log').read_text()[-500:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not start within 60 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to tell server from client cost."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def is_own(question: str, text: str) -> bool:
    """The echo responder's answer to THIS question, whole: no chunk missing or foreign."""
    return re.fullmatch(rf"You said: {re.escape(question)} The answer is \d\.", text) is not None


async def one_client(client, i: int, start: asyncio.Event, state: dict) -> dict:
    question = f"client {i} asks question {i * 7919 % 10007}"
    await start.wait()
    t0 = time.time()
    ids, pieces, latencies, first = set(), [], [], None
    finished = False
    try:
        stream = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": question}], stream=True,
            extra_body={"x_reasonloom_timestamps": True})
        state["open"] += 1
        state["peak"] = max(state["peak"], state["open"])
        try:
            async for chunk in stream:
                now = time.time()
                ids.add(chunk.id)
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or now - t0
                    pieces.append(chunk.choices[0].delta.content)
                    stamp = (chunk.model_extra or {}).get("x_reasonloom", {}).get("t")
                    if stamp is not None:
                        latencies.append((now - stamp) * 1000)
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = True
        finally:
            state["open"] -= 1
    except Exception as exc:   # any failure of this stream counts it as dropped
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:160]}
    own = is_own(question, "".join(pieces))
    return {"ok": finished, "own": bool(own) and len(ids) == 1, "id": next(iter(ids), None),
            "latencies": latencies, "ttfb_s": first, "chunks": len(pieces),
            "wall_s": time.time() - t0, "error": None if finished else "no finish_reason"}


async def one_raw_client(port: int, i: int, start: asyncio.Event, state: dict) -> dict:
    """The same request over a bare socket, parsed with json.loads only: separates the
    server's added latency from the openai client's own parsing cost (one client process
    parses every chunk of every stream)."""
    question = f"client {i} asks question {i * 7919 % 10007}"
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": question}],
                       "stream": True, "x_reasonloom_timestamps": True}).encode()
    await start.wait()
    t0 = time.time()
    ids, pieces, latencies, first, finished = set(), [], [], None, False
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        state["open"] += 1
        state["peak"] = max(state["peak"], state["open"])
        try:   # HTTP/1.0: the body is the raw event stream, ended by the server's close
            writer.write(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/"
                         b"json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            while line := await reader.readline():
                if not line.startswith(b"data: {"):
                    continue
                now = time.time()
                chunk = json.loads(line[6:])
                ids.add(chunk.get("id"))
                choice = (chunk.get("choices") or [{}])[0]
                if choice.get("delta", {}).get("content"):
                    first = first or now - t0
                    pieces.append(choice["delta"]["content"])
                    latencies.append((now - chunk["x_reasonloom"]["t"]) * 1000)
                finished = finished or bool(choice.get("finish_reason"))
            writer.close()
        finally:
            state["open"] -= 1
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:160]}
    own = is_own(question, "".join(pieces))
    return {"ok": finished, "own": own and len(ids) == 1, "id": next(iter(ids), None),
            "latencies": latencies, "ttfb_s": first, "chunks": len(pieces),
            "wall_s": time.time() - t0, "error": None if finished else "no finish_reason"}


async def level(base: str, clients: int, kind: str) -> dict:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=clients + 16, max_keepalive_connections=clients + 16)
    http = openai.DefaultAsyncHttpxClient(limits=limits)
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="bench", max_retries=0,
                                http_client=http, timeout=300.0)
    start, state = asyncio.Event(), {"open": 0, "peak": 0}
    port = int(base.rsplit(":", 1)[1])
    tasks = [asyncio.ensure_future(one_client(client, i, start, state) if kind == "openai"
                                   else one_raw_client(port, i, start, state))
             for i in range(clients)]
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    start.set()   # every client sends at once
    results = await asyncio.gather(*tasks)
    wall = time.monotonic() - t0
    await client.close()
    done = [r for r in results if r["ok"]]
    ids = [r["id"] for r in done]
    interleaved = sum(1 for r in done if not r["own"]) + (len(ids) - len(set(ids)))
    latencies = [x for r in done for x in r["latencies"]]
    errors = sorted({r["error"] for r in results if r.get("error")})[:3]
    return {"client": kind, "clients": clients, "completed": len(done) - interleaved,
            "dropped": clients - len(done), "interleaved": interleaved,
            "peak_open_streams": state["peak"], "chunks": len(latencies),
            "p50_chunk_latency_ms": round(percentile(latencies, 50), 2),
            "p99_chunk_latency_ms": round(percentile(latencies, 99), 2),
            "p50_ttfb_ms": round(1000 * percentile([r["ttfb_s"] for r in done
                                                    if r["ttfb_s"]], 50), 1),
            "p99_stream_s": round(percentile([r["wall_s"] for r in done], 99), 2),
            "requests_per_s": round(len(done) / wall, 1), "wall_s": round(wall, 2),
            "errors": errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 clients")
    parser.add_argument("--clients", type=int, nargs="+", help="client counts to run")
    parser.add_argument("--chunk-chars", type=int, default=4)
    parser.add_argument("--chunk-delay-s", type=float, default=0.1,
                        help="seconds between the scripted backend's chunks")
    args = parser.parse_args()
    counts = args.clients or ([100, 1000] if args.quick else [100, 250, 500, 1000, 2000])
    top = max(counts)
    # every count with the official client, the largest again with the bare-socket client
    levels = [("openai", n) for n in counts] + [("raw", top)]
    limit = raise_open_files(4 * top + 256)
    try:
        import uvloop
        uvloop.install()   # the server runs on uvloop too (uvicorn picks it when installed)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "echo.yaml").write_text(RECIPE.format(
            chunk_chars=args.chunk_chars, chunk_delay_s=args.chunk_delay_s,
            concurrency=top + 16))
        proc, base = start_server(folder, max_running=top + 16)
        rows = []
        try:
            for kind, n in levels:
                server_cpu, client_cpu = cpu_seconds(proc.pid), time.process_time()
                rows.append(asyncio.run(level(base, n, kind)))
                rows[-1]["server_cpu_s"] = round(cpu_seconds(proc.pid) - server_cpu, 2)
                rows[-1]["client_cpu_s"] = round(time.process_time() - client_cpu, 2)
                print(f"  {n} {kind} clients: done in {rows[-1]['wall_s']} s", file=sys.stderr)
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(20)
    header = ("client", "clients", "completed", "dropped", "interleaved", "peak open", "p50 ms/chunk",
              "p99 ms/chunk", "p50 ttfb ms", "p99 stream s", "req/s", "server cpu s",
              "client cpu s")
    keys = ("client", "clients", "completed", "dropped", "interleaved", "peak_open_streams",
            "p50_chunk_latency_ms", "p99_chunk_latency_ms", "p50_ttfb_ms", "p99_stream_s",
            "requests_per_s", "server_cpu_s", "client_cpu_s")
    table = [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *table)]
    for line in [header, ["-" * w for w in widths], *table]:
        print("  ".join(x.rjust(w) for x, w in zip(line, widths)))
    for r in rows:
        if r["errors"]:
            print(f"{r['clients']} clients, errors: {r['errors']}")
    target = next(r for r in rows if r["clients"] == top and r["client"] == "openai")
    raw = next(r for r in rows if r["client"] == "raw")
    payload = {"clients": target["clients"], "completed": target["completed"],
               "dropped": target["dropped"], "interleaved": target["interleaved"],
               "p50_chunk_latency_ms": target["p50_chunk_latency_ms"],
               "p99_chunk_latency_ms": target["p99_chunk_latency_ms"],
               "requests_per_s": target["requests_per_s"],
               "raw_client_p50_chunk_latency_ms": raw["p50_chunk_latency_ms"],
               "raw_client_p99_chunk_latency_ms": raw["p99_chunk_latency_ms"],
               "raw_client_dropped": raw["dropped"], "raw_client_interleaved": raw["interleaved"],
               "load_average_1m": os.getloadavg()[0], "levels": rows,
               "setup": {"recipe": "generate + scripted echo", "chunk_chars": args.chunk_chars,
                         "chunk_delay_s": args.chunk_delay_s, "max_running": top + 16,
                         "open_files_limit": limit, "client": "openai.AsyncOpenAI, one process",
                         "machine": f"{platform.machine()} {os.cpu_count()} cores",
                         "python": sys.version.split()[0], "quick": args.quick,
                         "note": "server and clients share the machine's cores"}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS / 'serve_load.json'}")
    ok = all(r["dropped"] == 0 and r["interleaved"] == 0 for r in rows)
    print(f"target ({top} concurrent streams, none dropped or interleaved): "
          f"{'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
