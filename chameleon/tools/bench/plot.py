"""Figures of `bench-compare` (matplotlib, imported only when --plot is given): P99 TTFT vs rate per
configuration with the SLO line, and the TTFT CDF of every configuration at the high load. Drawn by
the simulator's plotting, so measured and simulated figures look alike."""

from __future__ import annotations

from collections.abc import Sequence

from chameleon.sim.plot import Point, plot_latency


def plot_compare(runs: Sequence[dict], meta: dict, path: str) -> None:
    points = [Point(r["config"], r["rate"], r["ttft_p99_s"], r["ttft_sorted"]) for r in runs]
    plot_latency(points, meta["slo_s"], meta["high_load_rps"], path, title=" (live)", dpi=90)
