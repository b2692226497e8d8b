"""The decode-step C kernels (shard.model.cpu_step) equal their torch references in float32 and leave
torch in charge when they do not apply or are disabled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shard.model.attention import AttentionMeta
from shard.model.backend import TorchBackend
from shard.model.cpu_backend import CpuKernelBackend
from shard.model.cpu_kernels import CpuKernels
from shard.model.rotary import apply_rotary

KERNELS = CpuKernels.load()
pytestmark = pytest.mark.skipif(KERNELS is None, reason="no gcc / AVX2+FMA on this machine")


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(1.0, b.abs().max().item()))


def ref_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize(("m", "h"), [(1, 8), (3, 13), (8, 576), (33, 100), (256, 64)])
def test_rms_norm_and_residual_add(m: int, h: int) -> None:
    g = torch.Generator().manual_seed(m * 100 + h)
    x_wide, w = torch.randn(m, h + 5, generator=g), torch.randn(h, generator=g)
    x = x_wide[:, 2:2 + h]  # row-strided view
    y = KERNELS.rms_norm(x, w, 1e-5)
    assert y is not None
    close(y, ref_norm(x, w, 1e-5))
    res = torch.randn(m, h, generator=g)
    want_sum = x + res
    y = KERNELS.rms_norm(x, w, 1e-6, res)
    assert y is not None
    close(res, want_sum)  # the sum, written into the residual in place
    close(y, ref_norm(want_sum, w, 1e-6))


@pytest.mark.parametrize(("m", "i"), [(1, 8), (4, 13), (8, 1536), (40, 7)])
def test_silu_mul(m: int, i: int) -> None:
    gu = torch.randn(m, 2 * i, generator=torch.Generator().manual_seed(m + i)) * 6
    gu[0, 0], gu[-1, -1] = -120.0, 95.0  # exp clamping at both ends
    gate, up = gu[:, :i], gu[:, i:]
    y = KERNELS.silu_mul(gate, up)
    assert y is not None
    close(y, F.silu(gate) * up)


def cos_sin(positions: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    emb = torch.cat([positions[:, None].float() * inv] * 2, dim=-1)
    return emb.cos()[:, None, :], emb.sin()[:, None, :]


def packed_qkv(t: int, hq: int, hk: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=torch.Generator().manual_seed(seed))
    q, k, v = qkv[:, :hq * d], qkv[:, hq * d:(hq + hk) * d], qkv[:, (hq + hk) * d:]
    return qkv, *(x.unflatten(-1, (-1, d)) for x in (q, k, v))


@pytest.mark.parametrize(("hq", "hk", "d", "bs"), [(9, 3, 64, 16), (4, 4, 8, 1), (8, 2, 24, 5), (2, 1, 6, 4)])
def test_rope_store(hq: int, hk: int, d: int, bs: int) -> None:
    t, pages = 7, 12
    _, q, k, v = packed_qkv(t, hq, hk, d, seed=hq + d)
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    cos, sin = cos_sin(torch.tensor([0, 3, 17, 5, 40, 1, 9]), d)
    slots = torch.randperm(pages * bs, generator=torch.Generator().manual_seed(1))[:t]
    pool = torch.randn(pages, 2, bs, hk, d)  # pages interleave K and V, as the pool does
    kc, vc = pool[:, 0], pool[:, 1]
    before = pool.clone()
    assert KERNELS.rope_store(q, k, v, cos, sin, slots, kc, vc)
    close(q, apply_rotary(q0, cos, sin))
    close(k, apply_rotary(k0, cos, sin))
    want = before.clone()
    want[:, 0][slots // bs, slots % bs] = apply_rotary(k0, cos, sin)
    want[:, 1][slots // bs, slots % bs] = v0
    close(pool, want)
    bad = slots.clone()
    bad[-1] = pages * bs
    with pytest.raises(IndexError):
        KERNELS.rope_store(q, k, v, cos, sin, bad, kc, vc)


def ref_decode(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, table: list[int], n: int) -> torch.Tensor:
    """q [Hq, D] over the first n slots of the blocks in table -> [Hq * D]."""
    keys = kc[table].flatten(0, 1)[:n].transpose(0, 1)  # [Hk, n, D]
    vals = vc[table].flatten(0, 1)[:n].transpose(0, 1)
    o = F.scaled_dot_product_attention(q[:, None, :], keys, vals, enable_gqa=True)  # [Hq, 1, D]
    return o.flatten()


@pytest.mark.parametrize(("hq", "hk", "d", "bs"),
                         [(9, 3, 64, 16), (4, 4, 8, 16), (8, 2, 32, 5), (16, 1, 16, 1), (6, 3, 128, 7)])
def test_decode_attention(hq: int, hk: int, d: int, bs: int) -> None:
    g = torch.Generator().manual_seed(hq * 7 + bs)
    lens = [1, bs, bs + 1, 3 * bs - 1, 70, 33]  # contexts on and off block boundaries, longer than a chunk
    pages = 4 + sum(-(-n // bs) for n in lens)
    pool = torch.randn(pages, 2, bs, hk, d, generator=g)
    kc, vc = pool[:, 0], pool[:, 1]
    perm = torch.randperm(pages - 1, generator=g) + 1
    tables, used = [], 0
    for n in lens:
        need = -(-n // bs)
        tables.append(perm[used:used + need].tolist())  # scattered, disjoint pages
        used += need
    width = max(map(len, tables))
    padded = torch.tensor([t + t[:1] * (width - len(t)) for t in tables])
    q = torch.randn(len(lens), hq * 3, d, generator=g)[:, hq:2 * hq]  # strided rows
    out = KERNELS.decode_attention(q, kc, vc, padded, torch.tensor(lens), None, None)
    assert out is not None
    for s, n in enumerate(lens):
        close(out[s], ref_decode(q[s], kc, vc, tables[s], n))
    # decode rows among other rows: only those rows are written
    rows = torch.tensor([5, 0, 2, 7, 3, 6])
    q_all = torch.randn(8, hq, d, generator=g)
    out_all = torch.full((8, hq * d), 7.0)
    assert KERNELS.decode_attention(q_all, kc, vc, padded, torch.tensor(lens), rows, out_all) is out_all
    for s, n in enumerate(lens):
        close(out_all[rows[s]], ref_decode(q_all[rows[s]], kc, vc, tables[s], n))
    assert (out_all[[1, 4]] == 7.0).all()
    padded[2, 1] = pages  # outside the pool
    with pytest.raises(IndexError):
        KERNELS.decode_attention(q, kc, vc, padded, torch.tensor(lens), None, None)


def test_paged_attention_mixed_batch_equals_torch_path() -> None:
    """A batch of decode rows and prefills (fresh and with context) through the kernels and through torch."""
    hq, hk, d, bs, pages = 6, 2, 16, 4, 30
    g = torch.Generator().manual_seed(3)
    query_lens, context_lens = [1, 5, 1, 3, 1], [9, 5, 2, 10, 4]
    tables = [[3, 7, 11], [1, 2], [20], [4, 5, 6], [25]]
    slots = torch.tensor([tables[i][pos // bs] * bs + pos % bs
                          for i, (q, c) in enumerate(zip(query_lens, context_lens, strict=True))
                          for pos in range(c - q, c)])
    t = sum(query_lens)
    pool0 = torch.randn(pages, 2, bs, hk, d, generator=g)
    _, q0, k0, v0 = packed_qkv(t, hq, hk, d, seed=5)
    cos, sin = cos_sin(torch.arange(t), d)
    outs, pools = [], []
    assert KERNELS is not None
    for kernels, ops in (("1", CpuKernelBackend(KERNELS)), ("0", TorchBackend())):
        pool = pool0.clone()
        qkv = torch.cat([x.flatten(1) for x in (q0, k0, v0)], dim=1)
        q, k, v = (qkv[:, a * d:b * d].unflatten(-1, (-1, d)) for a, b in ((0, hq), (hq, hq + hk),
                                                                            (hq + hk, hq + 2 * hk)))
        meta = AttentionMeta.build(slots, query_lens, context_lens, tables, bs, torch.device("cpu"),
                                   torch.float32)
        q_in = q
        q, k = ops.rope_store(q, k, v, cos, sin, (pool[:, 0], pool[:, 1]), meta)
        stored = q is q_in  # the C kernel rotates in place and writes the slots in the same call
        assert stored == (kernels == "1")
        outs.append(ops.attention(q, k, v, (pool[:, 0], pool[:, 1]), meta))
        pools.append(pool)
    close(outs[0], outs[1])
    close(pools[0], pools[1])


def test_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w = torch.randn(4, 8), torch.randn(8)
    assert KERNELS.rms_norm(x.double(), w.double(), 1e-5) is None
    assert KERNELS.rms_norm(x.T, w[:4], 1e-5) is None  # column stride != 1
    assert KERNELS.silu_mul(x.bfloat16(), x.bfloat16()) is None
    _, q, k, v = packed_qkv(3, 4, 2, 8, seed=0)
    kc = torch.zeros(5, 4, 2, 8)
    cos, sin = cos_sin(torch.arange(3), 8)
    slots = torch.tensor([1, 2, 3])
    assert not KERNELS.rope_store(q, k.clone(), v, cos, sin, slots, kc, kc.clone())  # k not packed after q
    q12 = torch.randn(2, 4, 12)
    assert KERNELS.decode_attention(q12, torch.zeros(5, 4, 2, 12), torch.zeros(5, 4, 2, 12),
                                     torch.ones(2, 1, dtype=torch.int64), torch.ones(2, dtype=torch.int64),
                                     None, None) is None  # head dim not a multiple of 8
    monkeypatch.setenv("CHAMELEON_CPU_KERNELS", "0")
    assert CpuKernels.load() is None  # disabled: the runner's backend is torch ops


@pytest.mark.parametrize(("s", "v"), [(1, 5), (8, 49152), (3, 1001)])
def test_lse_argmax(s: int, v: int) -> None:
    x = torch.randn(s, v + 3, generator=torch.Generator().manual_seed(v))[:, :v] * 8  # strided rows
    x[0, v // 2] = x[0, v - 1] = 100.0  # tie: the first index wins, as torch.argmax
    if s > 1:
        x[1] = float("-inf")
        x[1, v - 1] = -3.0
    got = KERNELS.lse_argmax(x)
    assert got is not None
    close(got[0], torch.logsumexp(x, -1))
    assert got[1] == torch.argmax(x, -1).tolist()
    x[-1, 0] = float("nan")
    assert KERNELS.lse_argmax(x) is None  # torch decides NaN rows
