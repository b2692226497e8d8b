"""The router's tokenizer: `tokenizers.Tokenizer` from MODEL_DIR/tokenizer.json (no transformers, no torch).

Token counts decide validation and the KV reservation, so they must match what the shard computes
from the same text with special tokens; both read the same tokenizer.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from router.chat_template import ChatTemplate

log = logging.getLogger("chameleon.router.tokenize")


@dataclass(frozen=True, slots=True)
class Encoding:
    """Token ids of a text with the text piece and character span of each token."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]

    def truncated(self, keep_last: int) -> Encoding:
        """Keep the last `keep_last` tokens (TGI truncates prompts from the left)."""
        if keep_last >= len(self.ids):
            return self
        cut = len(self.ids) - keep_last
        return Encoding(self.ids[cut:], self.tokens[cut:], self.offsets[cut:])


class RouterTokenizer:
    """Encodes prompts, decodes token ids, renders chat templates."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --tokenizer must name a Hugging Face model folder with a tokenizer.json"
            )
        self.model_dir = model_dir
        self._tok = Tokenizer.from_file(str(path))
        config = _read_json(model_dir / "tokenizer_config.json")
        self.bos_token = _token_str(config.get("bos_token"))
        self.eos_token = _token_str(config.get("eos_token"))
        template = config.get("chat_template")
        if template is None and (model_dir / "chat_template.jinja").is_file():
            template = (model_dir / "chat_template.jinja").read_text()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat = ChatTemplate(template, bos_token=self.bos_token, eos_token=self.eos_token)
        self._adds_bos = self._detect_added_bos()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> Encoding:
        enc = self._tok.encode(text, add_special_tokens=True)
        return Encoding(tuple(enc.ids), tuple(enc.tokens), tuple(tuple(o) for o in enc.offsets))

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: list[int] | tuple[int, ...], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text for a chat. A leading BOS the template writes is dropped when encoding
        adds one anyway, so the prompt does not start with two."""
        text = self.chat.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)
        if self._adds_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        return text

    def _detect_added_bos(self) -> bool:
        if not self.bos_token:
            return False
        bos_id = self._tok.token_to_id(self.bos_token)
        ids = self._tok.encode("a", add_special_tokens=True).ids
        return bos_id is not None and bool(ids) and ids[0] == bos_id


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _token_str(value: Any) -> str | None:
    """tokenizer_config writes special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None
