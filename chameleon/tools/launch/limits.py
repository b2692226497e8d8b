"""The launcher's view of the router's limits: derived from config.json before anything starts.

The router derives the same values itself (chameleon.core.limits, same config.json); the launcher does it
first so that flags contradicting the model fail at once with a clear message, before the shards load.
"""

from __future__ import annotations

from pathlib import Path

from chameleon.core.limits import Limits, derive_limits, read_max_position_embeddings

LIMIT_FLAGS = ("--max-input-tokens", "--max-total-tokens", "--max-batch-prefill-tokens")


def flag_value(flags: tuple[str, ...], flag: str) -> int | None:
    """The last `FLAG N` or `FLAG=N` in a router command line (argparse's last-wins), as an int."""
    value: str | None = None
    for i, item in enumerate(flags):
        if item == flag and i + 1 < len(flags):
            value = flags[i + 1]
        elif item.startswith(flag + "="):
            value = item[len(flag) + 1:]
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"{flag} {value!r}: not an integer") from exc


def router_limits(router_flags: tuple[str, ...], model_dir: Path) -> Limits:
    """The limits the router will run with; ValueError naming the model's limit on a contradiction."""
    try:
        max_pos = read_max_position_embeddings(model_dir)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    given = [flag_value(router_flags, flag) for flag in LIMIT_FLAGS]
    return derive_limits(max_pos, *given)
