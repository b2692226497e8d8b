"""A child memory cgroup of this process's own, for the co-tenant scenario: the system under test
and the co-tenant run inside it, so the shards measure the cgroup's limit minus its usage
(shard/server/free_memory.py) and feel each other's memory without other tenants of the host
disturbing the measurement. cgroup v1 (memory hierarchy) or v2 (needs the memory controller
delegated to this process's cgroup); `MemoryCgroup.create` returns None where neither is writable.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own_dirs(root: Path) -> list[tuple[Path, str]]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if "memory" in controllers.split(","):
            out.append((root / "memory" / rel, "v1"))
        elif controllers == "":
            for base in (root, root / "unified"):
                if (base / "cgroup.controllers").exists():
                    out.append((base / rel, "v2"))
                    break
    return out


@dataclass(frozen=True, slots=True)
class MemoryCgroup:
    path: Path
    version: str  # "v1" or "v2"

    @classmethod
    def create(cls, name: str, root: Path = ROOT) -> MemoryCgroup | None:
        """A new child cgroup `name` with no limit yet; None when none can be created here."""
        for parent, version in _own_dirs(root):
            path = parent / name
            try:
                if version == "v2":
                    with contextlib.suppress(OSError):
                        (parent / "cgroup.subtree_control").write_text("+memory")
                path.mkdir(exist_ok=True)
                group = cls(path, version)
                group.set_limit(None)
                return group
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
        return None

    @property
    def _limit_file(self) -> Path:
        return self.path / ("memory.max" if self.version == "v2" else "memory.limit_in_bytes")

    def set_limit(self, nbytes: int | None) -> None:
        """The hard limit (None: unlimited)."""
        value = ("max" if self.version == "v2" else "-1") if nbytes is None else str(int(nbytes))
        self._limit_file.write_text(value)

    def working_set(self) -> int:
        """Usage minus reclaimable page cache (what shard/server/free_memory.py counts)."""
        usage = self.path / ("memory.current" if self.version == "v2" else "memory.usage_in_bytes")
        stat = self._stat()
        inactive = stat.get("inactive_file" if self.version == "v2" else "total_inactive_file", 0)
        return max(int(usage.read_text()) - inactive, 0)

    def _stat(self) -> dict[str, int]:
        out = {}
        with contextlib.suppress(OSError):
            for line in (self.path / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = int(value)
        return out

    def events(self) -> dict[str, int]:
        """Times the limit was hit and OOM kills inside the cgroup (what the scenario must keep at 0
        kills)."""
        if self.version == "v2":
            out = {}
            with contextlib.suppress(OSError):
                for line in (self.path / "memory.events").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    out[key] = int(value)
            return {"limit_hits": out.get("max", 0), "oom_kills": out.get("oom_kill", 0)}
        fail = 0
        with contextlib.suppress(OSError, ValueError):
            fail = int((self.path / "memory.failcnt").read_text())
        kills = 0
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    kills = int(line.split()[1])
        return {"limit_hits": fail, "oom_kills": kills}

    def join_argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside this cgroup (the shell joins it, then execs the command: same pid)."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path), *argv]

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def remove(self, wait_s: float = 10.0) -> None:
        """Remove the cgroup once its processes exited (waiting up to `wait_s`; left in place when some
        still run then)."""
        deadline = time.monotonic() + wait_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.pids():
            return
        with contextlib.suppress(OSError):
            self.path.rmdir()


def unique_name(prefix: str = "chameleon-co-tenant") -> str:
    return f"{prefix}-{os.getpid()}"
