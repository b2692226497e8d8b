"""The serving loop's side of the elastic pool: ResizePool when the memory manager asks, and headroom
polled while no step runs (so a co-tenant taking memory is answered on an idle server too).

The loop owns one `PoolResizer`; each call returns the headroom reports it received, which the loop
feeds to the memory manager like any other reply's. A resize the shards refuse (a page still held: a
race with a batch the router already released) is retried a second later; a shard fault propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from chameleon_pb import chameleon_pb2

from chameleon.core.memory_manager import MemoryManager
from router.engine.shard_client import ShardClient, ShardError

log = logging.getLogger("router.engine")


class PoolResizer:
    def __init__(self, poll: bool, retry_s: float = 1.0, poll_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.poll = poll  # off without a headroom target, and for shards without GetHeadroom
        self.retry_s, self.poll_s, self._clock = retry_s, poll_s, clock
        self._retry_at = 0.0
        self.seconds = 0.0
        self.refusals = 0

    async def idle_headroom(self, client: ShardClient, last_report: float) -> list[chameleon_pb2.Headroom]:
        """GetHeadroom when the last report is older than `poll_s`; [] otherwise."""
        if not self.poll or self._clock() - last_report < self.poll_s:
            return []
        try:
            return await client.headroom()
        except ShardError as exc:
            if exc.code != "UNIMPLEMENTED":
                raise
            self.poll = False  # a generate.v3-only shard
            return []

    async def resize(self, client: ShardClient, memory: MemoryManager) -> list[chameleon_pb2.Headroom]:
        """ResizePool on every rank if the memory manager asks (send the shrink's offloads first)."""
        now = self._clock()
        pages = memory.resize_request()
        if pages is None or now < self._retry_at:
            return []
        t0 = time.perf_counter()
        try:
            replies = await client.resize_pool(pages)
        except ShardError as exc:
            if not exc.is_request_error:
                raise
            self.refusals += 1
            self._retry_at = now + self.retry_s
            log.warning("pool resize refused by the shards: %s", exc.detail)
            return []
        self.seconds += time.perf_counter() - t0
        memory.resized(min(r.num_pages for r in replies))
        log.info("pool resized", extra={"event": "pool_resized", "num_pages": pages,
                                         "released_bytes": sum(r.released_bytes for r in replies)})
        return [r.headroom for r in replies if r.HasField("headroom")]

    def stats(self) -> dict[str, Any]:
        return {"resize_seconds": self.seconds, "resize_failures": self.refusals}
