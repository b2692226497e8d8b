"""The seam between the router's client APIs (router/api, validation) and its serving engine.

The API layer validates and tokenizes a client request into a `GenerateRequest` and consumes the
event stream `Engine.generate(req)` yields:

    [PrefillEvent]  once, first, only when `params.prefill_logprobs`
    TokenEvent*     one per generated token, in order (the final token included)
    FinalEvent      exactly once, last

An `EngineError` raised from `generate()` (at once, or while iterating) ends the stream. Stopping the
iteration early (`aclose()` on the generator, or a cancelled consumer task) cancels the request: it is
removed from the running batch at the next engine step and its memory is released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from router.engine.protocol import CHAMELEON_V1, ShardProtocol

FinishReason = Literal["length", "eos_token", "stop_sequence"]
ErrorKind = Literal["overloaded", "validation", "generation", "unavailable"]


@dataclass(frozen=True, slots=True)
class GenerateParams:
    """Sampling and stopping parameters, already validated and shard-ready.

    `seed` None lets the shard pick one (reported back in `FinalEvent.seed`). `truncate` is the
    client's request; `GenerateRequest.input_ids` is already truncated. `min_new_tokens` and
    `length_penalty` (start_index, decay_factor; None = off) are TGIS's (see shard.server.sampling).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    do_sample: bool = False
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    max_new_tokens: int = 20
    stop_sequences: tuple[str, ...] = ()
    ignore_eos_token: bool = False
    top_n_tokens: int = 0
    prefill_logprobs: bool = False
    truncate: int | None = None
    min_new_tokens: int = 0
    length_penalty: tuple[int, float] | None = None


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One generation. `input_ids` are the prompt tokens after truncation: their count sizes the KV
    reservation (input + max_new_tokens) and must equal what the shard gets from tokenizing `text`
    with special tokens (the engine sends `truncate=len(input_ids)` to keep the two consistent).
    `adapter_id` None = the base model; an unknown id is the API layer's to reject (`Engine.known`).
    """

    text: str
    input_ids: tuple[int, ...]
    adapter_id: str | None = None
    params: GenerateParams = field(default_factory=GenerateParams)
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class TopToken:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token, in order. `top_tokens` has up to `params.top_n_tokens` alternatives."""

    id: int
    text: str
    logprob: float
    special: bool
    top_tokens: tuple[TopToken, ...] = ()


@dataclass(frozen=True, slots=True)
class PrefillEvent:
    """Prompt tokens with their logprobs (the first one has logprob NaN), when asked; comes first."""

    tokens: tuple[TopToken, ...]


@dataclass(frozen=True, slots=True)
class FinalEvent:
    """The end of a generation. `queue_s`: arrival to admission; `inference_s`: admission to finish."""

    generated_text: str
    generated_tokens: int
    finish_reason: FinishReason
    seed: int | None
    input_length: int
    queue_s: float
    inference_s: float


Event = PrefillEvent | TokenEvent | FinalEvent


class EngineError(Exception):
    """A request the engine could not serve. `kind` maps to the client status:
    overloaded -> 429 / RESOURCE_EXHAUSTED, validation -> 422 / INVALID_ARGUMENT,
    generation -> 500 / INTERNAL (a shard failed mid-request), unavailable -> 503 / UNAVAILABLE.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"EngineError({self.kind!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the shards told the engine at start-up (Info + Warmup), for /info and validation.
    `shard_protocol`: what the shards speak (router/engine/protocol.py); `warnings`: what /info and the
    start-up log say about it (empty when the shards speak chameleon.v1)."""

    model_id: str
    model_type: str
    dtype: str
    device_type: str
    block_size: int
    world_size: int
    num_pages: int
    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int
    max_concurrent_requests: int
    max_supported_total_tokens: int
    page_bytes: int
    shard_protocol: ShardProtocol = CHAMELEON_V1
    warnings: tuple[str, ...] = ()
    memory_headroom: str = "off"  # the headroom target (--memory-headroom), as /info shows it


@dataclass(frozen=True, slots=True)
class AdapterStatus:
    """One adapter as `Engine.admin.list()` reports it."""

    adapter_id: str
    rank: int
    nbytes: int
    pages: int
    resident: bool
    refcount: int
    target_modules: tuple[str, ...]
    alpha: float
