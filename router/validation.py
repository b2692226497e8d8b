"""Request validation: ranges as TGI checks them, adapter names, token budgets.

Every refusal is a `ValidationError` (HTTP 422 / gRPC INVALID_ARGUMENT) whose message names the field,
the allowed range and the value given. Messages follow TGI's wording where TGI has one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from chameleon.core.adapter_files import AdapterIdError, check_adapter_id
from router.engine.types import GenerateParams, GenerateRequest
from router.errors import ApiError, ValidationError
from router.params import ClientParams
from router.tokenize import Encoding, RouterTokenizer

log = logging.getLogger("chameleon.router.validation")

UnknownAdapter = Literal["error", "base"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds a request must respect. `base_names` are model names that mean "no adapter"."""

    max_input_tokens: int
    max_total_tokens: int
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_best_of: int = 1
    max_new_tokens_default: int = 100
    unknown_adapter: UnknownAdapter = "error"
    base_names: tuple[str, ...] = ()
    max_stop_sequence_chars: int = 1024
    max_client_batch_size: int = 128


@dataclass(frozen=True, slots=True)
class Validated:
    request: GenerateRequest
    encoding: Encoding
    max_new_tokens_given: bool


def check_adapter_name(adapter_id: str) -> None:
    """chameleon.core.adapter_files.check_adapter_id (the shard's rule too), failing with ValidationError."""
    try:
        check_adapter_id(adapter_id)
    except AdapterIdError as exc:
        raise ValidationError(str(exc)) from None


