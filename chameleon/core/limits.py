"""Request-size limits derived from the model's config.json, by the rule of TGI's launcher.

TGI's launcher (v2) reads `max_position_embeddings` from config.json and caps it at 4,096
(`MAX_DEFAULT`) to save memory; a model without it gets 4,096. Then, for each flag left unset:
max_total_tokens = that capped value, max_input_tokens = max_total_tokens - 1,
max_batch_prefill_tokens = max_input_tokens + 50 (TGI: "some edge for block-size alignment"; TGI's
B * max_input_tokens under --max-batch-size B is not copied, since the shards reserve activation memory
for the whole prefill budget). Chameleon differs where TGI would refuse to start or the
shards would reserve too little: a given --max-total-tokens alone gives max_input_tokens = total - 1
(TGI keeps the capped value - 1, then fails its input < total check); a given --max-input-tokens at or
above the capped default raises max_total_tokens to the model's full context; a given
--max-batch-prefill-tokens P caps the derived max_input_tokens at P (the shards size their activation
reserve for P tokens, and TGI's router refuses max_input_tokens > P).

Flags that contradict the model are refused here (ValueError naming the model's limit): a total above
max_position_embeddings, an input not below the total, a prefill budget below a given input limit.
Pure: no torch, no I/O except `read_max_position_embeddings`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MAX_DEFAULT = 4096  # TGI's launcher caps the derived max_total_tokens here
PREFILL_EDGE = 50  # TGI: max_batch_prefill_tokens = max_input_tokens + 50


@dataclass(frozen=True, slots=True)
class Limits:
    """The three limits, and which of them were derived (not given as flags)."""

    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int
    max_position_embeddings: int | None
    derived: tuple[str, ...] = ()

    def describe(self) -> str:
        """One log line: 'max_input_tokens=2047 (derived), ...; model max_position_embeddings=2048'."""
        parts = [f"{name}={getattr(self, name)}{' (derived)' if name in self.derived else ''}"
                 for name in ("max_input_tokens", "max_total_tokens", "max_batch_prefill_tokens")]
        model = self.max_position_embeddings
        return ", ".join(parts) + f"; model max_position_embeddings={model if model else 'unknown'}"


def read_max_position_embeddings(model_dir: Path) -> int | None:
    """`max_position_embeddings` of MODEL_DIR/config.json (TGI also reads `max_seq_len`); None when the
    config has neither. OSError / ValueError when the file is missing or not JSON."""
    data = json.loads((model_dir / "config.json").read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{model_dir / 'config.json'}: not a JSON object")
    for key in ("max_position_embeddings", "max_seq_len"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def derive_limits(max_position_embeddings: int | None, max_input_tokens: int | None = None,
                  max_total_tokens: int | None = None, max_batch_prefill_tokens: int | None = None,
                  ) -> Limits:
    """Fill the unset limits from the model (see the module docstring); ValueError on contradictions."""
    mpe = max_position_embeddings
    capped = min(mpe, MAX_DEFAULT) if mpe else MAX_DEFAULT
    model = f"the model's max_position_embeddings is {mpe}" if mpe else "config.json gives no " \
        f"max_position_embeddings (default {MAX_DEFAULT})"
    if mpe and max_total_tokens is not None and max_total_tokens > mpe:
        raise ValueError(f"--max-total-tokens {max_total_tokens} is above what the model supports: {model}")
    if mpe and max_input_tokens is not None and max_input_tokens >= mpe:
        raise ValueError(f"--max-input-tokens {max_input_tokens} must be below {mpe}: {model}")
    derived: list[str] = []
    total = max_total_tokens
    if total is None:
        total = mpe if (mpe and max_input_tokens is not None and max_input_tokens >= capped) else capped
        derived.append("max_total_tokens")
    max_input = max_input_tokens
    if max_input is None:
        max_input = total - 1
        if max_batch_prefill_tokens is not None:
            max_input = min(max_input, max_batch_prefill_tokens)
        derived.append("max_input_tokens")
    if max_input >= total:
        raise ValueError(f"--max-input-tokens {max_input} must be smaller than max-total-tokens {total} "
                         f"({'derived; ' if 'max_total_tokens' in derived else ''}{model})")
    if max_input < 1:
        raise ValueError(f"max-total-tokens {total} leaves no room for a prompt ({model})")
    prefill = max_batch_prefill_tokens
    if prefill is None:
        prefill = max_input + PREFILL_EDGE
        derived.append("max_batch_prefill_tokens")
    if prefill < max_input:
        raise ValueError(f"--max-batch-prefill-tokens {prefill} must be >= max-input-tokens {max_input} "
                         "(a prompt is prefilled in one batch); lower --max-input-tokens or raise "
                         "--max-batch-prefill-tokens")
    return Limits(max_input, total, prefill, mpe, tuple(derived))
