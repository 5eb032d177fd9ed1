"""A real HTTP proxy that injects faults between a client and an OpenAI-compatible server.

It listens on a free loopback port (plain asyncio streams, on its own thread and event loop,
so it serves clients on any loop) and forwards each request to the upstream server. For
requests to `fault_paths` it draws, with seeded probabilities, one fault per request:

- `429`: answers 429 Too Many Requests with a `Retry-After` header, never reaching upstream;
- `500` / `503`: answers 500 Internal Server Error / 503 Service Unavailable, never reaching
  upstream;
- `hang`: reads the request and never answers (holds the connection until the client gives up,
  or `hang_s`), never reaching upstream: only a client timeout gets the caller out;
- `cut`: forwards the request, then sends the client only part of the answer and closes the
  connection (a stream cut midway; a plain answer cut short of its Content-Length);
- `stall`: like `cut`, but then holds the connection open without a byte more (a stream that
  stops midway and stays silent: the client's read timeout must fire).

The draw for a request depends only on (seed, path, body, how often that body was seen), not
on arrival order, so a concurrent batch meets the same faults on every run. `fault_attempts`
limits faults to the first k sightings of a body (1: every request fails once, then passes).
Every request is logged in `arrivals` (monotonic time, path, body digest, repeat, fault), so a
test can measure how long a client waited before retrying. More kinds plug in through
`FaultProxy.handlers`.

Example:
    >>> with FaultProxy("http://127.0.0.1:8000", {"429": 0.1, "500": 0.1, "cut": 0.1}) as proxy:
    ...     client = AsyncOpenAI(base_url=proxy.url + "/v1", max_retries=0)
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import urlsplit

HEAD_END = b"\r\n\r\n"


def free_port() -> int:
    """A loopback port nothing listens on (an unreachable server, or a port to start one on)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ProxiedRequest:
    method: str
    path: str
    head: list[tuple[str, str]]
    body: bytes
    rng: random.Random = field(default_factory=random.Random)
    reader: asyncio.StreamReader | None = None   # the client's side: `hang` waits on it


@dataclass(frozen=True)
class Arrival:
    """One request as the proxy saw it; `fault` is None where it passed through."""

    t: float            # time.monotonic() at arrival (after the body was read)
    path: str
    digest: str         # of method + path + body: the same logical request has one digest
    repeat: int         # how often this digest had been seen before
    fault: str | None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.head if k.lower() == name.lower()), None)


Handler = Callable[["FaultProxy", ProxiedRequest, asyncio.StreamWriter], Awaitable[None]]


def _head_bytes(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    # One exchange per connection: the client never reuses a connection we may cut.
    lines = [first_line] + [f"{k}: {v}" for k, v in headers if k.lower() != "connection"]
    return ("\r\n".join(lines + ["Connection: close"]) + "\r\n\r\n").encode("latin-1")


def _parse_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    first, *rest = raw[:-len(HEAD_END)].decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in rest if ":" in line]
    return first, headers   # type: ignore[return-value]


async def _answer(writer: asyncio.StreamWriter, status: str, body: bytes,
                  extra: list[tuple[str, str]] = ()) -> None:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               *extra]
    writer.write(_head_bytes(f"HTTP/1.1 {status}", headers) + body)
    await writer.drain()


async def fault_429(proxy: "FaultProxy", req: ProxiedRequest, writer: asyncio.StreamWriter) -> None:
    body = b'{"error": {"message": "rate limited by fault proxy", "code": 429}}'
    await _answer(writer, "429 Too Many Requests", body,
                  [("Retry-After", f"{proxy.retry_after:g}")])


async def fault_500(proxy: "FaultProxy", req: ProxiedRequest, writer: asyncio.StreamWriter) -> None:
    body = b'{"error": {"message": "internal error injected by fault proxy", "code": 500}}'
    await _answer(writer, "500 Internal Server Error", body)


async def fault_503(proxy: "FaultProxy", req: ProxiedRequest, writer: asyncio.StreamWriter) -> None:
    body = b'{"error": {"message": "service unavailable (fault proxy)", "code": 503}}'
    await _answer(writer, "503 Service Unavailable", body)


async def _hold(proxy: "FaultProxy", reader: asyncio.StreamReader) -> None:
    """Say nothing until the client closes the connection (its timeout) or `hang_s` passes."""
    try:
        await asyncio.wait_for(reader.read(), proxy.hang_s)
    except asyncio.TimeoutError:
        pass


async def fault_hang(proxy: "FaultProxy", req: ProxiedRequest, writer: asyncio.StreamWriter) -> None:
    await _hold(proxy, req.reader)


async def _send_part(proxy: "FaultProxy", req: ProxiedRequest,
                     writer: asyncio.StreamWriter) -> None:
    """Forward the whole answer from upstream, then send the client only a random 20-80 % of
    its body (always cut, however short the stream)."""
    status_line, headers, body = await proxy.fetch_upstream(req)
    keep = int(len(body) * req.rng.uniform(0.2, 0.8))
    writer.write(_head_bytes(status_line, headers) + body[:keep])
    await writer.drain()


