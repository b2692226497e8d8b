"""ModelRunner: one forward over a mixed prefill/decode batch, plus the pool and adapter store.

The server builds a ForwardBatch from its Batch objects (slots from the router's blocks) and calls
`forward`; everything device-side (weights, the page pool, KV, adapters) lives behind this class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from shard.model.dist import DistContext


@dataclass(frozen=True, slots=True)
class ForwardBatch:
    """One step. Sequences appear in the same order in every per-sequence list.

    Invariants: len(input_ids) == len(positions) == len(slots) == sum(query_lens);
    context_lens[i] >= query_lens[i]; the new tokens of sequence i sit at positions
    context_lens[i]-query_lens[i] .. context_lens[i]-1; block_tables[i] covers context_lens[i] tokens;
    slots[t] = block_tables[i][pos // block_size] * block_size + pos % block_size.
    """

    input_ids: torch.Tensor        # [T] int64, the NEW tokens of every sequence, concatenated
    positions: torch.Tensor        # [T] int64, absolute position of each new token
    slots: torch.Tensor            # [T] int64, KV slot of each new token = block*block_size + offset
    query_lens: list[int]          # new tokens per sequence (prefill: prompt length, decode: 1)
    context_lens: list[int]        # tokens in KV after this step, per sequence (incl. new ones)
    block_tables: list[list[int]]  # page ids of each sequence (its KV blocks, in order)
    adapter_ids: list[str | None]  # per sequence; None = base model. Must be resident in the store.
    all_logits: list[bool]         # per sequence: also return logits of every new token (prefill logprobs)

    @classmethod
    def build(cls, input_ids: list[list[int]], context_lens: list[int], block_tables: list[list[int]],
              block_size: int, adapter_ids: list[str | None] | None = None,
              all_logits: list[bool] | None = None) -> ForwardBatch:
        """Convenience constructor: positions and slots computed from the block tables."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ForwardOutput:
    last_logits: torch.Tensor                  # [S, vocab] float32, logits of each sequence's last token
    all_logits: list[torch.Tensor | None]      # per sequence: [query_len, vocab] where requested


class ModelRunner:
    """Owns the model (this rank's shard), the page pool and the AdapterStore (`self.adapters`).

    Attributes: config (ModelConfig), shape (chameleon.memory.ModelShape), dtype, device, dist,
    block_size, weight_bytes (this rank's parameter bytes), page_bytes (one pool page on this rank),
    vocab_size, num_pages (0 until allocate_pool).
    """

    def __init__(self, model_dir: str | Path, *, dtype: torch.dtype, device: str | torch.device,
                 dist: DistContext, num_pages: int | None = None, block_size: int = 16) -> None:
        raise NotImplementedError

    def allocate_pool(self, num_pages: int) -> None:
        """(Re)allocate the pool of `num_pages` pages; page 0 is reserved (liveness). Drops resident
        adapters' pool copies, so call before loading adapters into pages."""
        raise NotImplementedError

    def forward(self, fb: ForwardBatch) -> ForwardOutput:
        """Run one step: writes the new tokens' K/V into their slots, returns full-vocab logits
        (gathered on every rank). Raises AdapterError if an adapter id is not resident."""
        raise NotImplementedError

    def measure_activation_bytes(self, max_prefill_tokens: int) -> int:
        """Peak extra bytes a forward of `max_prefill_tokens` prompt tokens needs (for Warmup sizing)."""
        raise NotImplementedError
