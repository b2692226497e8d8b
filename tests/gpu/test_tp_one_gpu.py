"""TP=2 on one GPU: two ranks on cuda:0 over gloo give the same greedy tokens and logits (1e-4) as one rank
on the same GPU, on the tiny model whose 3 KV heads split unevenly, with mixed LoRA (torch LoRA paths
under TP, Triton attention)."""

from __future__ import annotations

import multiprocessing as mp
import socket
from pathlib import Path

import pytest
import torch

from shard.model.dist import DistContext
from tests.gpu.tp_worker import run_scenario, worker

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

SEED = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tp2_on_one_gpu_equals_tp1(gpu_tiny_root: Path, tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(r, 2, port, str(gpu_tiny_root), str(tmp_path), SEED))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = "\n".join(f.read_text() for f in sorted(tmp_path.glob("*.err")))
    assert [p.exitcode for p in procs] == [0, 0], f"a TP rank failed:\n{errors}"
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
