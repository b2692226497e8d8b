"""TP=2 over gloo (two processes on 127.0.0.1) gives the same tokens and logits as TP=1, on a model
whose 3 KV heads split unevenly (2+1), with an odd intermediate size and vocab, and mixed LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard.model.dist import DistContext
from tests.procs import rank_errors, run_ranks
from tests.shard_model.tp_worker import run_scenario, worker

pytestmark = pytest.mark.slow

SEED = 3


def test_tp2_equals_tp1(tiny_root: Path, tmp_path: Path) -> None:
    codes = run_ranks(worker, 2, str(tiny_root), str(tmp_path), SEED)
    assert codes == [0, 0], f"a TP rank failed:\n{rank_errors(tmp_path)}"
    single = run_scenario(tiny_root, DistContext.single(), SEED)
    for rank in range(2):
        sharded = torch.load(tmp_path / f"rank{rank}.pt")
        assert [(n, t) for n, t, _ in sharded] == [(n, t) for n, t, _ in single]  # same greedy tokens
        for (name, toks, got), (_, _, want) in zip(sharded, single, strict=True):
            where = f"rank {rank}: {name} at {len(toks)} tokens"
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item(),
                                       msg=lambda m, where=where: f"{where}: {m}")
