"""VLLMBackend: the Backend seam on vLLM's AsyncLLM engine in the calling process."""
from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing
from functools import cached_property
from typing import Any, AsyncIterator, Sequence

from reasonloom.backends.base import (Backend, Capabilities, Delta, Generation, GenerateRequest,
                                      Sample, TokenLogprob, confidence_of, logprob_k)
from reasonloom.backends.errors import BadRequest, ContextTooLong, ServerError
from reasonloom.backends.vllm.engine import DEFAULT_ENGINE_ARGS, engine_key, get_engine
from reasonloom.types import Message


def whole_prompt_prefill(args: dict[str, Any]) -> dict[str, Any]:
    """Every call we send is seeded; on the CPU engine a seeded request whose prompt is split
    across steps by chunked prefill crashes the worker ("CPU Generator does not use offset").
    So prompts are prefilled whole (the step budget must then hold the longest prompt), unless
    the caller chose otherwise or speculative decoding (which needs chunked steps) is on."""
    if "enable_chunked_prefill" in args or "reasonloom_speculative" in args \
            or "speculative_config" in args:
        return args
    window = int(args.get("max_model_len") or 8192)
    return {**args, "enable_chunked_prefill": False,
            "max_num_batched_tokens": max(int(args.get("max_num_batched_tokens") or 0),
                                          window, 8192)}


def _top_logprobs(position: dict[int, Any] | None, k: int) -> tuple[float, ...]:
    if not position or k <= 0:
        return ()
    ranked = sorted((lp for lp in position.values() if lp.rank is not None and lp.rank <= k),
                    key=lambda lp: lp.rank)
    return tuple(lp.logprob for lp in ranked[:k])


def _confidences(positions: Any, k: int | None) -> list[float] | None:
    """DeepConf token confidence of each generated position, from its top-k log-probs."""
    if not k or positions is None:
        return None
    return [confidence_of(_top_logprobs(pos, k)) for pos in positions]


