"""TP=2 on one GPU: two ranks on cuda:0 over gloo give the same greedy tokens and logits (1e-4) as one rank
on the same GPU, on the tiny model whose 3 KV heads split unevenly, with mixed LoRA (torch LoRA paths
under TP, Triton attention)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard.model.dist import DistContext
from tests.gpu.tp_worker import run_scenario, worker
from tests.procs import rank_errors, run_ranks

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

SEED = 3


def test_tp2_on_one_gpu_equals_tp1(gpu_tiny_root: Path, tmp_path: Path) -> None:
    codes = run_ranks(worker, 2, str(gpu_tiny_root), str(tmp_path), SEED)
    assert codes == [0, 0], f"a TP rank failed:\n{rank_errors(tmp_path)}"
    single = run_scenario(gpu_tiny_root, DistContext.single(), SEED)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["backend"] == "gloo" and got["staged"]
        sharded = got["records"]
        assert [(n, t) for n, t, _ in sharded] == [(n, t) for n, t, _ in single]  # same greedy tokens
        for (name, toks, g), (_, _, want) in zip(sharded, single, strict=True):
            where = f"rank {rank}: {name} at {len(toks)} tokens"
            torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-4 * want.abs().max().item(),
                                       msg=lambda m, where=where: f"{where}: {m}")
