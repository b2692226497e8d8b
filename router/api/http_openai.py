"""OpenAI-style routes: /v1/completions, /v1/chat/completions (+ stream), /v1/models, and vLLM's
/v1/load_lora_adapter and /v1/unload_lora_adapter for adapter management."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from aiohttp import web

from router.api import openai_params as oa
from router.api.admin import AdapterAdmin
from router.api.http_common import correlation_id, read_json
from router.api.service import ApiService
from router.api.sse import DONE, event, open_stream, text_beyond
from router.chat_template import ChatTemplateError
from router.engine.types import FinalEvent, TokenEvent
from router.errors import ApiError, ValidationError
from router.params import ClientParams, boolean, integer, string
from router.validation import Validated

_CLIENT_GONE = (ConnectionResetError, ConnectionError)


class OpenAiRoutes:
    def __init__(self, service: ApiService, admin: AdapterAdmin, adapter_dir: Path | None) -> None:
        self.s = service
        self.admin = admin
        self.adapter_dir = adapter_dir

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/load_lora_adapter", self.load_adapter)
        app.router.add_post("/v1/unload_lora_adapter", self.unload_adapter)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            return await read_json(request)
        except ApiError as exc:
            self.s.refuse(exc)
            raise

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        try:
            prompt = oa.completion_prompt(body)
            logprobs = integer(body, "logprobs")
            params = oa.sampling(body, string(body, "model"), top_n=logprobs or None)
            stream, with_usage = oa.stream_flags(body)
        except ApiError as exc:
            self.s.refuse(exc)
            raise
        v = self.s.validate(
            prompt, params, stream=stream, correlation_id=correlation_id(request), api="openai"
        )
        model, rid = string(body, "model") or self.s.model_name, oa.new_id("cmpl")
        if stream:

            def chunk(text: str, finish: str | None, t: TokenEvent | None) -> dict[str, Any]:
                choice = {
                    "index": 0,
                    "text": text,
                    "finish_reason": finish,
                    "logprobs": oa.completion_logprobs([t]) if (t and logprobs is not None) else None,
                }
                return {**oa.envelope("text_completion", model, rid), "choices": [choice]}

            return await self._stream(request, v, chunk, with_usage, model, rid, "text_completion")
        out = await self.s.run(v)
        choice = {
            "index": 0,
            "text": out.final.generated_text,
            "finish_reason": oa.FINISH[out.final.finish_reason],
            "logprobs": oa.completion_logprobs(out.tokens) if logprobs is not None else None,
        }
        return web.json_response(
            {**oa.envelope("text_completion", model, rid), "choices": [choice], "usage": oa.usage(out.final)}
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        try:
            params, prompt, logprobs = self._chat_params(body)
            stream, with_usage = oa.stream_flags(body)
        except ApiError as exc:
            self.s.refuse(exc)
            raise
        v = self.s.validate(
            prompt, params, stream=stream, correlation_id=correlation_id(request), api="openai"
        )
        model, rid = string(body, "model") or self.s.model_name, oa.new_id("chatcmpl")
        if stream:

            def chunk(text: str, finish: str | None, t: TokenEvent | None) -> dict[str, Any]:
                lp = {"content": [oa.chat_logprob(t)]} if (t and logprobs) else None
                choice = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": text},
                    "logprobs": lp,
                    "finish_reason": finish,
                }
                return {**oa.envelope("chat.completion.chunk", model, rid), "choices": [choice]}

            return await self._stream(request, v, chunk, with_usage, model, rid, "chat.completion.chunk")
        out = await self.s.run(v)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": out.final.generated_text},
            "logprobs": {"content": [oa.chat_logprob(t) for t in out.tokens]} if logprobs else None,
            "finish_reason": oa.FINISH[out.final.finish_reason],
        }
        return web.json_response(
            {**oa.envelope("chat.completion", model, rid), "choices": [choice], "usage": oa.usage(out.final)}
        )

    def _chat_params(self, body: dict[str, Any]) -> tuple[ClientParams, str, bool]:
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise ValidationError("`messages` must be a list of {role, content} objects")
        logprobs = boolean(body, "logprobs")
        top = integer(body, "top_logprobs")
        if top is not None and not logprobs:
            raise ValidationError("`top_logprobs` needs `logprobs` set to true")
        try:
            prompt = self.s.tokenizer.render_chat(messages)
        except ChatTemplateError as exc:
            raise ValidationError(str(exc)) from exc
        params = oa.sampling(
            body,
            string(body, "model"),
            max_tokens_key="max_completion_tokens",
            top_n=top if logprobs else None,
        )
        return params, prompt, logprobs

    async def _stream(self, request: web.Request, v: Validated, chunk: Any, with_usage: bool, model: str,
                      rid: str, kind: str) -> web.StreamResponse:
        """One chunk per token, a last chunk with finish_reason, usage and the text beyond the streamed
        pieces (sse.text_beyond), an extra usage chunk when asked, then `data: [DONE]`."""
        source = self.s.events(v)  # refused here (429) before the stream opens
        async with contextlib.aclosing(source) as events:
            resp = await open_stream(request)
            try:
                try:
                    await self._write_chunks(resp, events, chunk, with_usage, oa.envelope(kind, model, rid))
                    await resp.write(DONE)
                except ApiError as exc:
                    await resp.write(event(exc.body()))
                await resp.write_eof()
            except _CLIENT_GONE:
                pass  # the client left: closing the events cancels the request
        return resp

    @staticmethod
    async def _write_chunks(resp: web.StreamResponse, events: Any, chunk: Any, with_usage: bool,
                            envelope: dict[str, Any]) -> None:
        streamed = ""
        async for ev in events:
            if isinstance(ev, TokenEvent):
                piece = "" if ev.special else ev.text
                streamed += piece
                await resp.write(event(chunk(piece, None, ev)))
            elif isinstance(ev, FinalEvent):
                last = chunk(text_beyond(ev.generated_text, streamed), oa.FINISH[ev.finish_reason], None)
                await resp.write(event({**last, "usage": oa.usage(ev)}))
                if with_usage:
                    await resp.write(event({**envelope, "choices": [], "usage": oa.usage(ev)}))

    async def models(self, request: web.Request) -> web.StreamResponse:
        created = 0
        data = [{"id": self.s.model_name, "object": "model", "created": created, "owned_by": "chameleon"}]
        data += [
            {
                "id": a.adapter_id,
                "object": "model",
                "created": created,
                "owned_by": "chameleon",
                "parent": self.s.model_name,
                "root": a.adapter_id,
                "resident": a.resident,
                "rank": a.rank,
            }
            for a in self.admin.list()
        ]
        return web.json_response({"object": "list", "data": data})

    def _lora_name(self, body: dict[str, Any]) -> str:
        name = string(body, "lora_name")
        if not name:
            raise ValidationError("`lora_name` is required")
        path = string(body, "lora_path")
        if path is not None:
            expected = (self.adapter_dir / name).resolve() if self.adapter_dir else None
            if expected is None or Path(path).resolve() != expected:
                where = (
                    f"{self.adapter_dir}/{name}" if self.adapter_dir else "nothing (no --adapter-dir is set)"
                )
                raise ValidationError(
                    f"this server loads adapters by name from its --adapter-dir: `lora_path` "
                    f"must be omitted or equal {where}"
                )
        return name

    async def load_adapter(self, request: web.Request) -> web.StreamResponse:
        name = self._lora_name(await read_json(request))
        status, load_ns = await self.admin.load(name)
        return web.Response(
            text=f"Success: LoRA adapter '{name}' added successfully "
            f"({status.pages} pages, {load_ns / 1e6:.1f} ms)."
        )

    async def unload_adapter(self, request: web.Request) -> web.StreamResponse:
        name = self._lora_name(await read_json(request))
        was_resident = await self.admin.unload(name)
        note = "" if was_resident else " (it was not resident)"
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully{note}.")
