"""OpenAIBackend: the Backend seam on any OpenAI-compatible chat-completions server (OpenAI,
vLLM's `api_server`, and the like), through the openai SDK's `AsyncOpenAI`.

The SDK's own retries are off (`max_retries=0`): the orchestrator retries, so every attempt
reaches the ledger. SDK and transport errors become the typed errors of backends/errors.py.
vLLM extras (prompt log-probs, continuing a final assistant message, `/tokenize` and
`/detokenize`) are used where `capabilities` says the server has them; elsewhere those calls
raise CapabilityMissing.

Example:
    >>> backend = OpenAIBackend("SmolLM2-135M-Instruct", base_url="http://127.0.0.1:8000/v1")
    >>> gen = await backend.generate(GenerateRequest(messages=(...,), n=4, temperature=0.8))
"""
from __future__ import annotations

import asyncio
import os
import re
from collections import OrderedDict
from typing import Any, AsyncIterator, Mapping, Sequence

from reasonloom.backends.base import (Backend, Capabilities, Delta, Generation, GenerateRequest,
                                      Sample, TokenLogprob, confidence_of, logprob_k)
from reasonloom.backends._openai_wire import (UNSUPPORTED, chat, close_stream, field_of,
                                              map_error, one_line, ranked_top, split_tokens,
                                              status_error)
from reasonloom.backends.errors import (BackendError, BadRequest, CapabilityMissing,
                                        ContextTooLong, ServerError, StreamCut)
from reasonloom.backends.errors import MissingApiKey
from reasonloom.backends.vllm.backend import ScoredTokens
from reasonloom.types import Message

OPENAI_URL = "https://api.openai.com/v1"
# vLLM's request fields that continue the last assistant message instead of closing it.
CONTINUE_FINAL = {"continue_final_message": True, "add_generation_prompt": False}
_OPTIONS = {"timeout_s", "extra_body", "headers"} | set(Capabilities.model_fields)


