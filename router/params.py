"""Client parameters as the three client APIs send them, read into one shape before validation.

`ClientParams` holds what the client asked for (None = not given); `router.validation` checks ranges
and turns it into the engine's `GenerateParams`. Parsing here only checks types, so every API reports
range errors with the same wording.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.errors import ValidationError


@dataclass(frozen=True, slots=True)
class ClientParams:
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    seed: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    truncate: int | None = None
    top_n_tokens: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    return_full_text: bool = False
    best_of: int | None = None
    watermark: bool = False
    grammar: Any = None
    adapter_id: str | None = None
    ignore_eos_token: bool = False
    # TGIS (fmaas) only: EOS and stop sequences held off until min_new_tokens; EOS length penalty
    min_new_tokens: int | None = None
    length_penalty: tuple[int, float] | None = None  # (start_index, decay_factor)


def number(body: Mapping[str, Any], key: str, *, where: str = "") -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(f"`{where}{key}` must be a number, got {value!r}")
    return float(value)


def integer(body: Mapping[str, Any], key: str, *, where: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"`{where}{key}` must be an integer, got {value!r}")
    return value


def boolean(body: Mapping[str, Any], key: str, default: bool = False, *, where: str = "") -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationError(f"`{where}{key}` must be true or false, got {value!r}")
    return value


def string(body: Mapping[str, Any], key: str, *, where: str = "") -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"`{where}{key}` must be a string, got {value!r}")
    return value


def strings(body: Mapping[str, Any], key: str, *, where: str = "") -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"`{where}{key}` must be a list of strings, got {value!r}")
    return tuple(value)


def from_tgi(parameters: Any) -> ClientParams:
    """The `parameters` object of POST /, /generate and /generate_stream (unknown fields ignored)."""
    if parameters is None:
        return ClientParams()
    if not isinstance(parameters, dict):
        raise ValidationError("`parameters` must be a JSON object")
    p, w = parameters, "parameters."
    return ClientParams(
        temperature=number(p, "temperature", where=w),
        top_k=integer(p, "top_k", where=w),
        top_p=number(p, "top_p", where=w),
        typical_p=number(p, "typical_p", where=w),
        do_sample=boolean(p, "do_sample", where=w),
        seed=integer(p, "seed", where=w),
        repetition_penalty=number(p, "repetition_penalty", where=w),
        frequency_penalty=number(p, "frequency_penalty", where=w),
        max_new_tokens=integer(p, "max_new_tokens", where=w),
        stop=strings(p, "stop", where=w),
        truncate=integer(p, "truncate", where=w),
        top_n_tokens=integer(p, "top_n_tokens", where=w),
        decoder_input_details=boolean(p, "decoder_input_details", where=w),
        details=boolean(p, "details", where=w),
        return_full_text=boolean(p, "return_full_text", where=w),
        best_of=integer(p, "best_of", where=w),
        watermark=boolean(p, "watermark", where=w),
        grammar=p.get("grammar"),
        adapter_id=string(p, "adapter_id", where=w),
    )
