"""A request's prompt size as Ray Serve's request router sees it: the HTTP body, no tokenizer.

The router weighs replicas by the prefill queued there (chameleon.core.affinity), so it needs the size
of the request it places. It has the body the Ingress forwards (TGI `inputs`; OpenAI `prompt` or the
chat `messages`' text) and, from the replicas' reports, their recent mean prompt in tokens. `PromptSizer`
turns characters into tokens by the ratio of the two means: tokens = chars x (mean prompt tokens the
replicas served) / (mean chars of the prompts routed). It needs no tokenizer and follows any model and
language; a single request may be off by its own chars-per-token, which only matters against the
queued work of whole replicas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def json_object(body: bytes) -> dict[str, Any] | None:
    """A request body as a JSON object (an empty body is {}); None when it is not one."""
    try:
        doc = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def prompt_chars(path: str, body: bytes) -> int | None:
    """Characters of the prompt text in a TGI or OpenAI request body (None: not a body we read)."""
    doc = json_object(body)
    if doc is None:
        return None
    route = path.split("?", 1)[0]
    if route.endswith("/chat/completions"):
        return _text_len(doc.get("messages"))
    if route.endswith("/completions"):
        return _text_len(doc.get("prompt"))
    return _text_len(doc.get("inputs"))


def _text_len(value: Any) -> int | None:
    """Characters of a string, a list of strings, chat messages or content parts (None: no text)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return _text_len(value.get("content", value.get("text")))
    if isinstance(value, list):
        parts = [n for n in (_text_len(v) for v in value) if n is not None]
        return sum(parts) if parts else None
    return None


@dataclass
class PromptSizer:
    """Mean characters per routed prompt (plain mean over the first 1/`weight` prompts, then a moving
    average with `weight`), and `tokens` from it."""

    weight: float = 0.02
    _mean_chars: float = field(default=0.0, repr=False)
    _n: int = field(default=0, repr=False)

    def observe(self, chars: int) -> None:
        self._n += 1
        self._mean_chars += (chars - self._mean_chars) * max(self.weight, 1.0 / self._n)

    def tokens(self, chars: int | None, mean_tokens: Sequence[float]) -> float | None:
        """Estimated prompt tokens of `chars` characters given the replicas' mean prompt tokens
        (zeros = not known); None when either mean is not known yet."""
        known = [t for t in mean_tokens if t > 0]
        if chars is None or not known or self._mean_chars <= 0:
            return None
        return chars * (sum(known) / len(known)) / self._mean_chars
