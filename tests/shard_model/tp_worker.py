"""One tensor-parallel rank of the TP test (spawned; must be importable)."""

from __future__ import annotations

import traceback
from pathlib import Path

import torch

from shard.model.dist import DistContext
from shard.model.runner import ModelRunner
from tests.shard_model.harness import BLOCK, Harness

NUM_PAGES = 1600


def run_scenario(root: Path, dist: DistContext, seed: int) -> list[tuple[str, tuple[int, ...], torch.Tensor]]:
    runner = ModelRunner(root / "model", dtype=torch.float32, device="cpu", dist=dist, num_pages=NUM_PAGES,
                         block_size=BLOCK)
    h = Harness(runner, root, seed=seed)
    h.scenario()
    return [(r.name, r.tokens, r.logits) for r in h.records]


def worker(rank: int, world: int, port: int, root: str, out: str, seed: int) -> None:
    torch.set_num_threads(1)
    try:
        dist = DistContext.init(rank, world, f"tcp://127.0.0.1:{port}")
        try:
            torch.save(run_scenario(Path(root), dist, seed), Path(out) / f"rank{rank}.pt")
        finally:
            dist.shutdown()
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
