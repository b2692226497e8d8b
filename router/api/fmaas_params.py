"""fmaas (TGIS) parameters -> ClientParams, and engine events -> fmaas messages.

TGIS conventions: 0 means "unset" for most numbers; GREEDY ignores the sampling block; temperature 0
means greedy; top_p/typical_p 1.0 mean off. Every float must be finite (NaN and infinities are
refused). Guided decoding is refused: TGIS (IBM text-generation-inference) has no guided decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from chameleon_pb import generation_pb2 as pb

from router.engine.types import FinalEvent, TokenEvent, TopToken
from router.errors import ValidationError
from router.params import ClientParams
from router.validation import finite

STOP_REASON = {"length": pb.MAX_TOKENS, "eos_token": pb.EOS_TOKEN, "stop_sequence": pb.STOP_SEQUENCE}


@dataclass(frozen=True, slots=True)
class ResponseShape:
    """What the client asked to get back (ResponseOptions and friends)."""

    input_text: bool = False
    generated_tokens: bool = False
    input_tokens: bool = False
    token_logprobs: bool = False
    token_ranks: bool = False
    top_n_tokens: int = 0
    include_stop_sequence: bool = True
    time_limit_s: float | None = None


def _unit(name: str, value: float) -> float | None:
    if not 0.0 <= finite(name, value) <= 1.0:
        raise ValidationError(f"`{name}` must be >= 0 and <= 1 (0 or 1 = off). Given: {value}")
    return None if value in (0.0, 1.0) else value


def _sampling(s: pb.SamplingParameters) -> dict[str, object]:
    temperature = finite("temperature", s.temperature) if s.HasField("temperature") else 1.0
    if temperature < 0:
        raise ValidationError(f"`temperature` must be >= 0 (0 = greedy). Given: {temperature}")
    if temperature == 0:
        return {"do_sample": False}
    return {
        "do_sample": True,
        "temperature": None if temperature == 1.0 else temperature,
        "top_k": s.top_k or None,
        "top_p": _unit("top_p", s.top_p),
        "typical_p": _unit("typical_p", s.typical_p),
        "seed": s.seed if s.HasField("seed") else None,
    }


def _length_penalty(dec: pb.DecodingParameters) -> tuple[int, float] | None:
    if not dec.HasField("length_penalty"):
        return None
    lp = dec.length_penalty
    return lp.start_index, finite("length_penalty.decay_factor", lp.decay_factor)


def from_fmaas(params: pb.Parameters, adapter_id: str | None) -> tuple[ClientParams, ResponseShape]:
    dec, stop, resp = params.decoding, params.stopping, params.response
    if dec.WhichOneof("guided") is not None:
        raise ValidationError(
            "guided decoding (`decoding.format/json_schema/regex/choice/grammar`) is not "
            "supported by this server (nor by TGIS); leave it unset"
        )
    for name in ("temperature", "top_p", "typical_p"):  # checked even where GREEDY ignores them
        finite(name, getattr(params.sampling, name))
    if finite("repetition_penalty", dec.repetition_penalty) < 0:
        raise ValidationError(f"`repetition_penalty` must be >= 0 (0 = off). Given: {dec.repetition_penalty}")
    sampling = _sampling(params.sampling) if params.method == pb.SAMPLE else {}
    client = ClientParams(
        **sampling,  # type: ignore[arg-type]
        repetition_penalty=dec.repetition_penalty or None,
        max_new_tokens=stop.max_new_tokens or None,
        min_new_tokens=stop.min_new_tokens or None,
        length_penalty=_length_penalty(dec),
        stop=tuple(stop.stop_sequences),
        truncate=params.truncate_input_tokens or None,
        # ranks are read off the top tokens, so ask for some when only ranks are wanted
        top_n_tokens=resp.top_n_tokens or (5 if resp.token_ranks else None),
        decoder_input_details=resp.input_tokens,
        adapter_id=adapter_id,
    )
    shape = ResponseShape(
        input_text=resp.input_text,
        generated_tokens=resp.generated_tokens,
        input_tokens=resp.input_tokens,
        token_logprobs=resp.token_logprobs,
        token_ranks=resp.token_ranks,
        top_n_tokens=resp.top_n_tokens,
        include_stop_sequence=stop.include_stop_sequence if stop.HasField("include_stop_sequence") else True,
        time_limit_s=stop.time_limit_millis / 1000.0 if stop.time_limit_millis else None,
    )
    return client, shape


def token_info(t: TokenEvent | TopToken, shape: ResponseShape) -> pb.TokenInfo:
    info = pb.TokenInfo(text=t.text)
    if shape.token_logprobs and t.logprob == t.logprob:  # NaN (first prompt token) stays unset
        info.logprob = t.logprob
    top = getattr(t, "top_tokens", ())
    if shape.token_ranks and top:
        rank = next((i + 1 for i, x in enumerate(top) if x.id == t.id), 0)
        info.rank = rank
    if shape.top_n_tokens and top:
        info.top_tokens.extend(pb.TokenInfo.TopToken(text=x.text, logprob=x.logprob) for x in top)
    return info


def stop_sequence_of(final: FinalEvent, stops: tuple[str, ...]) -> str:
    """Which stop sequence ended the text (the engine reports only that one did)."""
    if final.finish_reason != "stop_sequence":
        return ""
    return next((s for s in stops if final.generated_text.endswith(s)), "")
