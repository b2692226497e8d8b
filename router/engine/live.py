"""A request while the engine holds it: its policy-core `Request`, its event stream, and the
conversion of shard `Generation`s into client events.

Stream memory: the loop task never blocks on a consumer (one slow reader must not stall the batch), so
a stream's buffer is a plain deque. It is bounded by the request itself: at most one PrefillEvent,
`max_new_tokens` TokenEvents and one FinalEvent/error; with `max_concurrent_requests` in flight the
total is bounded too. A consumer that goes away cancels the request (see `Engine.generate`).

Squash replay: a squashed request re-runs from scratch with the same seed (the engine always sends
one). Tokens the client already got are not sent again: the first `streamed` tokens of the re-run
are swallowed (`replay_skip`); `diverged` counts re-runs whose swallowed tokens differ.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from chameleon_pb import generate_pb2

from chameleon.core.request import Request
from router.engine.types import (
    EngineError,
    Event,
    FinalEvent,
    FinishReason,
    GenerateRequest,
    PrefillEvent,
    TokenEvent,
    TopToken,
)

_FINISH: dict[int, FinishReason] = {0: "length", 1: "eos_token", 2: "stop_sequence"}
_END = object()


class RequestStream:
    """One producer (the loop task), one consumer. `get()` returns events until the end, then None."""

    __slots__ = ("_error", "_items", "_waiter", "done")

    def __init__(self) -> None:
        self._items: deque[object] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: EngineError | None = None
        self.done = False

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def push(self, event: Event) -> None:
        self._items.append(event)
        self._wake()

    def close(self, error: EngineError | None = None) -> None:
        if not self.done:
            self.done, self._error = True, error
            self._items.append(_END)
            self._wake()

    async def get(self) -> Event | None:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        item = self._items.popleft()
        if item is _END:
            self._items.append(_END)
            if self._error is not None:
                raise self._error
            return None
        return item  # type: ignore[return-value]


class Live:
    """Engine-side state of one request (queued or running)."""

    __slots__ = ("arrival", "batch_id", "core", "diverged", "first_admitted", "prefill_sent", "replay_skip",
                 "replayed", "req", "seed", "sent_ids", "stream")

    def __init__(self, core: Request, req: GenerateRequest, seed: int, arrival: float) -> None:
        self.core, self.req, self.seed, self.arrival = core, req, seed, arrival
        self.stream = RequestStream()
        self.batch_id: int | None = None
        self.first_admitted: float | None = None
        self.prefill_sent = False
        self.sent_ids: list[int] = []
        self.replay_skip = 0
        self.replayed = 0
        self.diverged = False

    @property
    def rid(self) -> int:
        return self.core.id

    def squashed(self) -> None:
        """Stopped mid-run; it will re-run from scratch and swallow what was already streamed."""
        self.batch_id = None
        self.replay_skip, self.replayed = len(self.sent_ids), 0
        self.core.generated = 0

    def on_generation(self, gen: generate_pb2.Generation, now: float) -> bool:
        """Push the events of one step; returns True when the request finished."""
        p = self.req.params
        if p.prefill_logprobs and not self.prefill_sent and gen.HasField("prefill_tokens"):
            self.stream.push(PrefillEvent(_tops(gen.prefill_tokens)))
        self.prefill_sent = True
        toks = gen.tokens
        for i, tid in enumerate(toks.ids):
            self.core.generated += 1
            if self.replayed < self.replay_skip:
                self.diverged |= self.sent_ids[self.replayed] != tid
                self.replayed += 1
                continue
            top = _tops(gen.top_tokens[i]) if i < len(gen.top_tokens) else ()
            self.sent_ids.append(tid)
            self.stream.push(TokenEvent(tid, toks.texts[i] if i < len(toks.texts) else "",
                                        toks.logprobs[i] if i < len(toks.logprobs) else math.nan,
                                        bool(toks.is_special[i]) if i < len(toks.is_special) else False,
                                        top))
        if not gen.HasField("generated_text"):
            return False
        g = gen.generated_text
        admitted = self.first_admitted if self.first_admitted is not None else now
        self.stream.push(FinalEvent(
            generated_text=g.text, generated_tokens=g.generated_tokens,
            finish_reason=_FINISH.get(g.finish_reason, "length"),
            seed=g.seed if g.HasField("seed") else self.seed if p.do_sample else None,
            input_length=len(self.req.input_ids), queue_s=admitted - self.arrival,
            inference_s=now - admitted))
        self.stream.close()
        return True


def _tops(t: generate_pb2.Tokens) -> tuple[TopToken, ...]:
    n = len(t.ids)
    texts, lps, spec = t.texts, t.logprobs, t.is_special
    return tuple(TopToken(t.ids[i], texts[i] if i < len(texts) else "",
                          lps[i] if i < len(lps) else math.nan,
                          bool(spec[i]) if i < len(spec) else False) for i in range(n))
