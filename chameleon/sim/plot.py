"""Figures of a sweep (matplotlib; imported only when --plot is given). `plot_latency` also draws the
live benchmark's figure (chameleon/tools/bench/plot.py), so the simulator and the measurement look alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chameleon.sim.runner import RunSummary


@dataclass(frozen=True, slots=True)
class Point:
    """One run of one policy/configuration: its rate, P99 TTFT and sorted TTFTs (for the CDF)."""

    label: str
    rate: float
    ttft_p99_s: float
    ttft_sorted: Sequence[float]


def plot_latency(points: Sequence[Point], slo: float, high: float, path: str, *, title: str = "",
                 dpi: int = 120) -> None:
    """Left: P99 TTFT vs load per label with the SLO line. Right: TTFT CDF at the high load."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'chameleon-serve[plot]'") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in dict.fromkeys(p.label for p in points):
        ps = sorted((p for p in points if p.label == label), key=lambda p: p.rate)
        left.plot([p.rate for p in ps], [p.ttft_p99_s for p in ps], marker="o", label=label)
        hi = next((p for p in ps if p.rate == high), None)
        if hi is not None and hi.ttft_sorted:
            n = len(hi.ttft_sorted)
            right.plot(hi.ttft_sorted, [(i + 1) / n for i in range(n)], label=label)
    left.axhline(slo, color="grey", linestyle="--", label=f"SLO {slo:.2f} s")
    left.set(xlabel="load (requests/s)", ylabel="P99 TTFT (s)", yscale="log",
             title=f"P99 TTFT vs load{title}")
    right.axvline(slo, color="grey", linestyle="--")
    right.set(xlabel="TTFT (s)", ylabel="fraction of requests", xscale="log",
              title=f"TTFT CDF at {high:g} requests/s")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_sweep(runs: Sequence[RunSummary], doc: dict, path: str) -> None:
    points = [Point(r.policy, r.rate, r.ttft_p99_s, r.ttft_sorted) for r in runs]
    plot_latency(points, doc["meta"]["slo_s"], doc["meta"]["high_load_rps"], path)
