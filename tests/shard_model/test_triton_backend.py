"""The Triton backend (shard.model.triton_backend) against TorchBackend, on CPU through Triton's interpreter.

The tiny model (2 layers, GQA 6/3 heads, 8 adapters of ranks 8..128 in scattered pool pages, some
tensors straddling pages) runs a short scenario (prefill with prompt logits, decode, prefill + decode in
one forward, a chunked prefill over cached context beside decode rows) once through each backend in float32;
logits agree within float32 rounding and the greedy tokens are identical. Every forward with adapter rows
went through the SGMV kernels (not the torch fallback), and attention through the Triton kernels.

TRITON_INTERPRET=1 is set by tests/shard_model/conftest.py (without CUDA) before triton is first imported.
The interpreter is slow: shapes and steps are few (seconds in all).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from shard.model.attention import AttentionMeta
from shard.model.dist import DistContext
from shard.model.runner import ModelRunner, select_backend
from shard.model.triton_backend import TritonBackend, TritonLora, triton_unavailable
from tests.shard_model.harness import BLOCK, Harness, Seq

CPU = torch.device("cpu")
NUM_PAGES = 1200  # the 8 adapters (model dtype, float32) and every sequence's blocks


def _runner(root: Path, backend: str) -> ModelRunner:
    return ModelRunner(root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                       num_pages=NUM_PAGES, block_size=BLOCK, adapter_dtype="model", backend=backend)


def _spy(backend: TritonBackend) -> dict[str, int]:
    """Counts the backend's LoRA kernels built and attention calls (kernel paths taken)."""
    seen = {"lora": 0, "attention": 0}
    build, attend = backend.lora_kernel, backend.attention

    def lora_kernel(*args: object, **kw: object) -> TritonLora | None:
        kernel = build(*args, **kw)  # type: ignore[arg-type]
        assert isinstance(kernel, TritonLora), "the SGMV kernels did not apply to this batch"
        seen["lora"] += 1
        return kernel

    def attention(*args: object, **kw: object) -> torch.Tensor:
        seen["attention"] += 1
        return attend(*args, **kw)  # type: ignore[arg-type]

    backend.lora_kernel = lora_kernel  # type: ignore[method-assign]
    backend.attention = attention  # type: ignore[method-assign]
    return seen


def _scenario(h: Harness) -> list[Seq]:
    a = [h.seq("s0", None, 5), h.seq("s1", "a8", 3), h.seq("s2", "a128", 4)]
    b = [h.seq("s3", "b16", 4)]
    late = h.seq("s4", "a64", 7)
    h.step(a, all_logits=True)                    # prefill (prompt logits too)
    h.step(a)                                     # decode: two adapters and a base row
    h.step(a + b)                                 # decode + prefill in one forward
    h.step([a[0], a[2], *b, late], chunk={"s4": 4})  # decode rows + a first prefill chunk
    h.step([a[0], a[2], *b, late])                # decode rows + the chunk over cached context
    return [*a, *b, late]


def test_triton_scenario_matches_torch_backend(tiny_root: Path) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "CPU Triton tests need TRITON_INTERPRET=1"
    torch_runner, triton_runner = _runner(tiny_root, "torch"), _runner(tiny_root, "triton")
    assert isinstance(triton_runner.backend, TritonBackend)
    seen = _spy(triton_runner.backend)
    want, got = Harness(torch_runner, tiny_root), Harness(triton_runner, tiny_root)
    want_seqs, got_seqs = _scenario(want), _scenario(got)
    assert seen["lora"] == 5 and seen["attention"] == 10, seen  # 5 forwards x 2 layers
    assert len(want.records) == len(got.records)
    for w, g in zip(want.records, got.records, strict=True):
        assert (w.name, w.tokens) == (g.name, g.tokens)
        torch.testing.assert_close(g.logits, w.logits, atol=2e-4, rtol=2e-4, msg=f"{g.name} {len(g.tokens)}")
    assert [s.tokens for s in got_seqs] == [s.tokens for s in want_seqs]


def test_triton_backend_choice() -> None:
    """Chosen by name on CPU under the interpreter; never chosen automatically for CPU tensors."""
    assert triton_unavailable(CPU) is None
    assert isinstance(select_backend(CPU, "triton"), TritonBackend)
    assert not isinstance(select_backend(CPU), TritonBackend)
    assert select_backend(CPU, "torch").name == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend(CPU, "cuda-magic")


