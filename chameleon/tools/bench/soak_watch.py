"""What `chameleon soak` watches while the load runs: the launched processes and their memory (RSS from
/proc), the router's health over time, and, at the end, the allocator's integrity as /metrics shows it.

Memory verdict per process: `settled` is the highest RSS of the first half of its life under load
(warm-up done: weights, pool, allocator caches at their working size); the process passes when its last
sample is within `tolerance` of that. A plateau passes; steady growth (a leak) does not.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), rest[0]


def _role(pid: int) -> str:
    """`router`, `shard-R` or `launcher` from the command line (and RANK) of a chameleon process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    words = [a.decode(errors="replace") for a in argv]
    if "router" in words:
        return "router"
    if "shard" in words:
        rank = "0"
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"RANK="):
                    rank = item[5:].decode()
        return f"shard-{rank}"
    return "launcher" if "launch" in words else "other"


def children(parent: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] == parent and st[1] != "Z":
                out.append(int(entry))
    return sorted(out)


def rss_bytes(pid: int) -> int | None:
    """RSS of a live process; None when it is gone (or exiting: its RSS reads 0)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") if pages else None


@dataclass(slots=True)
class ProcMemory:
    pid: int
    role: str
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the soak, RSS)

    def settled(self) -> int:
        """The highest RSS in the first half of the samples' time span."""
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        return max(rss for t, rss in self.samples if t <= (t0 + t1) / 2)

    def summary(self, tolerance: float) -> dict[str, object]:
        start, end, settled = self.samples[0][1], self.samples[-1][1], self.settled()
        growth = end / settled - 1 if settled else 0.0
        return {"pid": self.pid, "role": self.role, "from_s": round(self.samples[0][0], 1),
                "to_s": round(self.samples[-1][0], 1), "start_bytes": start, "settled_bytes": settled,
                "end_bytes": end, "growth_vs_settled": round(growth, 4),
                "ok": len(self.samples) < 3 or growth <= tolerance}


class MemoryWatch:
    """Samples the launcher and its children; a restarted shard is a new entry (new pid)."""

    def __init__(self, launcher_pid: int) -> None:
        self.launcher = launcher_pid
        self.procs: dict[int, ProcMemory] = {}

    def sample(self, t: float) -> None:
        for pid in [self.launcher, *children(self.launcher)]:
            rss = rss_bytes(pid)
            if rss is None:
                continue
            entry = self.procs.get(pid)
            if entry is None:
                entry = self.procs[pid] = ProcMemory(pid, "launcher" if pid == self.launcher else _role(pid))
            entry.samples.append((t, rss))

    def pids(self, role_prefix: str) -> list[int]:
        return [pid for pid in children(self.launcher) if _role(pid).startswith(role_prefix)]


# --- /metrics -----------------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def read_metrics(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """Every sample of the router's /metrics, keyed by name plus labels (`name{label="x"}`)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        text = resp.read().decode("utf-8", "replace")
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def integrity(metrics: dict[str, float]) -> dict[str, object]:
    """With nothing in flight: no KV page held (router and every shard: page 0 is the liveness page),
    adapter pages = the resident adapters' pages on the router and on every shard, and every resident
    adapter idle (idle pages = adapter pages: no refcount left behind)."""
    adapter_pages = metrics.get('chameleon_pool_pages{tenant="adapter"}', -1.0)
    resident = sum(v for k, v in metrics.items() if k.startswith("chameleon_adapter_resident_pages{"))
    shard_kv = {k: v for k, v in metrics.items() if k.startswith("chameleon_shard_kv_pages_used{")}
    shard_ad = {k: v for k, v in metrics.items() if k.startswith("chameleon_shard_adapter_pages_used{")}
    checks = {
        "no_request_in_flight": metrics.get("chameleon_requests_in_flight") == 0,
        "no_kv_page_held": metrics.get('chameleon_pool_pages{tenant="kv"}') == 0
        and all(v <= 1 for v in shard_kv.values()),
        "adapter_pages_match_resident": adapter_pages == resident
        and all(v == resident for v in shard_ad.values()),
        "no_refcount_left": metrics.get("chameleon_cache_idle_pages") == adapter_pages,
        "batch_empty": metrics.get("tgi_batch_current_size") == 0,
    }
    return {"ok": all(checks.values()), "checks": checks, "adapter_pages": adapter_pages,
            "resident_adapter_pages": resident,
            "resident_adapters": metrics.get("chameleon_resident_adapters")}
