"""Measured free memory: cgroup v2 and v1 limits (the tightest on the path wins, page cache is not
usage), MemAvailable where no limit is set, VmRSS; and the headroom a rank reports."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from shard.server.free_memory import FreeMemoryProbe, cgroup_free, meminfo, process_rss
from shard.server.headroom import DeviceMemory, measure_headroom

MIB = 1 << 20


def _write(d: Path, **files: object) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (d / name.replace("_", ".", 1)).write_text(f"{value}\n")


def test_cgroup_v2_limit_minus_working_set(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root, memory_max="max", memory_current=50 * MIB)
    _write(root / "svc" / "job", memory_max=1024 * MIB, memory_current=300 * MIB)
    (root / "svc" / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {100 * MIB}\n")
    _write(root / "svc", memory_max="max", memory_current=900 * MIB)
    proc = tmp_path / "cgroup"
    proc.write_text("0::/svc/job\n")
    got = cgroup_free(proc, root)
    assert got is not None and got.source == "cgroup-v2"
    assert (got.free_bytes, got.total_bytes) == (1024 * MIB - 200 * MIB, 1024 * MIB)


def test_cgroup_v2_limit_above_a_leaf_without_one(tmp_path: Path) -> None:
    """The leaf has no memory.max (controller not enabled for it) or does not exist under the mount (a
    container without a cgroup namespace): the enclosing limit still applies."""
    root = tmp_path / "cg"
    _write(root, cgroup_controllers="cpu memory")
    _write(root / "ct", memory_max=2048 * MIB, memory_current=500 * MIB)
    (root / "ct" / "job").mkdir()
    proc = tmp_path / "cgroup"
    for leaf in ("/ct/job", "/ct/gone/job"):
        proc.write_text(f"0::{leaf}\n")
        got = cgroup_free(proc, root)
        assert got is not None and (got.free_bytes, got.total_bytes) == (1548 * MIB, 2048 * MIB), leaf


def test_cgroup_v1_tightest_ancestor_wins(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    mem = root / "memory"
    _write(mem, memory_limit_in_bytes=9223372036854771712, memory_usage_in_bytes=1)
    _write(mem / "a", memory_limit_in_bytes=500 * MIB, memory_usage_in_bytes=450 * MIB)
    _write(mem / "a" / "b", memory_limit_in_bytes=2048 * MIB, memory_usage_in_bytes=100 * MIB)
    proc = tmp_path / "cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/a/b\n0::/\n")
    got = cgroup_free(proc, root)
    assert got is not None and got.source == "cgroup-v1"
    assert (got.free_bytes, got.total_bytes) == (50 * MIB, 500 * MIB)


def test_no_limit_means_none(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root / "memory", memory_limit_in_bytes=9223372036854771712, memory_usage_in_bytes=5)
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/\n")
    assert cgroup_free(proc, root) is None
    assert cgroup_free(tmp_path / "missing", root) is None


def test_meminfo_and_rss(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\n")
    got = meminfo(f)
    assert (got.free_bytes, got.total_bytes, got.source) == (600 * 1024, 1000 * 1024, "meminfo")
    assert process_rss() > 10 * MIB and process_rss(os.getpid()) > 0 and process_rss(999_999_999) == 0


def test_probe_caches_and_headroom_carries_the_measurement() -> None:
    probe = FreeMemoryProbe(torch.device("cpu"), ttl_s=60.0)
    first = probe.measure()
    assert probe.measure() is first and probe.measure(force=True) is not first
    mem = DeviceMemory(torch.device("cpu"), 1 << 30, probe=probe)
    pool = type("P", (), {"allocated_pages": 6, "segment_pages": 2})()
    room = measure_headroom(mem, 0, 10, 100, [1, 2], [], 0, pool=pool)
    assert room.free_source in ("meminfo", "cgroup-v1", "cgroup-v2") and room.free_device_bytes > 0
    assert room.resident_bytes > 10 * MIB and room.pool_pages_allocated == 6 and room.segment_pages == 2
    assert room.pool_allocated_bytes == 600 and room.kv_pages_used == 3  # + reserved page 0
    budget = DeviceMemory(torch.device("cpu"), 1000, measured=False)
    room = measure_headroom(budget, 0, 10, 100, [], [], 400)
    assert (room.free_device_bytes, room.total_device_bytes, room.free_source) == (600, 1000, "budget")


def test_cuda_free_counts_what_the_caching_allocator_holds(monkeypatch) -> None:
    """CUDA (faked): free = mem_get_info's free + reserved - allocated; resident = reserved."""
    from shard.server import free_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000 * MIB, 8000 * MIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 700 * MIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 500 * MIB)
    dev = torch.device("cuda", 0)
    got = free_memory.cuda_free(dev)
    assert (got.free_bytes, got.total_bytes, got.source) == (1200 * MIB, 8000 * MIB, "cuda")
    assert free_memory.resident_bytes(dev) == 700 * MIB
    free, resident = FreeMemoryProbe(dev).measure()
    assert free.free_bytes == 1200 * MIB and resident == 700 * MIB
