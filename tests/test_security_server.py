"""Issue 26, the server: careless and hostile HTTP clients against a real `reasonloom serve` on
loopback. Slow or silent connections are dropped while /health answers; every bad request is
an OpenAI-shaped 4xx; upstream addresses and texts never reach a client."""
from __future__ import annotations

import json
import os
import resource
import socket
import time
import threading
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn

from tests.support.serving import (ServeProcess, ThreadServer, free_port,
                                   write_scripted_recipes)

CACHED = """
seed: 0
models:
  strong: {backend: scripted, options: {responder: echo}}
nodes:
  answer: {type: generate, params: {n: 1, max_tokens: 16}}
output: answer
cache: read_write
"""
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = write_scripted_recipes(tmp_path_factory.mktemp("recipes"))
    (folder / "cached.yaml").write_text(CACHED)
    home = tmp_path_factory.mktemp("home")
    before = os.environ.get("REASONLOOM_HOME")
    os.environ["REASONLOOM_HOME"] = str(home)   # the served runs' files would land here
    try:
        proc = ServeProcess(folder, home / "serve.log", extra=(
            "--header-timeout", "2", "--body-timeout", "2", "--idle-timeout", "2"))
    finally:
        if before is None:
            os.environ.pop("REASONLOOM_HOME")
        else:
            os.environ["REASONLOOM_HOME"] = before
    yield proc, home
    proc.stop()


def _open(n: int, port: int, first_bytes: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first_bytes:
            s.sendall(first_bytes)
        socks.append(s)
    return socks


def test_idle_and_half_sent_connections_are_dropped_while_health_answers(server):
    proc, _ = server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    socks = _open(200, proc.port, b"") + _open(200, proc.port, b"POST /v1/chat/completions HTTP"
                                               b"/1.1\r\nHost: x\r\nContent-Le")
    try:
        assert httpx.get(f"{proc.base}/health", timeout=5).status_code == 200
        time.sleep(3.5)
        closed = 0
        for s in socks:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, socket.timeout):
                closed += 0
        assert closed == len(socks)
        assert httpx.get(f"{proc.base}/health", timeout=5).status_code == 200
    finally:
        for s in socks:
            s.close()


def test_a_body_that_never_arrives_gets_an_openai_shaped_400(server):
    proc, _ = server
    s = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
              b"\r\nContent-Length: 500\r\n\r\n{\"model\": ")
    reply = b""
    while not reply.endswith(b"}"):   # headers and body may come in separate segments
        piece = s.recv(65536)
        if not piece:
            break
        reply += piece
    reply = reply.decode()
    s.close()
    assert reply.startswith("HTTP/1.1 400")
    assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("body", [
    b'{"model": "echo", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": '
    + b"7" * 4300 + b"}",
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": '
    + b"7" * 5000 + b"}",
    b'{"model": "echo", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "seed": 1e999}',
    b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}',
    b"\xff\xfe\x00",
])
def test_hostile_bodies_get_openai_shaped_client_errors_never_500(server, body):
    proc, _ = server
    r = httpx.post(f"{proc.base}/v1/chat/completions", content=body, timeout=30,
                   headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"


def test_no_upstream_address_or_text_reaches_the_client(server):
    proc, _ = server
    client = openai.OpenAI(base_url=f"{proc.base}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="broken", messages=ASK)
    assert "127.0.0.1:9" not in str(err.value.body)
    with httpx.stream("POST", f"{proc.base}/v1/chat/completions", timeout=30,
                      json={"model": "broken", "messages": ASK, "stream": True}) as r:
        text = "".join(r.iter_text())
    assert ": {" in text and "127.0.0.1:9" not in text and "Connect" not in text
    assert "127.0.0.1:9" in proc.log.read_text()   # the operator still sees it


def test_served_runs_leave_no_run_files(server):
    proc, home = server
    client = openai.OpenAI(base_url=f"{proc.base}/v1", api_key="x", max_retries=0)
    for i in range(3):
        client.chat.completions.create(model="cached", messages=[{"role": "user",
                                                                  "content": f"q{i}"}])
    runs = home / "runs"
    assert not runs.exists() or not list(runs.iterdir())


class _SlowEngine:
    """Stands in for a vLLM backend's `engine()`: what the server starts before it is ready."""

    def __init__(self, backend, delay_s: float):
        self.inner, self.delay_s, self.started = backend, delay_s, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def engine(self):
        import asyncio

        await asyncio.sleep(self.delay_s)
        self.started = True


def test_health_and_models_report_ready_only_once_engines_are_up(tmp_path: Path):
    from reasonloom.serve.app import create_app
    from reasonloom.serve.catalog import Catalog

    catalog = Catalog.from_dir(write_scripted_recipes(tmp_path / "recipes"))
    role = catalog.recipes["echo"].roles["strong"]
    slow = _SlowEngine(role.backend, 3.0)
    object.__setattr__(role, "backend", slow)
    server = ThreadServer.__new__(ThreadServer)   # its start waits for /health: not here
    server.port = free_port()
    server.base = f"http://127.0.0.1:{server.port}"
    server.server = uvicorn.Server(uvicorn.Config(create_app(catalog), host="127.0.0.1",
                                                  port=server.port, log_level="warning"))
    server.loop = None
    server.thread = threading.Thread(target=server._run, daemon=True)
    server.thread.start()
    try:
        deadline = time.monotonic() + 10
        codes = []
        while time.monotonic() < deadline:
            try:
                codes.append((httpx.get(f"{server.base}/health", timeout=2).status_code,
                              httpx.get(f"{server.base}/v1/models", timeout=2).status_code,
                              slow.started))
            except httpx.HTTPError:
                pass
            if codes and codes[-1][0] == 200:
                break
            time.sleep(0.2)
        assert codes[0][:2] == (503, 503) and not codes[0][2]
        assert codes[-1] == (200, 200, True)
    finally:
        server.stop()
