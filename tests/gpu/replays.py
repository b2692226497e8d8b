"""Counting decode CUDA-graph replays in a test: wraps `DecodeGraphs.run` of one runner."""

from __future__ import annotations

import torch

from shard.model.cuda_graphs import DecodeGraphs


def count_replays(graphs: DecodeGraphs) -> dict[str, int]:
    """Wrap `graphs.run` so each step it served from a graph (not None) adds 1 to the returned `["n"]`."""
    replays = {"n": 0}
    run = graphs.run

    def counted(fb: object) -> torch.Tensor | None:
        out = run(fb)  # type: ignore[arg-type]
        replays["n"] += out is not None
        return out

    graphs.run = counted  # type: ignore[method-assign]
    return replays
