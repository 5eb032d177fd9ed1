"""The OpenAI chat-completions wire format, as far as `reasonloom serve` speaks it: the request
model, OpenAI-shaped errors, and the completion / chunk / usage objects.

A parameter a recipe cannot honour is rejected with a 400 that names it, never ignored: the
request model lists what is understood, `NEUTRAL` lists parameters accepted only at their
no-op value, and anything else is an "unsupported parameter".
"""
from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reasonloom.orchestrator.budget import BudgetSpec
from reasonloom.orchestrator.ledger import UsageReport
from reasonloom.orchestrator.types import Message, Problem, Usage

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                404: "invalid_request_error", 413: "invalid_request_error",
                429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error the client sees as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """What we understand. `x_reasonloom_*` fields are our extensions (send them with the
    openai client's `extra_body=`)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=2**31)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-2**63, le=2**64)
    n: int | None = Field(None, ge=1, le=2**31)
    user: str | None = None                     # metadata about the caller, not a parameter
    metadata: dict[str, Any] | None = None
    x_reasonloom_budget: BudgetSpec | None = None
    x_reasonloom_timestamps: bool = False       # stamp each answer chunk with its event time

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# Parameters accepted only at the value that changes nothing; any other value is a 400.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "stop": (None, [], ""), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []),
    "tool_choice": (None, "none", "auto"), "functions": (None, []),
    "function_call": (None, "none", "auto"), "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}), "parallel_tool_calls": (None, True, False),
    "store": (None, False), "service_tier": (None, "auto", "default"),
    "modalities": (None, ["text"]),
}


def parse_request(raw: bytes) -> ChatRequest:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    except ValueError as exc:   # an integer past Python's 4,300-digit conversion limit
        raise ApiError(400, f"the request body is not usable JSON: {str(exc)[:80]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:   # a lone surrogate (`"\ud800"`) is valid JSON but no text a model can take
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "the request holds invalid unicode (a lone surrogate)") from None
    except RecursionError:   # nesting under the parser's limit but over the encoder's
        raise ApiError(400, "the request body is nested too deeply") from None
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or None
        what = "is missing" if err["type"] == "missing" else err["msg"]
        raise ApiError(400, f"{where}: {what}" if where else what, param=where) from None
    for name, value in (req.model_extra or {}).items():
        if name not in NEUTRAL:
            raise ApiError(400, f"unsupported parameter: {name!r}", param=name,
                           code="unsupported_parameter")
        if value not in NEUTRAL[name]:
            raise ApiError(400, f"recipes cannot honour {name}={json.dumps(value)[:60]}",
                           param=name, code="unsupported_parameter")
    if req.n not in (None, 1):
        raise ApiError(400, "n must be 1: a recipe returns one answer per run", param="n",
                       code="unsupported_parameter")
    return req


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def to_problem(messages: list[ChatMessage], problem_id: str) -> Problem:
    """The conversation as it is, turn by turn (strategies see every message, not a flattened
    prompt). Only text content; the last message must be the user's."""
    out = []
    for i, m in enumerate(messages):
        if m.role not in _ROLES:
            raise ApiError(400, f"messages[{i}]: role {m.role!r} is not supported (system, "
                           f"developer, user, assistant)", param=f"messages.{i}.role")
        if m.model_extra and any(m.model_extra.get(k) for k in ("tool_calls", "function_call")):
            raise ApiError(400, f"messages[{i}]: tool calls are not supported",
                           param=f"messages.{i}")
        if isinstance(m.content, list):
            if any(p.type != "text" or p.text is None for p in m.content):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported",
                               param=f"messages.{i}.content")
            text = "\n".join(p.text or "" for p in m.content)
        else:
            text = m.content or ""
        out.append(Message(role=_ROLES[m.role], content=text))
    if out[-1].role != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    return Problem(id=problem_id, messages=tuple(out))


# -- responses -----------------------------------------------------------------------------------
def usage_json(report: UsageReport | None) -> dict[str, Any]:
    total = report.total if report is not None else Usage()
    return {"prompt_tokens": total.prompt_tokens, "completion_tokens": total.completion_tokens,
            "total_tokens": total.prompt_tokens + total.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": total.cached_prompt_tokens}}


def ledger_json(report: UsageReport | None) -> dict[str, Any]:
    """Our extension: the run's cost and where it went (what `reasonloom chat` shows)."""
    if report is None:
        return {}
    return {"cost_usd": report.total.cost_usd, "calls": report.total.calls,
            "by_model": {k: v.model_dump() for k, v in report.by_model.items()},
            "by_node": {k: v.model_dump() for k, v in report.by_node.items()}}


def completion_json(run_id: str, model: str, created: int, text: str, finish_reason: str,
                    report: UsageReport | None, extra: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"chatcmpl-{run_id}", "object": "chat.completion", "created": created,
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage_json(report),
            "x_reasonloom": {"run_id": run_id, **extra, **ledger_json(report)}}


class ChunkWriter:
    """Server-sent `chat.completion.chunk` frames of one run, pre-encoded (one JSON dump each)."""

    def __init__(self, run_id: str, model: str, created: int):
        self.head = {"id": f"chatcmpl-{run_id}", "object": "chat.completion.chunk",
                     "created": created, "model": model}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None,
              extra: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {**self.head, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if extra:
            body["x_reasonloom"] = extra
        return data_frame(body)

    def usage_chunk(self, report: UsageReport | None, extra: dict[str, Any]) -> bytes:
        return data_frame({**self.head, "choices": [], "usage": usage_json(report),
                           "x_reasonloom": {**extra, **ledger_json(report)}})


def data_frame(body: dict[str, Any] | str) -> bytes:
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return b"data: " + text.encode() + b"\n\n"


def comment_frame(body: dict[str, Any]) -> bytes:
    """A progress line standard SSE clients skip (`: {json}`) and `reasonloom chat` shows."""
    return b": " + json.dumps(body, separators=(",", ":"), default=str).encode() + b"\n\n"
