"""The engine tests' configuration over a real shard (processes come from tests/procs.py)."""

from __future__ import annotations

from pathlib import Path

from router.engine.config import EngineConfig
from tests.procs import PREFILL, ShardProc


def engine_config(shard: ShardProc, tiny_assets: Path, adapter_dir: Path | None,
                  **kw: object) -> EngineConfig:
    return EngineConfig(master_shard_uds_path=shard.uds, model_dir=tiny_assets / "model",
                        adapter_dir=adapter_dir, max_batch_prefill_tokens=PREFILL, **kw)  # type: ignore[arg-type]
