"""Adapter management shared by HTTP (/v1/load_lora_adapter, /v1/unload_lora_adapter) and gRPC
(chameleon.v1.AdapterAdmin): names checked, engine errors mapped, actions logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from router.api.service import EngineLike
from router.engine.types import AdapterStatus, EngineError
from router.errors import ApiError, ValidationError, from_engine
from router.validation import check_adapter_name

log = logging.getLogger("chameleon.router.admin")


class AdapterAdmin:
    def __init__(self, engine: EngineLike) -> None:
        self.engine = engine

    def list(self) -> Sequence[AdapterStatus]:
        return self.engine.admin.list()

    def _checked(self, adapter_id: str) -> str:
        if not adapter_id:
            raise ValidationError("an adapter id is required")
        check_adapter_name(adapter_id)
        if not self.engine.known(adapter_id):
            raise ApiError(
                "not_found",
                f"unknown adapter {adapter_id!r}: no such adapter under --adapter-dir or on the shard",
            )
        return adapter_id

    async def load(self, adapter_id: str) -> tuple[AdapterStatus, int]:
        """Make the adapter resident (pre-warm). Returns its status and the load time in ns."""
        adapter_id = self._checked(adapter_id)
        t0 = time.perf_counter_ns()
        try:
            status = await self.engine.admin.load(adapter_id)
        except EngineError as exc:
            raise from_engine(exc) from exc
        except (KeyError, ValueError) as exc:
            raise ApiError("not_found", str(exc)) from exc
        elapsed = time.perf_counter_ns() - t0
        log.info(
            "adapter loaded",
            extra={"adapter_id": adapter_id, "pages": status.pages, "load_ms": elapsed / 1e6},
        )
        return status, elapsed

    async def unload(self, adapter_id: str) -> bool:
        """Drop the adapter from the cache; refused (409) while running requests use it."""
        adapter_id = self._checked(adapter_id)
        try:
            was_resident = await self.engine.admin.unload(adapter_id)
        except EngineError as exc:
            if exc.kind == "validation":
                raise ApiError("conflict", exc.message) from exc
            raise from_engine(exc) from exc
        log.info("adapter unloaded", extra={"adapter_id": adapter_id, "was_resident": was_resident})
        return was_resident