async def fault_cut(proxy: "FaultProxy", req: ProxiedRequest, writer: asyncio.StreamWriter) -> None:
    """Part of the answer, then the connection closes."""
    await _send_part(proxy, req, writer)


async def fault_stall(proxy: "FaultProxy", req: ProxiedRequest,
                      writer: asyncio.StreamWriter) -> None:
    """Part of the answer, then silence on an open connection."""
    await _send_part(proxy, req, writer)
    await _hold(proxy, req.reader)


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """At shutdown, exchanges still open are cancelled; asyncio's stream callback would log
    each as an error."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


class FaultProxy:
    """`faults` maps a fault kind (a key of `handlers`) to its probability per request."""

    def __init__(self, upstream: str, faults: dict[str, float] | None = None, seed: int = 0,
                 retry_after: float = 0.05, hang_s: float = 60.0,
                 fault_attempts: int | None = None,
                 fault_paths: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions")):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults = dict(faults or {})
        self.seed = seed
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.fault_attempts = fault_attempts
        self.fault_paths = fault_paths
        self.handlers: dict[str, Handler] = {"429": fault_429, "500": fault_500,
                                             "503": fault_503, "hang": fault_hang,
                                             "cut": fault_cut, "stall": fault_stall}
        unknown = set(self.faults) - set(self.handlers)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)} "
                             f"(known: {sorted(self.handlers)})")
        if sum(self.faults.values()) > 1.0:
            raise ValueError("fault probabilities add up to more than 1")
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self.arrivals: list[Arrival] = []
        self.port = 0
        self._seen: Counter[str] = Counter()
        self._exchanges: set[asyncio.Task] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The proxy's root URL (append `/v1` for an OpenAI client)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults_injected(self) -> int:
        return sum(self.injected.values())

    def fault_path_requests(self) -> int:
        """Requests to the fault paths (those a client's ledger counts as attempts)."""
        with self._lock:
            return sum(1 for a in self.arrivals if a.path in self.fault_paths)

    def reset_counts(self) -> None:
        """Forget counts and arrivals (not the repeat counts that seed the draws)."""
        with self._lock:
            self.injected.clear()
            self.requests = 0
            self.arrivals.clear()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()
            self._loop.set_exception_handler(_quiet_cancellations)
            # Exchanges still open (a client that gave up mid-answer) end here, not after close.
            self._server.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:   # gather() of nothing would look for this thread's (unset) loop
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one exchange -------------------------------------------------------------------------
    def _draw(self, req: ProxiedRequest) -> str | None:
        """The fault for this request, from a generator seeded by its content and repeat count."""
        digest = hashlib.sha256(req.method.encode() + req.path.encode() + req.body).hexdigest()
        with self._lock:
            self.requests += 1
            repeat = self._seen[digest]
            self._seen[digest] += 1
        req.rng = random.Random(f"{self.seed}/{digest}/{repeat}")
        kind = None
        if (req.method == "POST" and req.path in self.fault_paths
                and (self.fault_attempts is None or repeat < self.fault_attempts)):
            u, edge = req.rng.random(), 0.0
            for name, p in self.faults.items():
                edge += p
                if u < edge:
                    kind = name
                    break
        with self._lock:
            self.arrivals.append(Arrival(time.monotonic(), req.path, digest[:16], repeat, kind))
        return kind

    async def fetch_upstream(self, req: ProxiedRequest) -> tuple[str, list[tuple[str, str]], bytes]:
        """The upstream's whole answer: status line, headers, raw body bytes (still chunked)."""
        reader, writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            writer.write(_head_bytes(f"{req.method} {req.path} HTTP/1.1", req.head) + req.body)
            await writer.drain()
            status_line, headers = _parse_head(await reader.readuntil(HEAD_END))
            return status_line, headers, await reader.read()   # upstream closes when done
        finally:
            writer.close()

    async def _relay(self, req: ProxiedRequest, writer: asyncio.StreamWriter) -> None:
        """No fault: stream the upstream's answer through as it arrives (keeps SSE timing)."""
        reader, up = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            up.write(_head_bytes(f"{req.method} {req.path} HTTP/1.1", req.head) + req.body)
            await up.drain()
            status_line, headers = _parse_head(await reader.readuntil(HEAD_END))
            writer.write(_head_bytes(status_line, headers))
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        finally:
            up.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio drops its reference to this task when the client hangs up (a client timeout)
        # while we still wait on upstream: keep one, or the task is collected mid-exchange.
        task = asyncio.current_task()
        self._exchanges.add(task)
        try:
            first, head = _parse_head(await reader.readuntil(HEAD_END))
            method, path, _ = first.split(" ", 2)
            length = int(next((v for k, v in head if k.lower() == "content-length"), "0"))
            req = ProxiedRequest(method, path, head, await reader.readexactly(length),
                                 reader=reader)
            kind = self._draw(req)
            if kind is None:
                await self._relay(req, writer)
            else:
                with self._lock:
                    self.injected[kind] += 1
                await self.handlers[kind](self, req, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass   # the client or upstream went away: nothing left to answer
        finally:
            writer.close()
            self._exchanges.discard(task)
