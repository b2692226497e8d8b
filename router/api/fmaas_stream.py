"""GenerateStream's messages from engine events (TGIS semantics).

The first message carries the input token count (and input tokens/text when asked), one message per
token carries its text piece, the last one the stop reason and totals plus whatever the final text has
beyond the streamed pieces (a character split over tokens). With `include_stop_sequence` false, text
that could be the start of a stop sequence is held back until it is known not to be one, so the stop
sequence itself is never sent.
"""

from __future__ import annotations

import time

from chameleon_pb import generation_pb2 as pb

from router.api.fmaas_params import STOP_REASON, ResponseShape, stop_sequence_of, token_info
from router.api.sse import text_beyond
from router.engine.types import FinalEvent, PrefillEvent, TokenEvent
from router.validation import Validated


class StreamMessages:
    def __init__(self, v: Validated, shape: ResponseShape, text: str) -> None:
        self.n_in = len(v.request.input_ids)
        self.stops = v.request.params.stop_sequences
        self.shape = shape
        self.hold_back = bool(self.stops) and not shape.include_stop_sequence
        self.first = pb.GenerationResponse(input_token_count=self.n_in, text=text if shape.input_text else "")
        self.deadline = None if shape.time_limit_s is None else time.monotonic() + shape.time_limit_s
        self.count = 0
        self.streamed = ""
        self.pending = ""
        self.done = False

    def message(self, ev: object | None) -> pb.GenerationResponse:
        """The message for one event; None = the time limit passed. Sets `done` on the last one."""
        if isinstance(ev, PrefillEvent):
            self.first.input_tokens.extend(token_info(t, self.shape) for t in ev.tokens)
            return self.first
        if isinstance(ev, TokenEvent):
            self.count += 1
            msg = pb.GenerationResponse(generated_token_count=self.count, text=self._release(ev.text))
            if self.shape.generated_tokens:
                msg.tokens.append(token_info(ev, self.shape))
            return msg
        self.done = True
        if not isinstance(ev, FinalEvent):
            return pb.GenerationResponse(input_token_count=self.n_in, generated_token_count=self.count,
                                         text=self.pending, stop_reason=pb.TIME_LIMIT)
        text, stop = ev.generated_text, stop_sequence_of(ev, self.stops)
        if stop and not self.shape.include_stop_sequence:
            text = text[: -len(stop)]
        return pb.GenerationResponse(
            input_token_count=self.n_in, generated_token_count=ev.generated_tokens,
            text=text_beyond(text, self.streamed), stop_reason=STOP_REASON[ev.finish_reason],
            seed=ev.seed or 0, stop_sequence=stop)

    def _release(self, piece: str) -> str:
        """The part of the text so far that can be sent now."""
        if not self.hold_back:
            self.streamed += piece
            return piece
        self.pending += piece
        # the earliest point from which the rest could still grow into a stop sequence
        cut = next(k for k in range(len(self.pending) + 1)
                   if any(s.startswith(self.pending[k:]) for s in self.stops))
        out, self.pending = self.pending[:cut], self.pending[cut:]
        self.streamed += out
        return out