def test_triton_refused_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in (triton_unavailable(CPU) or "")
    with pytest.raises(ValueError, match="triton backend is unavailable"):
        select_backend(CPU, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "interpreter" in (triton_unavailable(torch.device("cuda", 0)) or "")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in (triton_unavailable(torch.device("cuda", 0)) or "")
    assert select_backend(torch.device("cuda", 0)).name == "torch"  # fake CUDA tensors: torch ops


def test_flash_attn_only_for_fresh_16_bit_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """flash-attn (optional, used where it imports) takes batches of fresh prompts alone, in 16 bits; a
    batch with a decode row or cached context stays on the Triton kernels. A stand-in module records it."""
    calls: list[tuple] = []

    def flash_attn_varlen_func(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor,
                               cu_k: torch.Tensor, max_q: int, max_k: int,
                               causal: bool = False) -> torch.Tensor:
        calls.append((q.shape, k.shape, cu_q.tolist(), max_q, causal))
        return torch.zeros_like(q)

    fake = SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    backend = TritonBackend(flash=True)
    assert backend.flash is flash_attn_varlen_func and TritonBackend().flash is None
    hk, d, bs = 2, 16, 4
    k_cache = torch.zeros(8, bs, hk, d, dtype=torch.float16)
    v_cache = torch.zeros_like(k_cache)

    def attend(query_lens: list[int], context_lens: list[int], tables: list[list[int]],
               dtype: torch.dtype) -> None:
        t = sum(query_lens)
        slots = torch.tensor([tb[p // bs] * bs + p % bs
                              for q, c, tb in zip(query_lens, context_lens, tables, strict=True)
                              for p in range(c - q, c)])
        meta = AttentionMeta.build(slots, query_lens, context_lens, tables, bs, CPU, dtype)
        q = torch.randn(t, 2 * hk, d).to(dtype)
        k, v = torch.randn(t, hk, d).to(dtype), torch.randn(t, hk, d).to(dtype)
        out = backend.attention(q, k, v, (k_cache.to(dtype), v_cache.to(dtype)), meta)
        assert out.shape == (t, 2 * hk * d)

    attend([3, 5], [3, 5], [[1], [2, 3]], torch.float16)
    assert calls == [((8, 4, 16), (8, 2, 16), [0, 3, 8], 5, True)]
    attend([3, 1], [3, 6], [[1], [2, 3]], torch.float16)    # a decode row: Triton
    attend([2], [6], [[2, 3]], torch.float16)               # cached context: Triton
    attend([3, 5], [3, 5], [[1], [2, 3]], torch.float32)    # float32: Triton
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_rms_norm_matches_torch(dtype: torch.dtype) -> None:
    """The Triton backend's fused norm against TorchBackend's (the residual sum written in place)."""
    from shard.model.backend import TorchBackend
    from shard.model.triton_norm import rms_norm

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 96, generator=gen).to(dtype)
    res = torch.randn(5, 96, generator=gen).to(dtype)
    w = (1 + 0.1 * torch.randn(96, generator=gen)).to(dtype)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-3, "rtol": 2e-3}
    torch.testing.assert_close(rms_norm(x, w, 1e-5), TorchBackend().rms_norm(x, w, 1e-5), **tol)
    got_res = res.clone()
    got = rms_norm(x, w, 1e-5, got_res)
    want, want_res = TorchBackend().add_rms_norm(x, res.clone(), w, 1e-5)
    torch.testing.assert_close(got_res, want_res, atol=0, rtol=0)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_rope_store_matches_torch(dtype: torch.dtype) -> None:
    """Rotary on q and k (in place) and the k, v cache writes against TorchBackend's, on strided views of
    one packed qkv output (as the model hands them over) and strided cache pages."""
    from shard.model.backend import TorchBackend
    from shard.model.config import RopeConfig
    from shard.model.rotary import Rotary
    from shard.model.triton_rope import fits, rope_store

    gen = torch.Generator().manual_seed(9)
    t, hq, hk, d, bs = 5, 6, 3, 16, 4
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=gen).to(dtype)
    q, k, v = (qkv[:, a * d:b * d].unflatten(-1, (-1, d)) for a, b in ((0, hq), (hq, hq + hk),
                                                                       (hq + hk, hq + 2 * hk)))
    cos, sin = Rotary(RopeConfig(theta=10000.0), d, CPU).cos_sin(torch.tensor([0, 1, 2, 7, 30]), dtype)
    slots = torch.tensor([4, 5, 6, 13, 22])
    pool = torch.zeros(8, 2, 2, bs, hk, d, dtype=dtype)
    tables = [[1], [2, 3], [4, 5, 6, 7, 5, 5, 5, 5]]
    meta = AttentionMeta.build(slots, [3, 1, 1], [3, 8, 31], tables, bs, CPU, dtype)
    caches = (pool[:, 1, 0], pool[:, 1, 1])
    want_q, want_k = TorchBackend().rope_store(q.clone(), k.clone(), v, cos, sin, caches, meta)
    got_pool = torch.zeros_like(pool)
    assert fits(q, k, v, cos, sin, got_pool[:, 1, 0], got_pool[:, 1, 1])
    rope_store(q, k, v, cos, sin, slots, got_pool[:, 1, 0], got_pool[:, 1, 1])
    tol = {"atol": 1e-6, "rtol": 1e-6} if dtype == torch.float32 else {"atol": 1e-3, "rtol": 1e-3}
    torch.testing.assert_close(q, want_q, **tol)
    torch.testing.assert_close(k, want_k, **tol)
    torch.testing.assert_close(got_pool, pool, **tol)