class VLLMBackend(Backend):
    """Example:
        >>> backend = VLLMBackend(str(ensure_embedded_model()), {"dtype": "float32"})
        >>> gen = await backend.generate(GenerateRequest(messages=(...,), n=4, temperature=0.8))
    """

    name = "vllm"

    def __init__(self, model: str, engine_args: dict[str, Any] | None = None,
                 served_name: str | None = None):
        self.model_path = model
        self.engine_args = whole_prompt_prefill({**DEFAULT_ENGINE_ARGS, **(engine_args or {})})
        self.model = served_name or model
        self._engine: Any = None

    # -- engine and tokenizer ----------------------------------------------------------------
    async def engine(self) -> Any:
        if self._engine is None:
            self._engine = await get_engine(self.model_path, self.engine_args)
        return self._engine

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_path)

    @cached_property
    def context_length(self) -> int:
        if self.engine_args.get("max_model_len"):
            return int(self.engine_args["max_model_len"])
        import json
        from pathlib import Path

        config = json.loads((Path(self.model_path) / "config.json").read_text())
        return int(config.get("max_position_embeddings", 2048))

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(context_length=self.context_length,
                            steering="reasonloom_steering" in str(self.engine_args))

    def config_hash(self) -> str:
        return engine_key(self.model_path, self.engine_args)

    def estimate_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    async def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def detokenize(self, ids: Sequence[int]) -> str:
        # No clean-up: the text must be exactly what the ids encode (chunks are re-joined).
        return self.tokenizer.decode(list(ids), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def render(self, messages: Sequence[Message], assistant_prefix: str | None = None
               ) -> list[int]:
        """Chat template -> token ids; an assistant prefix is continued, not closed."""
        chat = [{"role": m.role, "content": m.content} for m in messages]
        text = self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        if assistant_prefix:
            text += assistant_prefix
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _check_fits(self, prompt_ids: list[int], max_tokens: int) -> int:
        """Fail before the engine when the prompt cannot fit; clip the output to the window."""
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise ContextTooLong(f"prompt of {len(prompt_ids)} tokens does not fit the context "
                                 f"of {self.context_length} tokens ({self.model})")
        return min(max_tokens, room)

    def _params(self, req: GenerateRequest, max_tokens: int, kind: str) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens,
            stop=list(req.stop) or None, seed=req.seed, logprobs=logprob_k(req),
            output_kind=RequestOutputKind.DELTA if kind == "stream"
            else RequestOutputKind.FINAL_ONLY)

    async def _run(self, prompt_ids: list[int], params: Any) -> AsyncIterator[Any]:
        engine = await self.engine()
        # Calls started together (a strategy's gather) are sent together: one loop yield lets
        # every one of them render its prompt before any is sent, and the typed token input is
        # processed in this call, without the thread-pool hop a raw prompt dict takes, so the
        # sends follow each other within a fraction of a millisecond (they were ~1.5 ms apart).
        # An idle engine starts its step on the first request it gets and can still miss the
        # others: MoA's three proposers were measured in two steps even so (one token apart).
        await asyncio.sleep(0)
        try:
            # aclosing: a caller that stops reading (a stopped or cancelled generation) closes
            # the engine's generator now, which aborts the request in the engine
            async with aclosing(engine.generate({"type": "token", "prompt_token_ids": prompt_ids},
                                                params, uuid.uuid4().hex)) as outputs:
                async for out in outputs:
                    yield out
        except ValueError as exc:
            raise BadRequest(f"{self.model}: {exc}") from None
        except (RuntimeError, OSError) as exc:
            raise ServerError(f"{self.model}: engine error: {exc}") from None

    # -- the seam ------------------------------------------------------------------------------
    async def generate(self, req: GenerateRequest) -> Generation:
        prompt_ids = self.render(req.messages, req.assistant_prefix)
        params = self._params(req, self._check_fits(prompt_ids, req.max_tokens), "generate")
        final = None
        async for out in self._run(prompt_ids, params):
            final = out
        assert final is not None
        samples = []
        for comp in sorted(final.outputs, key=lambda c: c.index):
            logprobs = None
            if req.logprobs is not None and comp.logprobs is not None:
                logprobs = [TokenLogprob(token=pos[tid].decoded_token or "",
                                         logprob=pos[tid].logprob,
                                         top=_top_logprobs(pos, req.logprobs))
                            for tid, pos in zip(comp.token_ids, comp.logprobs)]
            samples.append(Sample(text=comp.text, completion_tokens=len(comp.token_ids),
                                  finish_reason=comp.finish_reason, logprobs=logprobs,
                                  confidences=_confidences(comp.logprobs, req.confidence_k)))
        return Generation(samples=samples, prompt_tokens=len(prompt_ids),
                          cached_prompt_tokens=final.num_cached_tokens, served_by="vllm:local",
                          model=self.model)

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Delta]:
        prompt_ids = self.render(req.messages, req.assistant_prefix)
        params = self._params(req, self._check_fits(prompt_ids, req.max_tokens), "stream")
        tokens: dict[int, int] = {}
        unsent: dict[int, int] = {}   # tokens whose text is still incomplete (a split character)
        pending: dict[int, list[float]] = {}   # their confidences, sent with the text
        finish: dict[int, str | None] = {}
        cached = None
        # With n > 1 each streamed output carries only the samples that advanced: key by index.
        async with aclosing(self._run(prompt_ids, params)) as outputs:
            async for out in outputs:
                cached = out.num_cached_tokens
                for comp in out.outputs:
                    tokens[comp.index] = tokens.get(comp.index, 0) + len(comp.token_ids)
                    unsent[comp.index] = unsent.get(comp.index, 0) + len(comp.token_ids)
                    if comp.finish_reason:
                        finish[comp.index] = comp.finish_reason
                    if req.confidence_k:
                        pending.setdefault(comp.index, []).extend(
                            _confidences(comp.logprobs, req.confidence_k) or ())
                    if comp.text:
                        yield Delta(index=comp.index, text=comp.text,
                                    tokens=unsent.pop(comp.index),
                                    confidences=pending.pop(comp.index, None))
        yield Delta(index=0, finish_reason=finish.get(0), prompt_tokens=len(prompt_ids),
                    completion_tokens=sum(tokens.values()), cached_prompt_tokens=cached)

    async def prompt_logprobs(self, messages: Sequence[Message], text: str,
                              top_k: int = 0) -> list[TokenLogprob]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        prefix = self.render(messages)
        text_ids = self.tokenizer.encode(text, add_special_tokens=False)
        prompt_ids = prefix + text_ids
        self._check_fits(prompt_ids, 1)
        # Prefill only: vLLM needs max_tokens >= 1, so one token is generated and discarded.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self._run(prompt_ids, params):
            final = out
        assert final is not None and final.prompt_logprobs is not None
        scored = ScoredTokens()
        for tid, pos in zip(text_ids, final.prompt_logprobs[len(prefix):]):
            scored.append(TokenLogprob(token=pos[tid].decoded_token or "",
                                       logprob=pos[tid].logprob, top=_top_logprobs(pos, top_k)))
        scored.prompt_tokens = len(prompt_ids)
        scored.cached_prompt_tokens = final.num_cached_tokens or 0
        return scored


class ScoredTokens(list):
    """Token log-probs plus what the scoring call cost (the ledger reads these)."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
