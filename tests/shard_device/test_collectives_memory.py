"""Collectives on the process group's device (nccl: CUDA tensors only; gloo: host tensors, so two ranks
sharing one GPU over gloo work), and Warmup's CUDA measurement handing its cached blocks back before
free memory is read."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as tdist

from shard.model.dist import DistContext
from shard.model.runner import ModelRunner
from shard.server.servicer import ShardCore, collective_device
from tests.shard_device.fake_cuda import CUDA, fake_cuda

CPU = torch.device("cpu")


@pytest.mark.parametrize("backend,model,expected", [
    ("nccl", CUDA, CUDA), ("gloo", CUDA, CPU), ("gloo", CPU, CPU), ("cpu:gloo,cuda:nccl", CUDA, CPU),
    ("nccl", CPU, CPU)])
def test_collective_device_follows_the_group_backend(backend: str, model: torch.device,
                                                     expected: torch.device) -> None:
    assert collective_device(backend, model) == expected


class RecordingDist:
    """all_gather as two ranks would answer it (the other rank holds 5), recording what it was given."""

    world_size, rank, group = 2, 0, object()

    def __init__(self) -> None:
        self.given: list[torch.Tensor] = []

    def all_gather(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        self.given.append(t)
        return torch.cat([t, torch.full_like(t, 5)])


@pytest.mark.parametrize("backend,expected", [("nccl", CUDA), ("gloo", CPU)])
def test_agree_min_gathers_on_the_group_device(monkeypatch: pytest.MonkeyPatch, backend: str,
                                               expected: torch.device) -> None:
    monkeypatch.setattr(tdist, "get_backend", lambda group: backend)
    dist = RecordingDist()
    core = SimpleNamespace(world=2, runner=SimpleNamespace(dist=dist, device=CUDA))
    with fake_cuda():
        values = ShardCore.agree_min(core, 9), ShardCore.agree_min(core, 3)
    assert values == (5, 3)
    assert {t.device for t in dist.given} == {expected}


def test_cuda_measurement_releases_its_cache_before_free_memory_is_read(
        monkeypatch: pytest.MonkeyPatch, lora_root: Path) -> None:
    calls: list[str] = []
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name: calls.append(_n))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: calls.append("allocated") or 1000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: calls.append("peak") or 5000)
    with fake_cuda():
        runner = ModelRunner(lora_root / "model", dtype=torch.bfloat16, device=CUDA,
                             dist=DistContext.single(), backend="torch")
        runner.allocate_pool(4)
        pool = runner.pool
        activation = runner.measure_activation_bytes(40)
    assert activation == 4000 and runner.pool is pool  # the scratch pool is gone, the real one back
    assert calls.index("empty_cache") < calls.index("reset_peak_memory_stats") < calls.index("allocated")
    assert calls[-1] == "empty_cache" and calls.index("peak") < len(calls) - 1
