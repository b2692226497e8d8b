"""The process-group backend of tensor parallelism on GPU hosts (shard.model.dist.process_group_backend) and
the shard's device per rank: nccl when every rank has a GPU of its own, gloo when ranks share GPUs (two
ranks on a one-GPU machine), gloo on CPU. Pure functions: no GPU needed (the TP=2-on-one-GPU run itself
is tests/gpu/test_tp_one_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from shard.cli import build_parser
from shard.model.dist import DistContext, process_group_backend

CUDA0 = torch.device("cuda", 0)


@pytest.mark.parametrize(("device", "local_world", "gpus", "want"), [
    (torch.device("cpu"), 2, 0, "gloo"),
    (torch.device("cpu"), 2, 8, "gloo"),
    (CUDA0, 2, 2, "nccl"),
    (CUDA0, 2, 8, "nccl"),
    (CUDA0, 2, 1, "gloo"),    # two ranks share the one GPU
    (CUDA0, 4, 2, "gloo"),
])
def test_backend_choice(device: torch.device, local_world: int, gpus: int, want: str) -> None:
    assert process_group_backend(device, local_world, gpus) == want


def test_single_rank_needs_no_group() -> None:
    ctx = DistContext.from_env({"WORLD_SIZE": "1"}, device="cuda:0")
    assert ctx.is_single and not ctx.host_staged
    x = torch.ones(3)
    assert ctx.all_reduce(x) is x and ctx.all_gather(x, [3]) is x


def test_shard_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["m", "--uds-path", "/tmp/x"])
    assert (args.kernel_backend, args.cuda_graph_max_batch) == ("auto", 64)
    monkeypatch.setenv("CUDA_GRAPH_MAX_BATCH", "0")
    monkeypatch.setenv("KERNEL_BACKEND", "torch")
    args = build_parser().parse_args(["m", "--uds-path", "/tmp/x"])
    assert (args.kernel_backend, args.cuda_graph_max_batch) == ("torch", 0)
    args = build_parser().parse_args(["m", "--uds-path", "/tmp/x", "--cuda-graph-max-batch", "16"])
    assert args.cuda_graph_max_batch == 16
