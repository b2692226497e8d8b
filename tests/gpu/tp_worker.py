"""One rank of the TP=2-on-one-GPU test (spawned; must be importable): both ranks on cuda:0, so the
process group is gloo (shard.model.dist.process_group_backend), its collectives staged through the host."""

from __future__ import annotations

import traceback
from pathlib import Path

import torch

from shard.model.dist import DistContext
from shard.model.runner import ModelRunner
from tests.shard_model.harness import BLOCK, Harness

NUM_PAGES = 1600


def run_scenario(root: Path, dist: DistContext, seed: int) -> list[tuple[str, tuple[int, ...], torch.Tensor]]:
    runner = ModelRunner(root / "model", dtype=torch.float32, device="cuda:0", dist=dist, num_pages=NUM_PAGES,
                         block_size=BLOCK, cuda_graph_max_batch=16)
    h = Harness(runner, root, seed=seed)
    h.scenario()
    return [(r.name, r.tokens, r.logits.cpu()) for r in h.records]


def worker(rank: int, world: int, port: int, root: str, out: str, seed: int) -> None:
    try:
        import torch.distributed as tdist

        dist = DistContext.init(rank, world, f"tcp://127.0.0.1:{port}", device="cuda:0")
        try:
            backend = tdist.get_backend()
            records = run_scenario(Path(root), dist, seed)
            torch.save({"backend": backend, "staged": dist.host_staged, "records": records},
                       Path(out) / f"rank{rank}.pt")
        finally:
            dist.shutdown()
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
