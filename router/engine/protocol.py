"""Which protocol the shards speak: Chameleon's own (generate.v3 + chameleon.v1.AdapterService) or
plain TGI generate.v3 (an unmodified `text-generation-server`, or `chameleon shard --protocol generate.v3`).

The engine probes rank 0 once at start (ListAdapters): UNIMPLEMENTED means the AdapterService is
missing and the router serves in v3-only mode (see `V3_ONLY_WARNING`); any other failure is a broken
shard, not a protocol answer.
"""

from __future__ import annotations

from typing import Literal

ShardProtocol = Literal["chameleon.v1", "generate.v3"]
CHAMELEON_V1: ShardProtocol = "chameleon.v1"
GENERATE_V3: ShardProtocol = "generate.v3"

V3_ONLY_WARNING = (
    "the shards speak only TGI generate.v3 (no chameleon.v1.AdapterService): the shard loads the adapter "
    "each request names by itself, the router's adapter cache is off (--adapter-cache is ignored), "
    "adapters take no router pool pages and no memory headroom is reported")


def protocol_for_probe(status_code: str | None) -> ShardProtocol | None:
    """The protocol a probe's outcome shows: None status (it answered) = chameleon.v1, UNIMPLEMENTED =
    generate.v3; any other status code is no answer (None: the caller raises the shard's error)."""
    if status_code is None:
        return CHAMELEON_V1
    if status_code == "UNIMPLEMENTED":
        return GENERATE_V3
    return None


def protocol_warnings(protocol: ShardProtocol) -> tuple[str, ...]:
    """What /info and the start-up log say about serving with `protocol`."""
    return (V3_ONLY_WARNING,) if protocol == GENERATE_V3 else ()
