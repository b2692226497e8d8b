"""A mixed-adapter scenario on CUDA through the Triton backend (decode steps replayed from CUDA graphs)
against transformers + PEFT: float32 logits within 1e-4 and identical greedy tokens; bfloat16 within
bf16 precision. The harness scenario has prefill with prompt logits, decode, prefill + decode in one
forward, filtering and a chunked prefill, adapters of ranks 8..128 in scattered pages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard.model.dist import DistContext
from shard.model.runner import ModelRunner
from tests.gpu.replays import count_replays
from tests.shard_model.harness import BLOCK, Harness
from tests.shard_model.tiny import Reference

pytestmark = pytest.mark.gpu

NUM_PAGES = 1600


def _runner(root: Path, dtype: torch.dtype) -> tuple[ModelRunner, dict[str, int]]:
    runner = ModelRunner(root / "model", dtype=dtype, device="cuda:0", dist=DistContext.single(),
                         num_pages=NUM_PAGES, block_size=BLOCK, adapter_dtype="model",
                         cuda_graph_max_batch=16)
    assert runner.backend.name == "triton" and runner.graphs is not None
    replays = count_replays(runner.graphs)
    return runner, replays


def test_float32_matches_peft_exactly(gpu_tiny_root: Path, gpu_reference: Reference) -> None:
    runner, replays = _runner(gpu_tiny_root, torch.float32)
    h = Harness(runner, gpu_tiny_root)
    h.scenario()
    assert replays["n"] >= 2, "no decode step was replayed from a CUDA graph"
    for rec in h.records:
        ref = gpu_reference.logits(list(rec.tokens), rec.adapter)[-1]
        got = rec.logits.float().cpu()
        where = f"{rec.name} ({rec.adapter}) at {len(rec.tokens)} tokens"
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item(),
                                   msg=lambda m, where=where: f"{where}: {m}")
        assert int(got.argmax()) == int(ref.argmax()), f"greedy token differs: {where}"


def test_bfloat16_within_tolerance(gpu_tiny_root: Path, gpu_reference: Reference) -> None:
    runner, replays = _runner(gpu_tiny_root, torch.bfloat16)
    h = Harness(runner, gpu_tiny_root)
    h.scenario()
    assert replays["n"] >= 2
    agree = 0
    for rec in h.records:
        ref = gpu_reference.logits(list(rec.tokens), rec.adapter)[-1]
        got = rec.logits.float().cpu()
        assert torch.isfinite(got).all()
        assert (got - ref).abs().max() <= 0.05 * ref.abs().max(), f"{rec.name} at {len(rec.tokens)} tokens"
        agree += int(got.argmax()) == int(ref.argmax())
    assert agree >= 0.9 * len(h.records), f"greedy agreement {agree}/{len(h.records)}"
