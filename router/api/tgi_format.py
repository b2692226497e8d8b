"""JSON shapes of TGI's HTTP answers (spec/tgi-http.md), built from engine events."""

from __future__ import annotations

from typing import Any

from router.api.service import Outcome
from router.api.sse import jsonable
from router.engine.types import FinalEvent, TokenEvent, TopToken


def token_json(t: TokenEvent | TopToken) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": jsonable(t.logprob), "special": t.special}


def prefill_json(t: TopToken) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": jsonable(t.logprob)}


def generate_json(
    out: Outcome, *, prompt: str, details: bool, return_full_text: bool, top_n_tokens: int
) -> dict[str, Any]:
    """The /generate answer (POST / wraps it in a list)."""
    text = (prompt + out.final.generated_text) if return_full_text else out.final.generated_text
    body: dict[str, Any] = {"generated_text": text}
    if details:
        d: dict[str, Any] = {
            "finish_reason": out.final.finish_reason,
            "generated_tokens": out.final.generated_tokens,
            "seed": out.final.seed,
            "prefill": [prefill_json(t) for t in out.prefill.tokens] if out.prefill else [],
            "tokens": [token_json(t) for t in out.tokens],
        }
        if top_n_tokens > 0:
            d["top_tokens"] = [[token_json(x) for x in t.top_tokens] for t in out.tokens]
        body["details"] = d
    return body


def stream_json(
    index: int,
    token: TokenEvent,
    final: FinalEvent | None,
    *,
    prompt: str,
    return_full_text: bool,
    top_n_tokens: int,
) -> dict[str, Any]:
    """One /generate_stream event; `generated_text` and `details` only on the last one."""
    body: dict[str, Any] = {
        "index": index,
        "token": token_json(token),
        "top_tokens": [token_json(x) for x in token.top_tokens] if top_n_tokens > 0 else None,
        "generated_text": None,
        "details": None,
    }
    if final is not None:
        text = final.generated_text
        body["generated_text"] = (prompt + text) if return_full_text else text
        body["details"] = {
            "finish_reason": final.finish_reason,
            "generated_tokens": final.generated_tokens,
            "seed": final.seed,
            "input_length": final.input_length,
        }
    return body


def timing_headers(
    final: FinalEvent, validation_s: float, total_s: float, prompt_tokens: int
) -> dict[str, str]:
    """TGI's x-* timing headers (milliseconds)."""
    per_token = final.inference_s / final.generated_tokens if final.generated_tokens else 0.0
    return {
        "x-compute-type": "chameleon",
        "x-total-time": str(int(total_s * 1000)),
        "x-validation-time": str(int(validation_s * 1000)),
        "x-queue-time": str(int(final.queue_s * 1000)),
        "x-inference-time": str(int(final.inference_s * 1000)),
        "x-time-per-token": str(int(per_token * 1000)),
        "x-prompt-tokens": str(prompt_tokens),
        "x-generated-tokens": str(final.generated_tokens),
    }
