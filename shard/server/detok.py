"""Incremental detokenization that never splits a UTF-8 character (TGI's decode_token).

Invariant: the concatenation of every emitted piece equals the decoding of all generated tokens (up to
the tokenizer's own clean-up of spaces). A token that ends inside a multi-byte character decodes to
U+FFFD; its piece is held back (empty) and emitted, complete, with a later token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(slots=True)
class DetokState:
    """Offsets into a request's full token list: text before `prefix` is never re-decoded; tokens in
    [prefix, read) were already emitted; tokens from `read` on are pending."""

    prefix: int
    read: int

    @classmethod
    def for_prompt(cls, prompt_len: int) -> DetokState:
        return cls(prefix=max(prompt_len - 5, 0), read=prompt_len)


def next_piece(tokenizer: Decoder, ids: list[int], state: DetokState) -> str:
    """Text newly completed by the last token(s) of `ids`; advances `state` only when text is emitted."""
    prefix_text = tokenizer.decode(ids[state.prefix:state.read], skip_special_tokens=False)
    new_text = tokenizer.decode(ids[state.prefix:], skip_special_tokens=False)
    if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
        state.prefix, state.read = state.read, len(ids)
        return new_text[len(prefix_text):]
    return ""
