"""The device check itself (tests/shard_device/fake_cuda.py): it refuses what a CUDA kernel refuses (the
bugs of issue 18 among them) and lets through what CUDA accepts, computing the real values."""

from __future__ import annotations

import pytest
import torch

from tests.shard_device.fake_cuda import CUDA, DeviceMixError, FakeCudaTensor, fake_cuda, host


def _logits() -> torch.Tensor:
    return torch.randn(3, 11, generator=torch.Generator().manual_seed(0)).to(CUDA)


REFUSED = {
    "cpu index gathered from cuda logits": lambda x: x.gather(1, torch.tensor([[0], [1], [2]])),
    "cpu bincount subtracted from cuda logits": lambda x: x[0] - torch.bincount(torch.tensor([1, 2]),
                                                                                 minlength=11),
    "cpu generator handed to multinomial": lambda x: torch.multinomial(
        torch.softmax(x[0], -1), 1, generator=torch.Generator().manual_seed(1)),
    "cpu rows in a cuda cat": lambda x: torch.cat([x, torch.zeros(1, 11)]),
    "cpu values put into cuda rows": lambda x: x.index_put_((torch.tensor([0], device=CUDA),),
                                                            torch.zeros(1, 11)),
    "cpu weight times cuda activations": lambda x: x @ torch.ones(11, 2),
    "cuda tensor drawn with a cpu generator": lambda x: torch.randn(
        3, generator=torch.Generator().manual_seed(1), device=CUDA),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_ops_that_mix_devices_are_refused(name: str) -> None:
    with fake_cuda(), pytest.raises(DeviceMixError):
        REFUSED[name](_logits())


def test_what_cuda_accepts_runs_with_real_values() -> None:
    with fake_cuda() as mode:
        x = _logits()
        real = host(x).clone()
        picked = x[torch.tensor([0, 2])]  # cpu index tensors are fine in indexing
        shifted = x + torch.tensor(1.5)  # a cpu zero-dim tensor is a scalar
        moved = torch.arange(3).to(CUDA) * 2  # explicit copies cross devices
        x[1, torch.tensor([3])] = 7.0
        x[2:, :2] = torch.zeros(1, 2, device=CUDA)
        ids = torch.tensor([4, 4, 9], device=CUDA)
        counts = torch.bincount(ids, minlength=11)
        values = (picked.tolist(), int(x.argmax(-1)[1]), counts.tolist(), moved.tolist())
        devices = {t.device for t in (picked, shifted, moved, counts, x.unique())}
    assert devices == {CUDA} and mode.checked > 10
    assert isinstance(picked, FakeCudaTensor) and not isinstance(torch.zeros(1), FakeCudaTensor)
    assert values[0] == real[[0, 2]].tolist() and values[1] == 3
    assert values[2] == [0, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0] and values[3] == [0, 2, 4]
    assert torch.equal(host(shifted), real + 1.5)
    assert host(x)[2, :2].tolist() == [0.0, 0.0] and float(host(x)[1, 3]) == 7.0


def test_fake_cuda_tensors_do_not_leak_out_of_the_mode() -> None:
    with fake_cuda():
        x = _logits()
    with pytest.raises(RuntimeError, match="outside fake_cuda"):
        x + 1
