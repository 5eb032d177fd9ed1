"""`reasonloom serve`'s ASGI app: recipes as OpenAI-compatible chat models.

Example:
    >>> app = create_app(Catalog.from_dir("recipes"), api_key="secret", max_running=32,
    ...                  max_running_per_key=4)
    >>> uvicorn.run(app, port=8000)
    # then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
    #       .chat.completions.create(model="self_consistency", messages=[...], stream=True)
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import logging
import time
from typing import Any, AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reasonloom.serve.catalog import Catalog
from reasonloom.serve.protocol import ApiError, parse_request
from reasonloom.serve.runs import RunCounter, RunHandle, complete, stream_frames

log = logging.getLogger("reasonloom.serve")
MAX_BODY_BYTES = 1 << 20   # 1 MiB: chat turns, not documents


class _Guard:
    """Outermost ASGI layer: an unexpected error becomes a short OpenAI-shaped 500 and one log
    line, never a traceback (Starlette's own handler re-raises, and uvicorn prints it)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error("%s %s: %s: %s", scope.get("method"), scope.get("path"),
                      type(exc).__name__, str(exc)[:200])
            if not started:
                response = ApiError(500, "internal server error").response()
                await response(scope, receive, send)


def _key_id(token: str) -> str:
    """A short fingerprint of a bearer key: what the per-key limit counts by and what a log
    may show; the key itself is never kept, logged or sent back."""
    return "key-" + hashlib.sha256(token.encode()).hexdigest()[:8] if token else "anonymous"


def _authorized(request: Request, api_keys: Sequence[str]) -> str:
    """The caller's key fingerprint; 401 unless it sent one of `api_keys` (when any are set).
    Without keys the server is open, and clients are told apart by whatever key they send."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    if not api_keys:
        return _key_id(token)
    if not token:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'",
                       code="invalid_api_key")
    # every key is compared (no early exit), each in constant time
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in api_keys]
    if not any(matches):
        raise ApiError(401, "incorrect API key", code="invalid_api_key")
    return _key_id(token)


async def _read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body over the {limit}-byte limit",
                       code="request_too_large")
    body = bytearray()
    try:   # a client that sends its body a byte at a time (or never) loses its slot
        async with asyncio.timeout(timeout_s):
            async for piece in request.stream():
                body += piece
                if len(body) > limit:
                    raise ApiError(413, f"request body over the {limit}-byte limit",
                                   code="request_too_large")
    except TimeoutError:
        raise ApiError(400, f"request body not received within {timeout_s:g} s",
                       code="request_timeout") from None
    return bytes(body)


async def _start_engines(catalog: Catalog, state: Any) -> None:
    """Start every local engine the recipes use before reporting ready: the first request
    must not wait minutes for an engine that `/v1/models` already announced."""
    t0 = time.monotonic()
    started: set[int] = set()
    for served in catalog.recipes.values():
        for name in served.roles:
            backend = served.roles[name].backend
            starter = getattr(backend, "engine", None)
            if id(backend) in started or not inspect.iscoroutinefunction(starter):
                continue
            started.add(id(backend))
            log.info("starting the engine of %s (role %s)", served.name, name)
            try:
                await starter()
            except Exception as exc:   # the requests that need it will report it
                log.error("engine of %s (role %s) did not start: %s: %s", served.name, name,
                          type(exc).__name__, str(exc)[:200])
    state.ready = True
    log.info("ready: %d engines started in %.1f s", len(started), time.monotonic() - t0)


def create_app(catalog: Catalog, *, api_key: str | Sequence[str] | None = None,
               max_running: int = 64, max_running_per_key: int | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, body_timeout_s: float = 30.0) -> Any:
    """`api_key`: one key or several (each client its own); `max_running_per_key`: runs one
    key may have in progress at once (None: only the server-wide `max_running`)."""
    api_keys = (api_key,) if isinstance(api_key, str) else tuple(api_key or ())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.ensure_future(_start_engines(catalog, app.state))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    app = FastAPI(title="reasonloom", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    counter = RunCounter(max_running, max_running_per_key)
    started = int(time.time())
    app.state.catalog, app.state.runs, app.state.ready = catalog, counter, False

    def require_ready() -> None:
        if not app.state.ready:
            raise ApiError(503, "the recipes' engines are starting; retry shortly",
                           code="starting")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), code="not_found"
                        if exc.status_code == 404 else None).response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        require_ready()
        return {"status": "ok", "models": len(catalog.recipes), "running": counter.running}

    def model_card(name: str) -> dict[str, Any]:
        served = catalog.recipes[name]
        return {"id": name, "object": "model", "created": started, "owned_by": "reasonloom",
                "description": served.recipe.spec.description}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        _authorized(request, api_keys)
        require_ready()
        return {"object": "list", "data": [model_card(n) for n in sorted(catalog.recipes)]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        _authorized(request, api_keys)
        catalog.get(name)
        return model_card(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        key_id = _authorized(request, api_keys)
        req = parse_request(await _read_body(request, max_body_bytes, body_timeout_s))
        served = catalog.get(req.model)
        handle = RunHandle(served, req, counter, stream=bool(req.stream), key_id=key_id)
        if req.stream:
            return EventSourceResponse(stream_frames(handle), ping=15, sep="\n")
        body = await complete(handle, request.receive)
        if body is None:   # the client hung up; nobody reads this
            return Response(status_code=499)
        return JSONResponse(body)

    return _Guard(app)
