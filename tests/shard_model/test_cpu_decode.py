"""The fused decoder stack (shard.model.cpu_decode): batches on CPU float32 (decode, prefill and mixed rows)
run every layer in one C call and give the layer loop's logits; batches whose LoRA is off the C kernel path
take the loop; bad slots raise before writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard.lora import cpu_bgmv
from shard.model import cpu_decode
from shard.model.cpu_backend import CpuKernelBackend
from shard.model.cpu_decode import DecodeStack
from shard.model.cpu_kernels import CpuKernels
from shard.model.dist import DistContext
from shard.model.runner import ForwardBatch, ModelRunner
from tests.shard_model.harness import BLOCK, Harness

pytestmark = pytest.mark.skipif(CpuKernels.load() is None, reason="no gcc / AVX2+FMA on this machine")
NUM_PAGES = 1600


def runner_for(root: Path) -> ModelRunner:
    return ModelRunner(root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                       num_pages=NUM_PAGES, block_size=BLOCK)


def count_fused(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the batch size of every forward the fused stack served."""
    served: list[int] = []
    original = DecodeStack.run

    def run(self: DecodeStack, h: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor] | None:
        out = original(self, h, *args)
        if out is not None:
            served.append(h.shape[0])
        return out

    monkeypatch.setattr(DecodeStack, "run", run)
    return served


def test_fused_stack_equals_layer_loop(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario (prefill, decode, mixed batches, LoRA of every rank and dtype through the C kernel)
    with the fused stack gives the layer loop's logits; its steps went through the stack."""
    fused_runner, loop_runner = runner_for(tiny_root), runner_for(tiny_root)
    assert fused_runner.packed_layers == 2 * 4 + 1  # per layer qkv, o, gate_up, down; the tied LM head
    assert isinstance(loop_runner.backend, CpuKernelBackend)
    loop_runner.backend.stack = None  # the layer loop only
    served = count_fused(monkeypatch)
    fused, loop = Harness(fused_runner, tiny_root, seed=7), Harness(loop_runner, tiny_root, seed=7)
    fused.scenario()
    loop.scenario()
    assert served and max(served) >= 5, "no step took the fused stack"
    assert len(fused.records) == len(loop.records)
    for a, b in zip(fused.records, loop.records, strict=True):
        assert a.tokens == b.tokens
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5 * b.logits.abs().max().item())


def test_fused_stack_skips_what_it_cannot_serve(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefill and decode rows take the stack; a forced torch LoRA path, a LoRA segment longer than the C
    kernel takes, a prefill past MAX_PREFILL_ROWS, or kernels disabled: the layer loop serves the batch."""
    runner = runner_for(tiny_root)
    served = count_fused(monkeypatch)
    h = Harness(runner, tiny_root, seed=3)
    seqs = [h.seq("x", "a8", 3), h.seq("y", None, 2)]
    h.step(seqs)  # prefill: 3 + 2 rows
    assert served == [5]
    runner.lora_path = "segment"
    h.step(seqs)
    assert served == [5]
    runner.lora_path = None
    h.step(seqs)
    assert served == [5, 2]
    monkeypatch.setattr(cpu_bgmv, "MAX_SEGMENT_ROWS", 2)
    h.step([h.seq("z", "a8", 3)])  # a 3-row LoRA segment: torch LoRA path, so the loop
    assert served == [5, 2]
    monkeypatch.setattr(cpu_bgmv, "MAX_SEGMENT_ROWS", 256)
    monkeypatch.setattr(cpu_decode, "MAX_PREFILL_ROWS", 2)
    h.step([h.seq("w", None, 3)])  # a 3-token prefill past the limit: the loop
    assert served == [5, 2]
    monkeypatch.setattr(cpu_decode, "MAX_PREFILL_ROWS", 1024)
    monkeypatch.setenv("CHAMELEON_CPU_KERNELS", "0")  # read when a runner is built: torch ops
    off = Harness(runner_for(tiny_root), tiny_root, seed=3)
    off.step([off.seq("x", "a8", 3), off.seq("y", None, 2)])
    assert served == [5, 2]


def test_fused_stack_rejects_slots_outside_the_pool(tiny_root: Path) -> None:
    runner = runner_for(tiny_root)
    assert runner.pool is not None
    before = runner.pool.buffer.clone()
    bad = ForwardBatch.build([[5], [6]], [1, 1], [[1], [NUM_PAGES + 3]], BLOCK)
    with pytest.raises(IndexError, match="outside the pool"):
        runner.forward(bad)
    assert torch.equal(runner.pool.buffer, before), "a rejected batch wrote into the pool"
    good = ForwardBatch.build([[5], [6]], [1, 1], [[1], [2]], BLOCK)
    assert runner.forward(good).last_logits.isfinite().all()
