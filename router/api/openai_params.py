"""OpenAI request bodies (/v1/completions, /v1/chat/completions) -> ClientParams, and answer shapes.

`model` names the adapter; the base model's name (or "tgi", what huggingface_hub sends) means none.
Like TGI: temperature 0 means greedy, otherwise the request samples; top_p 1 means off.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from chameleon import __version__
from router.api.sse import jsonable
from router.engine.types import FinalEvent, TokenEvent
from router.errors import ValidationError
from router.params import ClientParams, boolean, integer, number, string, strings

FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
FINGERPRINT = f"{__version__}-chameleon"


def _unsupported(body: dict[str, Any]) -> None:
    n = integer(body, "n")
    if n is not None and n != 1:
        raise ValidationError(f"`n` must be 1 (this server returns one choice per request). Given: {n}")
    presence = number(body, "presence_penalty")
    if presence:
        raise ValidationError("`presence_penalty` is not supported; use `frequency_penalty` instead")
    if body.get("logit_bias"):
        raise ValidationError("`logit_bias` is not supported by this server; leave it out")
    if body.get("tools"):
        raise ValidationError("`tools` (function calling) is not supported by this server; leave it out")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise ValidationError('`response_format` other than {"type": "text"} is not supported')


def sampling(
    body: dict[str, Any],
    adapter_id: str | None,
    *,
    max_tokens_key: str = "max_tokens",
    top_n: int | None = None,
    details: bool = False,
) -> ClientParams:
    _unsupported(body)
    temperature = number(body, "temperature")
    top_p = number(body, "top_p")
    max_tokens = integer(body, max_tokens_key)
    if max_tokens is None and max_tokens_key != "max_tokens":
        max_tokens = integer(body, "max_tokens")
    return ClientParams(
        temperature=None if temperature in (None, 0.0) else temperature,
        do_sample=temperature != 0.0,
        top_p=None if top_p == 1.0 else top_p,
        seed=integer(body, "seed"),
        frequency_penalty=number(body, "frequency_penalty"),
        repetition_penalty=number(body, "repetition_penalty"),
        max_new_tokens=max_tokens,
        stop=strings(body, "stop"),
        top_n_tokens=top_n,
        details=details,
        best_of=integer(body, "best_of"),
        adapter_id=adapter_id,
    )


def completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ValidationError("`prompt` must be a string (or a list with exactly one string)")
    if boolean(body, "echo"):
        raise ValidationError("`echo` is not supported by this server; leave it false")
    if string(body, "suffix"):
        raise ValidationError("`suffix` is not supported by this server; leave it out")
    return prompt


def stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = boolean(body, "stream")
    opts = body.get("stream_options")
    usage = isinstance(opts, dict) and opts.get("include_usage") is True
    return stream, usage


def envelope(kind: str, model: str, rid: str) -> dict[str, Any]:
    return {
        "id": rid,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": FINGERPRINT,
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(final: FinalEvent) -> dict[str, int]:
    return {
        "prompt_tokens": final.input_length,
        "completion_tokens": final.generated_tokens,
        "total_tokens": final.input_length + final.generated_tokens,
    }


def chat_logprob(t: TokenEvent) -> dict[str, Any]:
    return {
        "token": t.text,
        "logprob": jsonable(t.logprob),
        "bytes": list(t.text.encode()),
        "top_logprobs": [
            {"token": x.text, "logprob": jsonable(x.logprob), "bytes": list(x.text.encode())}
            for x in t.top_tokens
        ],
    }


def completion_logprobs(tokens: list[TokenEvent]) -> dict[str, Any]:
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [jsonable(t.logprob) for t in tokens],
        "top_logprobs": [{x.text: jsonable(x.logprob) for x in t.top_tokens} for t in tokens],
        "text_offset": offsets,
    }
