"""The C CPU kernels (shard.model.cpu_kernels, shard.lora.cpu_bgmv) equal torch in float32, and the
torch fallback runs when they are disabled or do not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shard.lora import cpu_bgmv
from shard.lora.cpu_bgmv import CpuBgmv, TableCache
from shard.lora.store import LoraWeights
from shard.model import cpu_kernels
from shard.model.backend import torch_linear
from shard.model.cpu_kernels import CpuKernels

KERNELS = CpuKernels.load()
pytestmark = pytest.mark.skipif(KERNELS is None, reason="no gcc / AVX2+FMA on this machine")


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 32, 33])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (5, 3), (13, 7), (577, 579), (1536, 576), (96, 1536), (6, 8)])
def test_linear_equals_torch(m: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    y = KERNELS.linear(x, w, b, max_m=64)
    assert y is not None
    close(y, F.linear(x, w, b))
    y = KERNELS.linear(x, w, max_m=64)
    assert y is not None
    close(y, F.linear(x, w))


def test_linear_strided_rows_and_views() -> None:
    """Row-strided x and w (views of wider tensors) are handled in place."""
    x_big, w_big = torch.randn(8, 40), torch.randn(50, 40)
    x, w = x_big[:, 3:27], w_big[5:45, 10:34]
    assert not x.is_contiguous() and not w.is_contiguous()
    y = KERNELS.linear(x, w)
    assert y is not None
    close(y, F.linear(x, w))


def test_fallbacks_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(20, 12)
    assert KERNELS.linear(torch.randn(cpu_kernels.KERNEL_M + 1, 12), w) is None  # M above KERNEL_M
    assert KERNELS.linear(torch.randn(257, 12), w, max_m=1000) is None
    assert KERNELS.linear(torch.randn(12, 4).T, w) is None         # x column stride != 1
    assert KERNELS.linear(torch.randn(4, 12), torch.randn(12, 20).T) is None
    assert KERNELS.linear(torch.randn(4, 12, dtype=torch.float64), w.double()) is None
    assert KERNELS.linear(torch.randn(4, 12).bfloat16(), w.bfloat16()) is None
    for m in (1, 8, 33, 40):
        x = torch.randn(m, 12)
        close(KERNELS.small_linear(x, w), F.linear(x, w))
    monkeypatch.setenv("CHAMELEON_CPU_KERNELS", "0")
    assert CpuKernels.load() is None  # disabled: the runner's backend is torch ops
    x = torch.randn(8, 12)
    close(torch_linear(x, w), F.linear(x, w))  # the torch (w @ x.T) path


def test_small_linear_non_contiguous_input_matches() -> None:
    w, b = torch.randn(30, 17), torch.randn(30)
    for m in (1, 5, 33):
        x = torch.randn(17, m).T  # column stride m: the torch fallback
        close(KERNELS.small_linear(x, w, b), F.linear(x, w, b))


def _adapter(layers: int, ranks_in_out: dict[str, tuple[int, int, int]], g: torch.Generator,
             name: str) -> LoraWeights:
    mods = []
    for _ in range(layers):
        d = {}
        for mod, (r, k, n) in ranks_in_out.items():
            d[mod] = (torch.randn(r, k, generator=g), torch.randn(n, r, generator=g) * 0.1)
        mods.append(d)
    r0 = next(iter(ranks_in_out.values()))[0]
    return LoraWeights(name, r0, (r0,), tuple(mods), {})


@pytest.mark.parametrize("rows_per_seg", [[1] * 9, [1, 3, 2], [5], [2] * 3 + [33], [100, 1, 256]])
def test_lora_kernel_equals_torch(rows_per_seg: list[int]) -> None:
    g = torch.Generator().manual_seed(len(rows_per_seg))
    k, n = 37, 29
    ranks = [8, 3, 16, 128, 1, 9, 64, 5, 12]
    weights = [_adapter(2, {"q_proj": (ranks[i], k, n), "o_proj": (ranks[i], k, n)} if i % 2 == 0
                        else {"q_proj": (ranks[i], k, n)}, g, f"a{i}") for i in range(len(rows_per_seg))]
    t = sum(rows_per_seg)
    perm = torch.randperm(t, generator=g)  # scattered rows per adapter
    rows, start = [], 0
    for c in rows_per_seg:
        rows.append(perm[start:start + c])
        start += c
    cpu = CpuBgmv.build(KERNELS, weights, rows, t, TableCache(), 0, torch.device("cpu"), torch.float32)
    assert cpu is not None
    x_big = torch.randn(t, k + 4, generator=g)
    x = x_big[:, 2:2 + k]  # row-strided input
    for layer in range(2):
        for module in ("q_proj", "o_proj"):
            y_big = torch.randn(t, n + 6, generator=g)
            y = y_big[:, 3:3 + n]
            want, edges = y.clone(), (y_big[:, :3].clone(), y_big[:, 3 + n:].clone())
            for w, r in zip(weights, rows, strict=True):
                if module in w.layers[layer]:
                    a, b = w.layers[layer][module]
                    want[r] += (x[r] @ a.T) @ b.T
            assert cpu.apply(layer, module, x, y)
            close(y, want)
            assert torch.equal(y_big[:, :3], edges[0]) and torch.equal(y_big[:, 3 + n:], edges[1])
    assert not cpu.apply(0, "q_proj", torch.randn(k, t).T, torch.randn(t, n))  # column-strided x


def test_lora_kernel_not_built_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    w = _adapter(1, {"q_proj": (4, 8, 8)}, g, "a")
    args = (KERNELS, [w], [slice(0, 2)], 2, TableCache(), 0, torch.device("cpu"))
    assert CpuBgmv.build(*args, torch.float32) is not None
    assert CpuBgmv.build(*args, torch.bfloat16) is None
    n = cpu_bgmv.MAX_SEGMENT_ROWS + 1
    assert CpuBgmv.build(KERNELS, [w], [slice(0, n)], n, TableCache(), 0, torch.device("cpu"),
                         torch.float32) is None
    monkeypatch.setenv("CHAMELEON_CPU_KERNELS", "0")
    assert CpuKernels.load() is None  # no kernels to build it with


@pytest.mark.parametrize("m", [1, 2, 5, 6, 7, 8, 9, 13, 32, 100, 200])
@pytest.mark.parametrize(("n", "k"), [(1, 1), (13, 7), (37, 33), (96, 90), (576, 576), (24, 1536)])
def test_packed_linear_equals_torch(m: int, n: int, k: int) -> None:
    """Decode (one panel against every row) and prefill (panel pairs x 6 rows, blocks of rows) shapes, rows
    that do not fill the last panel, with and without bias."""
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    wp = cpu_kernels.pack(w)
    assert wp.shape == (-(-n // cpu_kernels.PANEL), k, cpu_kernels.PANEL)
    assert torch.equal(cpu_kernels.unpack(wp, n), w)
    close(KERNELS.packed_linear(x, wp, n, b), F.linear(x, w, b))
    close(KERNELS.packed_linear(x, wp, n), F.linear(x, w))


def test_packed_rows_and_torch_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedding lookups read the panels; with the kernels disabled after packing, torch computes the same
    product from the unpacked rows; row-strided inputs are handled."""
    w = torch.randn(21, 16)
    wp = cpu_kernels.pack(w)
    ids = torch.tensor([0, 20, 7, 8, 7])
    assert torch.equal(cpu_kernels.packed_rows(wp, ids), w[ids])
    x = torch.randn(6, 40)[:, 3:19]
    close(KERNELS.packed_linear(x, wp, 21), F.linear(x, w))
    x_cols = torch.randn(16, 6).T  # column-strided: the kernel does not apply, torch on the unpacked rows
    close(KERNELS.packed_linear(x_cols, wp, 21), F.linear(x_cols, w))
    monkeypatch.setenv("CHAMELEON_CPU_KERNELS", "0")
    assert CpuKernels.load() is None
