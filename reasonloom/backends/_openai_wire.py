"""The OpenAI wire format shared by OpenAIBackend and LiteLLMBackend: reading response objects
(SDK objects or plain dicts), and turning HTTP/SDK/transport errors into the typed errors of
backends/errors.py that the orchestrator's retry policy keys on."""
from __future__ import annotations

import asyncio
import email.utils
import re
import time
from typing import Any, Mapping, Sequence

from reasonloom.backends.errors import (BackendError, BadRequest, ContextTooLong, RateLimited,
                                        ServerError, Timeout, Unreachable)
from reasonloom.types import Message

_CONTEXT = re.compile(r"context length|context window|max_model_len|maximum context|"
                      r"reduce the length|too many tokens|prompt is too long", re.I)
UNSUPPORTED = re.compile(r"unrecognized|unknown (field|param|argument)|not supported|"
                         r"unsupported|extra (inputs|fields)|not permitted", re.I)


def field_of(obj: Any, name: str, default: Any = None) -> Any:
    """A field of an SDK object or of a plain dict (vLLM extras arrive as dicts)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return default if value is None else value


_SERVER_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"')
_WRAPPERS = re.compile(r"^(Error code: \d+ - |(litellm\.)?\w+Error: |\w+Exception - )+")


def one_line(text: object, limit: int = 300) -> str:
    """An error's text as one short line: the server's own `message` where the SDK or litellm
    wrapped it in prefixes and JSON."""
    text = " ".join(str(text).split())
    if found := _SERVER_MESSAGE.search(text):
        text = found.group(1).encode().decode("unicode_escape", errors="replace")
    text = _WRAPPERS.sub("", text)
    return text if len(text) <= limit else text[:limit] + "..."


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms`, or `retry-after` as seconds or as
    an HTTP date."""
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def status_error(status: int, message: str, headers: Mapping[str, str] | None, *, url: str,
                 model: str, what: str) -> BackendError:
    """An HTTP error status -> the typed error the orchestrator's retry policy keys on."""
    message = one_line(message)
    if status == 429:
        return RateLimited(f"{url}: rate limited on {what}: {message}", retry_after(headers))
    if status in (401, 403):
        return BadRequest(f"{url} refused the API key ({status}) on {what}: {message}")
    if status == 404:
        if "model" in message.lower():
            return BadRequest(f"unknown model {model!r} at {url} ({message})")
        return BadRequest(f"{url}: no such endpoint ({what} answered 404)")
    if status == 408:
        return Timeout(f"{url}: {what} timed out on the server ({message})")
    if status >= 500:
        return ServerError(f"{url}: server error {status} on {what}: {message}")
    if _CONTEXT.search(message):
        return ContextTooLong(f"{model} at {url}: {message}")
    return BadRequest(f"{url}: {what} rejected ({status}): {message}")


def map_error(exc: BaseException, *, url: str, model: str, what: str) -> BackendError | None:
    """SDK/transport exception -> typed error; None for anything that is not a backend fault
    (a programming error must surface as itself)."""
    import httpx
    import openai

    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, asyncio.TimeoutError)):
        return Timeout(f"{url}: no answer to {what} within the timeout")
    if isinstance(exc, openai.APIStatusError):
        # litellm keeps the server's headers aside; its `response` is a stand-in without them.
        headers = getattr(exc, "litellm_response_headers", None) or exc.response.headers
        return status_error(exc.status_code, exc.message, headers, url=url, model=model,
                            what=what)
    if isinstance(exc, (openai.APIConnectionError, httpx.TransportError, OSError)):
        cause = exc.__cause__ or exc
        if connect_failed(cause):
            return Unreachable(f"cannot reach {url}: {what} could not connect ({one_line(cause)})")
        return ServerError(f"{url}: connection dropped during {what} ({one_line(cause)})")
    if isinstance(exc, openai.APIError):   # e.g. an error event inside a stream
        return ServerError(f"{url}: {what} failed: {one_line(exc)}")
    return None


_NO_CONNECTION = re.compile(r"cannot connect to host|connection refused|connect call failed|"
                            r"all connection attempts failed|name or service not known|"
                            r"nodename nor servname", re.I)


def connect_failed(exc: BaseException) -> bool:
    """True when the server was never reached (as opposed to a connection dropped mid-answer)."""
    import socket

    import httpx

    return (isinstance(exc, (httpx.ConnectError, ConnectionRefusedError, socket.gaierror))
            or type(exc).__name__.startswith("ClientConnector")   # aiohttp, under litellm
            or bool(_NO_CONNECTION.search(str(exc))))


def ranked_top(position: Mapping[str, Any] | None, k: int) -> tuple[float, ...]:
    """The top-k log-probs of one vLLM prompt position ({token_id: {logprob, rank}})."""
    if not position or k <= 0:
        return ()
    ranked = sorted((e for e in position.values() if e.get("rank") and e["rank"] <= k),
                    key=lambda e: e["rank"])
    return tuple(e["logprob"] for e in ranked[:k])


def split_tokens(total: int, known: list[int | None], texts: list[str]) -> list[int]:
    """Per-sample completion tokens. The API reports one total for n samples: use a sample's
    own count where the server gave it, else share the rest by text length, summing exactly to
    the total (largest remainder), so the ledger's sum is the server's figure."""
    if all(k is not None for k in known):
        return [int(k) for k in known]   # type: ignore[arg-type]
    rest = max(0, total - sum(k or 0 for k in known))
    open_ = [i for i, k in enumerate(known) if k is None]
    weights = [max(1, len(texts[i])) for i in open_]
    shares = [rest * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    for j in sorted(range(len(open_)), key=lambda j: counts[j] - shares[j])[:rest - sum(counts)]:
        counts[j] += 1
    out = [int(k) if k is not None else 0 for k in known]
    for i, c in zip(open_, counts):
        out[i] = c
    return out


def chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


async def close_stream(stream: Any) -> None:
    """Release a stream's connection whether the SDK spells it `close` or `aclose`."""
    for name in ("aclose", "close"):
        closer = getattr(stream, name, None)
        if closer is not None:
            try:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                pass
            return