class OpenAIBackend(Backend):
    """Options: `timeout_s` (per request, default 600), `extra_body` (fields sent with every
    request), `headers`, and any Capabilities field to override what the server is assumed to
    have (e.g. `n: false` for a server that rejects `n`; `context_length: 8192`)."""

    name = "openai"

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 **options: Any):
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ValueError(f"{self.name} backend: unknown options {unknown} "
                             f"(known: {', '.join(sorted(_OPTIONS))})")
        if not model:
            raise ValueError(f"{self.name} backend: `model` is required")
        self.model = model
        self.server_model = getattr(self, "server_model", model)   # the name the server knows
        self.self_hosted = base_url is not None
        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        self.api_key = self._resolve_api_key(api_key)
        self.timeout_s = float(options.pop("timeout_s", 600.0))
        self.extra_body = dict(options.pop("extra_body", None) or {})
        self.headers = dict(options.pop("headers", None) or {})
        self._overrides = dict(options)
        self._context_length: int | None = None
        self._probed = False
        self._clients: dict[int, Any] = {}
        self._prefix_ids: OrderedDict[tuple[Message, ...], list[int]] = OrderedDict()

    # -- configuration ------------------------------------------------------------------------
    def _resolve_api_key(self, api_key: str | None) -> str:
        if api_key:
            return api_key
        # OPENAI_API_KEY is OpenAI's key: it goes to OpenAI only, never to another host
        if not self.self_hosted and os.environ.get("OPENAI_API_KEY"):
            return os.environ["OPENAI_API_KEY"]
        if self.self_hosted:
            return "EMPTY"   # a local server started without --api-key ignores it
        raise MissingApiKey(f"{self.name} backend for {self.model!r} at {self.base_url}: "
                            f"environment variable OPENAI_API_KEY is not set")

    @property
    def served_by(self) -> str:
        return self.base_url

    def served_for(self, response: Any) -> str:
        """Which server answered `response` (a replica set reads it off the response)."""
        return self.served_by

    @property
    def server_root(self) -> str:
        """Where vLLM's non-OpenAI routes (/tokenize, /health) live."""
        return re.sub(r"/v1$", "", self.base_url)

    def default_capabilities(self) -> dict[str, Any]:
        """Without overrides: a self-hosted server is taken to be vLLM-like."""
        return {"n": True, "logprobs": True, "prompt_logprobs": self.self_hosted,
                "continue_final_message": self.self_hosted, "tokenize": self.self_hosted}

    @property
    def capabilities(self) -> Capabilities:
        caps = {**self.default_capabilities(), **self._overrides}
        if "context_length" not in caps:
            caps["context_length"] = self._probe_context_length()
        return Capabilities(**caps)

    def _probe_context_length(self) -> int | None:
        """The served context window from `/models` (vLLM's `max_model_len`), read once.
        `capabilities` is a synchronous property that strategies read before any call, so this
        one short look-up blocks; a server that does not answer leaves it unknown (None)."""
        if self._probed or not self.self_hosted:
            return self._context_length
        self._probed = True
        import httpx

        try:
            resp = httpx.get(f"{self.base_url}/models", timeout=2.0,
                             headers={"Authorization": f"Bearer {self.api_key}"})
            for entry in resp.json().get("data", []):
                if entry.get("id") == self.server_model:
                    size = entry.get("max_model_len") or entry.get("context_length")
                    self._context_length = int(size) if size else None
        except Exception:   # unknown is a valid answer: capabilities never fail
            self._context_length = None
        return self._context_length

    def has(self, capability: str) -> bool:
        """A capability without the context-length look-up (cheap enough for every call)."""
        return bool({**self.default_capabilities(), **self._overrides}.get(capability, False))

    def require(self, capability: str, what: str) -> None:
        if not self.has(capability):
            raise CapabilityMissing(f"{self.name} backend for {self.model!r} at {self.base_url} "
                                    f"cannot do {what} (capabilities.{capability} is false)")

    def fail(self, exc: BaseException, what: str) -> BackendError:
        mapped = map_error(exc, url=self.base_url, model=self.model, what=what)
        if mapped is None:
            raise exc
        return mapped

    # -- transport (LiteLLMBackend overrides these three) -------------------------------------
    @property
    def client(self) -> Any:
        """One AsyncOpenAI per event loop: pooled connections must not cross loops."""
        from openai import AsyncOpenAI

        loop = id(asyncio.get_running_loop())
        if loop not in self._clients:
            self._clients = {loop: AsyncOpenAI(base_url=self.base_url, api_key=self.api_key,
                                               max_retries=0, timeout=self.timeout_s,
                                               default_headers=self.headers or None)}
        return self._clients[loop]

    async def complete(self, body: dict[str, Any]) -> Any:
        try:
            return await self.client.chat.completions.create(**body)
        except Exception as exc:
            raise self.fail(exc, f"POST {self.base_url}/chat/completions") from None

    async def open_stream(self, body: dict[str, Any]) -> Any:
        try:
            return await self.client.chat.completions.create(**body)
        except Exception as exc:
            raise self.fail(exc, f"POST {self.base_url}/chat/completions (stream)") from None

    # -- requests -------------------------------------------------------------------------------
    def request_body(self, req: GenerateRequest, stream: bool = False) -> dict[str, Any]:
        messages = chat(req.messages)
        extra = dict(self.extra_body)
        if req.assistant_prefix:
            self.require("continue_final_message", "assistant_prefix (continuing an answer)")
            messages.append({"role": "assistant", "content": req.assistant_prefix})
            extra.update(CONTINUE_FINAL)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "n": req.n,
                                "temperature": req.temperature, "top_p": req.top_p,
                                "max_tokens": req.max_tokens}
        if req.n == 1:
            del body["n"]   # some servers reject the field itself
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = req.seed
        if (k := logprob_k(req)) is not None:
            self.require("logprobs", "log-probs of generated tokens")
            body["logprobs"] = True
            body["top_logprobs"] = k
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if extra:
            body["extra_body"] = extra
        return body

    def capability_error(self, exc: BadRequest, what: str) -> BackendError:
        """A 400 that says the server does not know an extra field means a missing capability."""
        if not isinstance(exc, ContextTooLong) and UNSUPPORTED.search(str(exc)):
            return CapabilityMissing(f"{self.base_url} does not support {what}: {exc}")
        return exc

    # -- the seam ---------------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> Generation:
        if req.n > 1 and not self.has("n"):
            return await self._generate_each(req)
        try:
            resp = await self.complete(self.request_body(req))
        except BadRequest as exc:
            raise (self.capability_error(exc, "assistant_prefix") if req.assistant_prefix
                   else exc) from None
        choices = sorted(field_of(resp, "choices", []), key=lambda c: field_of(c, "index", 0))
        texts = [field_of(field_of(c, "message"), "content", "") or "" for c in choices]
        logprobs = [self._logprobs(c, req.logprobs) for c in choices]
        usage = field_of(resp, "usage")
        known = [len(field_of(c, "token_ids")) if field_of(c, "token_ids") is not None
                 else self._token_count(c) for c in choices]
        total = field_of(usage, "completion_tokens", 0)
        counts = [total] if len(choices) == 1 else split_tokens(total, known, texts)
        samples = [Sample(text=t, completion_tokens=k, finish_reason=field_of(c, "finish_reason"),
                          logprobs=lp, confidences=self._confidences(c, req.confidence_k))
                   for t, k, c, lp in zip(texts, counts, choices, logprobs)]
        return Generation(samples=samples, prompt_tokens=field_of(usage, "prompt_tokens", 0),
                          cached_prompt_tokens=self._cached(usage),
                          served_by=self.served_for(resp), model=self.model)

    async def _generate_each(self, req: GenerateRequest) -> Generation:
        """A server without `n`: n one-sample requests (seeds seed+i), sent concurrently."""
        def one(i: int) -> GenerateRequest:
            seed = None if req.seed is None else (req.seed + i) & 0x7FFFFFFF
            return req.model_copy(update={"n": 1, "seed": seed})

        gens = await asyncio.gather(*(self.generate(one(i)) for i in range(req.n)))
        return Generation(samples=[g.samples[0] for g in gens],
                          prompt_tokens=sum(g.prompt_tokens for g in gens),
                          cached_prompt_tokens=sum(g.cached_prompt_tokens or 0 for g in gens),
                          served_by=",".join(sorted({g.served_by or "" for g in gens})),
                          model=self.model)

    @staticmethod
    def _logprobs(choice: Any, k: int | None) -> list[TokenLogprob] | None:
        content = field_of(field_of(choice, "logprobs"), "content")
        if k is None or content is None:
            return None
        return [TokenLogprob(token=field_of(t, "token", ""), logprob=field_of(t, "logprob"),
                             top=tuple(sorted((field_of(a, "logprob") for a in
                                               field_of(t, "top_logprobs", [])),
                                              reverse=True))[:k])
                for t in content]

    @staticmethod
    def _positions(choice: Any) -> list[Any] | None:
        return field_of(field_of(choice, "logprobs"), "content")

    @classmethod
    def _token_count(cls, choice: Any) -> int | None:
        positions = cls._positions(choice)
        return None if positions is None else len(positions)

    @classmethod
    def _confidences(cls, choice: Any, k: int | None) -> list[float] | None:
        """DeepConf token confidence per generated token, from the top-k log-probs."""
        positions = cls._positions(choice)
        if not k or positions is None:
            return None
        return [confidence_of(sorted((field_of(a, "logprob") for a in
                                      field_of(t, "top_logprobs", [])), reverse=True)[:k])
                for t in positions]

    @staticmethod
    def _cached(usage: Any) -> int | None:
        return field_of(field_of(usage, "prompt_tokens_details"), "cached_tokens")

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Delta]:
        if req.n > 1 and not self.has("n"):
            self.require("n", f"streaming {req.n} samples in one request")
        what = f"POST {self.base_url}/chat/completions (stream)"
        chunks = await self.open_stream(self.request_body(req, stream=True))
        texts: dict[int, str] = {}
        finished: dict[int, str] = {}
        usage = None
        try:
            async for chunk in chunks:
                usage = field_of(chunk, "usage") or usage
                for choice in field_of(chunk, "choices", []):
                    index = field_of(choice, "index", 0)
                    if reason := field_of(choice, "finish_reason"):
                        finished[index] = reason
                    text = field_of(field_of(choice, "delta"), "content") or ""
                    if text:
                        texts[index] = texts.get(index, "") + text
                        yield Delta(index=index, text=text, tokens=self._token_count(choice),
                                    confidences=self._confidences(choice, req.confidence_k))
        except Exception as exc:
            mapped = self.fail(exc, what)
            if isinstance(mapped, (BadRequest, StreamCut)):
                raise mapped from None
            raise StreamCut(f"{self.base_url}: stream of {self.model!r} cut: {one_line(exc)}",
                            partial="".join(texts[i] for i in sorted(texts))) from None
        finally:
            await close_stream(chunks)
        # The usage chunk comes last: without it, and with samples unfinished, the stream was cut.
        if usage is None and len(finished) < req.n:
            raise StreamCut(f"{self.base_url}: stream of {self.model!r} ended unfinished",
                            partial="".join(texts[i] for i in sorted(texts)))
        yield Delta(index=0, finish_reason=finished.get(0),
                    prompt_tokens=field_of(usage, "prompt_tokens", 0),
                    completion_tokens=field_of(usage, "completion_tokens", 0),
                    cached_prompt_tokens=self._cached(usage), served_by=self.served_for(chunks))

    async def prompt_logprobs(self, messages: Sequence[Message], text: str,
                              top_k: int = 0) -> list[TokenLogprob]:
        """vLLM prompt log-probs: the text is sent as a final assistant message that the server
        continues (not closes), with one generated token that is discarded; the text's tokens
        are those after the rendered prompt of `messages` (from the server's /tokenize)."""
        self.require("prompt_logprobs", "prompt log-probs")
        self.require("continue_final_message", "prompt log-probs of an assistant text")
        if not text:
            return ScoredTokens()
        prefix = await self._rendered_prefix(tuple(messages))
        scored_chat = chat(messages) + [{"role": "assistant", "content": text}]
        body = {"model": self.model, "messages": scored_chat, "max_tokens": 1,
                "temperature": 0.0, "extra_body": {**self.extra_body, **CONTINUE_FINAL,
                                                   "prompt_logprobs": top_k,
                                                   "return_token_ids": True}}
        try:
            resp = await self.complete(body)
        except BadRequest as exc:
            raise self.capability_error(exc, "prompt log-probs") from None
        positions = field_of(resp, "prompt_logprobs")
        if positions is None:
            raise CapabilityMissing(f"{self.base_url} returned no prompt log-probs for "
                                    f"{self.model!r} (a vLLM server has them)")
        ids = field_of(resp, "prompt_token_ids") or await self._tokenize_chat(
            scored_chat, CONTINUE_FINAL)
        if ids[:len(prefix)] != prefix or len(ids) != len(positions):
            raise ServerError(f"{self.base_url}: cannot locate the scored text in the prompt "
                              f"the server rendered for {self.model!r}")
        scored = ScoredTokens()
        for tid, position in zip(ids[len(prefix):], positions[len(prefix):]):
            entry = position[str(tid)]
            scored.append(TokenLogprob(token=entry.get("decoded_token") or "",
                                       logprob=entry["logprob"], top=ranked_top(position, top_k)))
        usage = field_of(resp, "usage")
        scored.prompt_tokens = field_of(usage, "prompt_tokens", len(ids))
        scored.cached_prompt_tokens = self._cached(usage) or 0
        scored.served_by = self.served_for(resp)   # type: ignore[attr-defined]
        return scored

    # -- the server's /tokenize and /detokenize ----------------------------------------------
    async def _post_server(self, path: str, body: dict[str, Any], purpose: str) -> Any:
        import httpx

        url = f"{self.server_root}{path}"
        what = f"POST {url}"
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                resp = await http.post(url, json=body,
                                       headers={"Authorization": f"Bearer {self.api_key}"})
        except Exception as exc:
            raise self.fail(exc, what) from None
        if resp.status_code == 404 and "model" not in resp.text.lower():
            raise CapabilityMissing(f"{self.server_root} has no {path} endpoint ({purpose})")
        if resp.status_code >= 400:
            raise status_error(resp.status_code, resp.text, resp.headers, url=self.base_url,
                               model=self.model, what=what)
        return resp.json()

    async def tokenize(self, text: str) -> list[int]:
        self.require("tokenize", "tokenize")
        out = await self._post_server("/tokenize", {"model": self.server_model, "prompt": text,
                                                    "add_special_tokens": False}, "tokenize")
        return list(out["tokens"])

    async def detokenize(self, ids: Sequence[int]) -> str:
        """Token ids back to text through vLLM's `/detokenize`; a server without the route
        raises CapabilityMissing naming it."""
        self.require("tokenize", "detokenize")
        out = await self._post_server("/detokenize", {"model": self.server_model,
                                                      "tokens": list(ids)}, "detokenize")
        return str(out["prompt"])

    async def _tokenize_chat(self, messages: list[dict[str, str]],
                             flags: Mapping[str, bool]) -> list[int]:
        out = await self._post_server("/tokenize", {"model": self.server_model,
                                                    "messages": messages,
                                                    **flags}, "rendering the chat prompt")
        return list(out["tokens"])

    async def _rendered_prefix(self, messages: tuple[Message, ...]) -> list[int]:
        """Token ids of the prompt up to the assistant's turn; strategies score many texts
        after the same messages, so the last 256 renderings are kept."""
        if messages not in self._prefix_ids:
            self._prefix_ids[messages] = await self._tokenize_chat(
                chat(messages), {"add_generation_prompt": True})
            while len(self._prefix_ids) > 256:
                self._prefix_ids.popitem(last=False)
        self._prefix_ids.move_to_end(messages)
        return self._prefix_ids[messages]

    def config_hash(self) -> str:
        return f"{self.name}:{self.base_url}:{self.model}"

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            try:
                await client.close()
            except Exception:   # its loop may be gone; nothing left to release then
                pass
