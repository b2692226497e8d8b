"""What is really free for this shard rank, measured (no configured budget involved).

CPU: the tightest memory cgroup limit on the path from this process's cgroup up to the root, minus
that cgroup's usage (cgroup v2 memory.max / memory.current, v1 memory.limit_in_bytes /
memory.usage_in_bytes; reclaimable page cache, `inactive_file`, is not counted as used, as kubelet's
working set does), and never more than the host's MemAvailable; where no limit is set, the host's
MemAvailable (of MemTotal). CUDA: `torch.cuda.mem_get_info`'s free bytes plus what torch's caching
allocator holds unused (reserved - allocated), since that memory serves our next allocation.
Resident bytes: this process's VmRSS (CPU) or the bytes torch reserved on the device (CUDA).

A `FreeMemoryProbe` re-reads at most every `ttl_s` seconds: replies come with every step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a page-rounded 2**63 - 1


@dataclass(frozen=True, slots=True)
class FreeMemory:
    free_bytes: int
    total_bytes: int
    source: str  # "cuda", "cgroup-v2", "cgroup-v1", "meminfo"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: Path, keys: tuple[str, ...]) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split(maxsplit=1) for line in lines if " " in line)
    for key in keys:
        if key in values:
            return int(values[key])
    return 0


def meminfo(path: Path = Path("/proc/meminfo")) -> FreeMemory:
    """Host MemAvailable of MemTotal (kB in the file)."""
    fields: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[name] = int(parts[0]) * 1024
    total = fields.get("MemTotal", 0)
    free = fields.get("MemAvailable", fields.get("MemFree", 0))
    return FreeMemory(free, total, "meminfo")


def _cgroup_dirs(proc_cgroup: Path, root: Path) -> list[tuple[Path, str]]:
    """(directory of this process's memory cgroup, version) candidates, v2 first. A v2 leaf counts even
    without memory.max (memory controller not enabled for it) or when missing (a container without its
    own cgroup namespace sees its cgroup at the mount's root): cgroup_free walks up to the limits."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    out: list[tuple[Path, str]] = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":
            for base in (root, root / "unified"):
                if (base / "cgroup.controllers").exists() or (base / rel / "memory.max").exists():
                    out.append((base / rel, "cgroup-v2"))
                    break
        elif "memory" in controllers.split(","):
            out.append((root / "memory" / rel, "cgroup-v1"))
    return sorted(out, key=lambda c: c[1] != "cgroup-v2")


def cgroup_free(proc_cgroup: Path = Path("/proc/self/cgroup"),
                root: Path = Path("/sys/fs/cgroup")) -> FreeMemory | None:
    """The tightest limited cgroup on this process's path: (limit - working set, limit); None when no
    cgroup on the path sets a limit (or none can be read)."""
    best: FreeMemory | None = None
    for leaf, version in _cgroup_dirs(proc_cgroup, root):
        v2 = version == "cgroup-v2"
        limit_f, usage_f = ("memory.max", "memory.current") if v2 else \
            ("memory.limit_in_bytes", "memory.usage_in_bytes")
        inactive = ("inactive_file",) if v2 else ("total_inactive_file", "inactive_file")
        d = leaf
        while True:
            limit, usage = _read_int(d / limit_f), _read_int(d / usage_f)
            if limit is not None and usage is not None and limit < UNLIMITED:
                used = max(usage - _stat_value(d / "memory.stat", inactive), 0)
                cand = FreeMemory(max(limit - used, 0), limit, version)
                if best is None or cand.free_bytes < best.free_bytes:
                    best = cand
            if d == root or d.parent == d or root not in d.parents:
                break
            d = d.parent
    return best


def host_free() -> FreeMemory:
    """CPU: the cgroup's room where a limit is set (capped by MemAvailable), else MemAvailable."""
    host = meminfo()
    cg = cgroup_free()
    if cg is None or cg.free_bytes >= host.free_bytes:
        return host
    return cg


def cuda_free(device: torch.device) -> FreeMemory:
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return FreeMemory(int(free) + max(int(cached), 0), int(total), "cuda")


def resident_bytes(device: torch.device, pid: int | str = "self") -> int:
    """CUDA: bytes torch reserved on the device; CPU: VmRSS of the process."""
    if device.type == "cuda":
        return int(torch.cuda.memory_reserved(device))
    return process_rss(pid)


def process_rss(pid: int | str = "self") -> int:
    """VmRSS of a process in bytes (0 when it cannot be read, e.g. it exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class FreeMemoryProbe:
    """Caches one measurement for `ttl_s` seconds (replies come with every step)."""

    def __init__(self, device: torch.device, ttl_s: float = 0.05) -> None:
        self.device, self.ttl_s = device, ttl_s
        self._at = -1e18
        self._last: tuple[FreeMemory, int] | None = None

    def measure(self, force: bool = False) -> tuple[FreeMemory, int]:
        """(free memory, this process's resident bytes)."""
        now = time.monotonic()
        if force or self._last is None or now - self._at >= self.ttl_s:
            free = cuda_free(self.device) if self.device.type == "cuda" else host_free()
            self._last, self._at = (free, resident_bytes(self.device, os.getpid())), now
        return self._last
