"""When a request stops: max_new_tokens, EOS, stop sequences (TGI's StoppingCriteria)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from chameleon_pb import generate_pb2

LENGTH = generate_pb2.FINISH_REASON_LENGTH
EOS = generate_pb2.FINISH_REASON_EOS_TOKEN
STOP_SEQUENCE = generate_pb2.FINISH_REASON_STOP_SEQUENCE


@dataclass(slots=True)
class StoppingCriteria:
    """Mutable per-request stop state. `check` is called once per generated token with the token and
    its newly emitted text piece; it returns a finish reason or None.

    Stop sequences are matched on the generated text (a stop sequence split across tokens is found once
    its last character is emitted); the generated text keeps the stop sequence, as TGI does.
    `min_new_tokens` (TGIS): neither EOS nor a stop sequence ends the request before that many tokens
    (the sampler masks EOS out meanwhile); a stop sequence counts only when it ends in the new piece.
    """

    max_new_tokens: int
    eos_token_ids: frozenset[int]
    stop_sequences: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_new_tokens: int = 0
    generated: int = 0
    _tail: str = field(default="", repr=False)

    @classmethod
    def from_pb(cls, p: generate_pb2.StoppingCriteriaParameters,
                eos_token_ids: Iterable[int]) -> StoppingCriteria:
        stops = tuple(s for s in p.stop_sequences if s)
        return cls(max_new_tokens=int(p.max_new_tokens), eos_token_ids=frozenset(eos_token_ids),
                   stop_sequences=stops, ignore_eos=bool(p.ignore_eos_token),
                   min_new_tokens=int(p.chameleon.min_new_tokens))

    def check(self, token_id: int, piece: str) -> int | None:
        self.generated += 1
        early = self.generated < self.min_new_tokens
        if not self.ignore_eos and not early and token_id in self.eos_token_ids:
            return EOS
        if self.stop_sequences and piece:
            longest = max(len(s) for s in self.stop_sequences)
            self._tail = (self._tail + piece)[-(longest + len(piece)):]
            if not early and self._stop_in_piece(len(piece)):
                return STOP_SEQUENCE
        if self.generated >= self.max_new_tokens:
            return LENGTH
        return None

    def _stop_in_piece(self, n_piece: int) -> bool:
        """A stop sequence ends within the last `n_piece` characters of the tail."""
        tail = self._tail
        return any(tail.find(s, max(len(tail) - n_piece - len(s) + 1, 0)) != -1 for s in self.stop_sequences)
