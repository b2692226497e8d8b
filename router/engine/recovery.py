"""Getting the shards back after a failure, without restarting the router.

The launcher restarts a dead shard group with the same arguments and leaves the router running, so
the engine must reconnect and re-warm by itself. The serving loop calls `recover` about twice a
second while unhealthy (queued requests wait; new ones are refused as `unavailable`):
  1. connect afresh (ServiceDiscovery on rank 0; the old channels may point at dead sockets);
  2. a rank without a pool (GetHeadroom: pool_pages_total == 0) was restarted: run start-up again
     (ClearCache, Info, Warmup) and give the loop a fresh pool and cache of the new size (the queued
     requests move to a fresh scheduler when the size changed). Shards that speak only generate.v3
     have no GetHeadroom: start-up always runs again (nothing runs on them after a failure, so a
     second Warmup is safe). Shards that come back speaking another protocol are refused;
  3. the liveness Prefill (block 0) proves a forward pass works; then the loop serves again.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from router.engine.health import HealthState
from router.engine.protocol import GENERATE_V3
from router.engine.shard_client import ShardClient, ShardError
from router.engine.startup import StartupError, start_shards

if TYPE_CHECKING:
    from router.engine.entry import Engine

log = logging.getLogger("router.engine")


async def recover(engine: Engine) -> bool:
    """One attempt; True when the shards serve again (the loop then uses the new client)."""
    loop, cfg = engine.loop, engine.config
    if loop is None or engine.info is None:
        return False
    try:
        client = await ShardClient.connect(cfg.master_shard_uds_path, wait_s=1.0)
    except ShardError:
        return False
    try:
        if await _restarted(client, engine.info.shard_protocol):
            facts = await start_shards(client, cfg)
            prev = engine.info
            if (facts.info.block_size, facts.info.world_size) != (prev.block_size, prev.world_size):
                raise StartupError("the restarted shards have another block size or world size")
            await engine._adopt_shard_adapters(client)
            engine.info = replace(facts.info, model_id=prev.model_id, shard_protocol=prev.shard_protocol,
                                  warnings=prev.warnings)
            engine._renew_memory(engine.info.num_pages)
        if not await HealthState(client, healthy=False).check():
            raise ShardError("liveness", 0, "the liveness Prefill failed")
    except (ShardError, StartupError) as exc:
        log.warning("shard recovery attempt failed: %s", exc)
        await client.close()
        return False
    old = loop.client
    loop.rebind(client)
    await old.close()
    log.info("shards recovered", extra={"event": "shards_recovered"})
    return True


async def _restarted(client: ShardClient, protocol: str) -> bool:
    """Must start-up run again? Always for generate.v3-only shards; else when a rank has no pool."""
    now = await client.probe_protocol()
    if now != protocol:
        raise StartupError(f"the restarted shards speak {now}, not {protocol}; restart the router")
    if protocol == GENERATE_V3:
        return True
    return any(h.pool_pages_total == 0 for h in await client.headroom())
