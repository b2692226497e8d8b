"""How the router's CLI configures the engine (one frozen value, built by router/cli.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chameleon.core.headroom import DEFAULT_HEADROOM, HeadroomTarget

SCHEDULERS: tuple[str, ...] = ("chameleon", "fifo", "sjf")
ADAPTER_CACHES: tuple[str, ...] = ("chameleon", "lru", "fairshare", "none")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine settings. `model_id` defaults to the model folder's name. `max_input_tokens` and
    `max_total_tokens` None = the shard's choice at Warmup, capped by the pool it carves.
    """

    master_shard_uds_path: str
    model_dir: Path  # the --tokenizer MODEL_DIR: config.json gives the shape for adapter page math
    model_id: str = ""
    adapter_dir: Path | None = None
    scheduler: str = "chameleon"
    adapter_cache: str = "chameleon"
    max_concurrent_requests: int = 128
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_batch_prefill_tokens: int = 4096
    max_batch_size: int | None = None
    connect_timeout_s: float = 60.0
    recovery_timeout_s: float = 60.0  # queued requests wait this long for failed shards to come back
    seed: int = 0
    # free memory kept for co-tenants and activation spikes (chameleon/core/headroom.py); None: the
    # pool stays as warmed up
    memory_headroom: HeadroomTarget | None = DEFAULT_HEADROOM
    mlq: tuple[tuple[str, object], ...] = ()  # MlqConfig fields set on the command line (--mlq-*)

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose from {', '.join(SCHEDULERS)}")
        if self.adapter_cache not in ADAPTER_CACHES:
            raise ValueError(f"unknown adapter cache {self.adapter_cache!r}; "
                             f"choose from {', '.join(ADAPTER_CACHES)}")
        if self.max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be >= 1")
        if self.max_batch_prefill_tokens < 1:
            raise ValueError("max_batch_prefill_tokens must be >= 1")
