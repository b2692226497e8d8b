"""Cost and memory profile of one serving engine (model + accelerator + host link), as JSON.

The shipped profile `a40_llama7b()` is the paper's testbed: Llama-7B in float16 on one NVIDIA A40
48 GB over PCIe 4.0. Every constant carries its source in `sources` (printed by `chameleon simulate
--show-profile`). Other profiles load from JSON (`Profile.load`); the live system can write one from
its own measurements with `Profile.save`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Profile:
    """Memory (bytes) and step-cost (seconds) constants. See `chameleon.sim.cost` for the formulas."""

    name: str
    device_memory_bytes: int          # total accelerator memory
    weights_bytes: int                # base model weights
    activation_reserve_bytes: int     # activations, CUDA context, fragmentation: never pooled
    kv_bytes_per_token: int           # K and V of one token, all layers
    block_size: int                   # tokens per KV page; adapters occupy whole pages too
    adapter_bytes: dict[int, int]     # LoRA rank -> true adapter size in bytes
    step_overhead_s: float            # fixed cost of every iteration (scheduling, launches)
    weight_read_s: float              # floor of a step: streaming the weights once (memory bound)
    compute_s_per_token: float        # compute-bound cost per token processed (prefill or decode)
    lora_compute_per_rank: float      # extra compute of a token per unit of LoRA rank (fraction)
    kv_read_s_per_token: float        # decode: reading one context token's K and V
    h2d_bytes_per_s: float            # effective host-to-device bandwidth of an adapter load
    load_overhead_s: float            # fixed cost per adapter load
    length_scale: float               # trace lengths are multiplied by this to fit the testbed
    ref_input_tokens: int             # prompt length of the unloaded-TTFT calibration
    ref_ttft_s: dict[int, float]      # rank -> unloaded TTFT the profile was calibrated to
    sources: dict[str, str]           # field -> where its value comes from
    max_pool_tokens: int = 0          # cap on the pool in KV tokens (S-LoRA's max_total_token_num); 0 = none

    def __post_init__(self) -> None:
        positive = ("device_memory_bytes", "weights_bytes", "kv_bytes_per_token", "block_size",
                    "weight_read_s", "compute_s_per_token", "h2d_bytes_per_s", "length_scale")
        bad = [f for f in positive if not getattr(self, f) > 0]
        if bad:
            raise ValueError(f"profile {self.name!r}: {', '.join(bad)} must be > 0")
        if self.pool_bytes <= 0:
            raise ValueError(f"profile {self.name!r}: weights + activation reserve exceed device memory")
        if self.max_pool_tokens < 0 or (self.max_pool_tokens and self.max_pool_tokens < self.block_size):
            raise ValueError(f"profile {self.name!r}: max_pool_tokens must be 0 or >= block_size")
        if not self.adapter_bytes:
            raise ValueError(f"profile {self.name!r}: adapter_bytes needs at least one rank")

    @property
    def pool_bytes(self) -> int:
        """Memory left for the page pool (KV blocks and resident adapters)."""
        return self.device_memory_bytes - self.weights_bytes - self.activation_reserve_bytes

    @property
    def page_bytes(self) -> int:
        return self.block_size * self.kv_bytes_per_token

    @property
    def num_pages(self) -> int:
        pages = self.pool_bytes // self.page_bytes
        return min(pages, self.max_pool_tokens // self.block_size) if self.max_pool_tokens else pages

    def bytes_for_rank(self, rank: int) -> int:
        """True size of an adapter of this rank; ranks between known ones scale linearly from the
        nearest known rank (LoRA size is linear in rank)."""
        if rank in self.adapter_bytes:
            return self.adapter_bytes[rank]
        near = min(self.adapter_bytes, key=lambda r: abs(r - rank))
        return self.adapter_bytes[near] * rank // near

    def pages_for_rank(self, rank: int) -> int:
        return -(-self.bytes_for_rank(rank) // self.page_bytes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adapter_bytes"] = {str(k): v for k, v in self.adapter_bytes.items()}
        d["ref_ttft_s"] = {str(k): v for k, v in self.ref_ttft_s.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(d) - {"sources", "ref_ttft_s", "ref_input_tokens", "max_pool_tokens"})
        unknown = sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(f"profile JSON: missing fields {missing}, unknown fields {unknown}")
        data = dict(d)
        data["adapter_bytes"] = {int(k): int(v) for k, v in d["adapter_bytes"].items()}
        data["ref_ttft_s"] = {int(k): float(v) for k, v in d.get("ref_ttft_s", {}).items()}
        data.setdefault("ref_input_tokens", 0)
        data.setdefault("sources", {})
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot load profile {path}: {exc}") from None
