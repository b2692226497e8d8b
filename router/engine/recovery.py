"""Getting the shards back after a failure, without restarting the router.

The launcher restarts a dead shard group with the same arguments and leaves the router running, so
the engine must reconnect and re-warm by itself. The serving loop calls `recover` (through the engine,
which keeps the new facts) about twice a second while unhealthy (queued requests wait; new ones are
refused as `unavailable`), and applies the `RecoveryResult` itself:
  1. connect afresh (ServiceDiscovery on rank 0; the old channels may point at dead sockets);
  2. a rank without a pool (GetHeadroom: pool_pages_total == 0) was restarted: run start-up again
     (ClearCache, Info, Warmup) and report the new facts: the loop takes a fresh pool and cache of the
     new size (the queued requests move to a fresh scheduler when the size changed). Shards that speak
     only generate.v3 have no GetHeadroom: start-up always runs again (nothing runs on them after a
     failure, so a second Warmup is safe). Shards that come back speaking another protocol are refused;
  3. the liveness Prefill (block 0) proves a forward pass works; then the loop serves again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from router.engine.adapter_registry import AdapterRegistry
from router.engine.config import EngineConfig
from router.engine.health import HealthState
from router.engine.protocol import GENERATE_V3
from router.engine.shard_client import ShardClient, ShardError
from router.engine.startup import StartupError, adopt_shard_adapters, start_shards
from router.engine.types import EngineInfo

log = logging.getLogger("router.engine")


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """One attempt's outcome. `client`: the shards serve again through it (None: not yet; the attempt
    closed it). `info`: the restarted shards' facts after a new Warmup (None: not restarted); they
    stand even when the liveness check then failed, since the shards were warmed up."""

    client: ShardClient | None
    info: EngineInfo | None = None


async def recover(cfg: EngineConfig, info: EngineInfo, registry: AdapterRegistry) -> RecoveryResult | None:
    """One attempt; None when nothing changed (the shards cannot be reached or started)."""
    try:
        client = await ShardClient.connect(cfg.master_shard_uds_path, wait_s=1.0)
    except ShardError:
        return None
    fresh: EngineInfo | None = None
    try:
        if await _restarted(client, info.shard_protocol):
            facts = await start_shards(client, cfg)
            if (facts.info.block_size, facts.info.world_size) != (info.block_size, info.world_size):
                raise StartupError("the restarted shards have another block size or world size")
            if info.shard_protocol != GENERATE_V3:
                await adopt_shard_adapters(client, registry)
            fresh = replace(facts.info, model_id=info.model_id, shard_protocol=info.shard_protocol,
                            warnings=info.warnings)
        if not await HealthState(client, healthy=False).check():
            raise ShardError("liveness", 0, "the liveness Prefill failed")
    except (ShardError, StartupError) as exc:
        log.warning("shard recovery attempt failed: %s", exc)
        await client.close()
        return None if fresh is None else RecoveryResult(None, fresh)
    return RecoveryResult(client, fresh)


async def _restarted(client: ShardClient, protocol: str) -> bool:
    """Must start-up run again? Always for generate.v3-only shards; else when a rank has no pool."""
    now = await client.probe_protocol()
    if now != protocol:
        raise StartupError(f"the restarted shards speak {now}, not {protocol}; restart the router")
    if protocol == GENERATE_V3:
        return True
    return any(h.pool_pages_total == 0 for h in await client.headroom())