class Validator:
    """Turns (text, ClientParams) into a shard-ready `GenerateRequest`."""

    def __init__(
        self, limits: Limits, tokenizer: RouterTokenizer, known_adapter: Callable[[str], bool]
    ) -> None:
        self.limits = limits
        self.tokenizer = tokenizer
        self._known = known_adapter

    def adapter(self, adapter_id: str | None) -> str | None:
        """The adapter to use: None for the base model (no id, "", or a base model name)."""
        if adapter_id is None or adapter_id == "" or adapter_id in self.limits.base_names:
            return None
        check_adapter_name(adapter_id)
        if self._known(adapter_id):
            return adapter_id
        if self.limits.unknown_adapter == "base":
            log.warning("unknown adapter, serving the base model", extra={"adapter_id": adapter_id})
            return None
        raise ValidationError(
            f"unknown adapter {adapter_id!r}: it is not loaded and not found under --adapter-dir "
            "(GET /v1/models lists the adapters this server knows)"
        )

    def validate(
        self, text: str, p: ClientParams, *, stream: bool = False, correlation_id: str | None = None
    ) -> Validated:
        adapter_id = self.adapter(p.adapter_id)
        self._check_unsupported(p, stream)
        if not text:
            raise ValidationError("`inputs` cannot be empty")
        truncate = self._truncate(p.truncate)
        encoding = self.tokenizer.encode(text)
        if truncate is not None:
            encoding = encoding.truncated(truncate)
        n_in = len(encoding.ids)
        if n_in > self.limits.max_input_tokens:
            raise ValidationError(
                f"`inputs` must have less than {self.limits.max_input_tokens} tokens. Given: {n_in} "
                "(shorten the prompt or set `truncate`)"
            )
        max_new = self._max_new_tokens(p.max_new_tokens, n_in)
        min_new = self._min_new_tokens(p.min_new_tokens, max_new, n_in, p.max_new_tokens is not None)
        params = GenerateParams(
            temperature=self._temperature(p.temperature),
            top_k=self._top_k(p.top_k),
            top_p=_open_unit("top_p", p.top_p),
            typical_p=_open_unit("typical_p", p.typical_p),
            do_sample=p.do_sample,
            seed=self._seed(p.seed),
            repetition_penalty=self._repetition_penalty(p.repetition_penalty),
            frequency_penalty=self._frequency_penalty(p.frequency_penalty),
            max_new_tokens=max_new,
            stop_sequences=self._stop(p.stop),
            ignore_eos_token=p.ignore_eos_token,
            top_n_tokens=self._top_n(p.top_n_tokens),
            prefill_logprobs=p.decoder_input_details,
            truncate=truncate,
            min_new_tokens=min_new,
            length_penalty=self._length_penalty(p.length_penalty),
        )
        req = GenerateRequest(
            text=text,
            input_ids=encoding.ids,
            adapter_id=adapter_id,
            params=params,
            correlation_id=correlation_id,
        )
        return Validated(req, encoding, p.max_new_tokens is not None)

    def _check_unsupported(self, p: ClientParams, stream: bool) -> None:
        if p.best_of is not None and not 1 <= p.best_of <= self.limits.max_best_of:
            raise ValidationError(
                f"`best_of` must be > 0 and <= {self.limits.max_best_of}. Given: {p.best_of} "
                "(this server returns one sequence per request; send best_of=1 or leave it out)"
            )
        if p.watermark:
            raise ValidationError("`watermark` is not supported by this server; leave it false")
        if p.grammar is not None:
            raise ValidationError(
                "`grammar` (guided decoding) is not supported by this server; leave it null"
            )
        if stream and p.decoder_input_details:
            raise ValidationError("`decoder_input_details` == true is not supported when streaming tokens")

    def _truncate(self, truncate: int | None) -> int | None:
        if truncate is None:
            return None
        if not 0 < truncate <= self.limits.max_input_tokens:
            raise ValidationError(
                f"`truncate` must be strictly positive and less than {self.limits.max_input_tokens}. "
                f"Given: {truncate}"
            )
        return truncate

    def _max_new_tokens(self, given: int | None, n_in: int) -> int:
        room = self.limits.max_total_tokens - n_in
        if given is None:
            if room <= 0:
                raise ValidationError(
                    f"`inputs` tokens + `max_new_tokens` must be <= {self.limits.max_total_tokens}. "
                    f"Given: {n_in} `inputs` tokens, which leave no room for a new token"
                )
            return min(self.limits.max_new_tokens_default, room)
        if given <= 0:
            raise ValidationError(f"`max_new_tokens` must be strictly positive. Given: {given}")
        if given > room:
            raise ValidationError(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.limits.max_total_tokens}. "
                f"Given: {n_in} `inputs` tokens and {given} `max_new_tokens`"
            )
        return given

    def _min_new_tokens(self, given: int | None, max_new: int, n_in: int, max_given: bool) -> int:
        """TGIS: input + min_new_tokens fit max_total_tokens, and min_new_tokens <= max_new_tokens."""
        if not given:
            return 0
        if given < 0:
            raise ValidationError(f"`min_new_tokens` must be >= 0. Given: {given}")
        if n_in + given > self.limits.max_total_tokens:
            raise ValidationError(
                f"`inputs` tokens + `min_new_tokens` must be <= {self.limits.max_total_tokens}. "
                f"Given: {n_in} `inputs` tokens and {given} `min_new_tokens`"
            )
        if given > max_new:
            which = "" if max_given else " (the server default, as `max_new_tokens` is unset)"
            raise ValidationError(
                f"`min_new_tokens` must be <= `max_new_tokens`. Given: {given} `min_new_tokens` and "
                f"{max_new} `max_new_tokens`{which}"
            )
        return given

    def _length_penalty(self, value: tuple[int, float] | None) -> tuple[int, float] | None:
        """TGIS's exponential decay length penalty: decay_factor in [1.0, 10.0]; 1.0 is off."""
        if value is None:
            return None
        start, decay = value
        if not (math.isfinite(decay) and 1.0 <= decay <= 10.0):
            raise ValidationError(
                f"`length_penalty.decay_factor` must be >= 1.0 and <= 10.0 (1.0 = off). Given: {decay}"
            )
        if not 0 <= start < self.limits.max_total_tokens:
            raise ValidationError(
                f"`length_penalty.start_index` must be >= 0 and < {self.limits.max_total_tokens}. "
                f"Given: {start}"
            )
        return None if decay == 1.0 else (start, decay)

    @staticmethod
    def _temperature(value: float | None) -> float:
        if value is not None and not (_wire_float("temperature", value) > 0):
            raise ValidationError(f"`temperature` must be strictly positive. Given: {value}")
        return 1.0 if value is None else value

    @staticmethod
    def _top_k(value: int | None) -> int:
        if value is not None and not 0 < value <= U32_MAX:
            raise ValidationError(f"`top_k` must be strictly positive and at most {U32_MAX}. Given: {value}")
        return 0 if value is None else value

    @staticmethod
    def _seed(value: int | None) -> int | None:
        if value is not None and not 0 <= value < 2**64:
            raise ValidationError(f"`seed` must be >= 0 and < 2^64. Given: {value}")
        return value

    @staticmethod
    def _repetition_penalty(value: float | None) -> float:
        if value is not None and not (_wire_float("repetition_penalty", value) > 0):
            raise ValidationError(f"`repetition_penalty` must be strictly positive. Given: {value}")
        return 1.0 if value is None else value

    @staticmethod
    def _frequency_penalty(value: float | None) -> float:
        if value is not None and not -2.0 <= value <= 2.0:
            raise ValidationError(f"`frequency_penalty` must be >= -2.0 and <= 2.0. Given: {value}")
        return 0.0 if value is None else value

    def _stop(self, stop: tuple[str, ...]) -> tuple[str, ...]:
        if len(stop) > self.limits.max_stop_sequences:
            raise ValidationError(
                f"`stop` supports up to {self.limits.max_stop_sequences} stop sequences. Given: {len(stop)}"
            )
        if any(s == "" for s in stop):
            raise ValidationError("`stop` sequences cannot be empty strings")
        longest = max((len(s) for s in stop), default=0)
        if longest > self.limits.max_stop_sequence_chars:
            raise ValidationError(f"`stop` sequences must be at most {self.limits.max_stop_sequence_chars} "
                                  f"characters long. Given: one of {longest}")
        return stop

    def _top_n(self, value: int | None) -> int:
        if value is not None and not 0 <= value <= self.limits.max_top_n_tokens:
            raise ValidationError(
                f"`top_n_tokens` must be >= 0 and <= {self.limits.max_top_n_tokens}. Given: {value}"
            )
        return 0 if value is None else value


U32_MAX = 2**32 - 1


FLOAT32_TINY, FLOAT32_MAX = 1.1754944e-38, 3.4028235e38


def finite(name: str, value: float) -> float:
    """`value`, or a ValidationError when it is NaN or infinite (which compare false with any bound)."""
    if not math.isfinite(value):
        raise ValidationError(f"`{name}` must be a finite number. Given: {value}")
    return value


def _wire_float(name: str, value: float) -> float:
    """`finite`, and refused where the shards' 32-bit float would turn it into 0 (= unset) or infinity."""
    finite(name, value)
    if value != 0 and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
        raise ValidationError(f"`{name}` must be 0 or of magnitude between {FLOAT32_TINY:.3g} and "
                              f"{FLOAT32_MAX:.3g} (a 32-bit float). Given: {value}")
    return value


def _open_unit(name: str, value: float | None) -> float:
    if value is not None and not 0.0 < _wire_float(name, value) < 1.0:
        raise ValidationError(f"`{name}` must be > 0.0 and < 1.0. Given: {value}")
    return 1.0 if value is None else value


__all__ = ["ApiError", "Limits", "Validated", "ValidationError", "Validator", "check_adapter_name", "finite"]
