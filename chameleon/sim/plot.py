"""Figures of a sweep (matplotlib; imported only when --plot is given)."""

from __future__ import annotations

from collections.abc import Sequence

from chameleon.sim.runner import RunSummary


def plot_sweep(runs: Sequence[RunSummary], doc: dict, path: str) -> None:
    """Left: P99 TTFT vs load per policy with the SLO line. Right: TTFT CDF at the high load."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'chameleon-serve[plot]'") from None
    slo, high = doc["meta"]["slo_s"], doc["meta"]["high_load_rps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    policies = list(dict.fromkeys(r.policy for r in runs))
    for policy in policies:
        rs = sorted((r for r in runs if r.policy == policy), key=lambda r: r.rate)
        left.plot([r.rate for r in rs], [r.ttft_p99_s for r in rs], marker="o", label=policy)
        hi = next((r for r in rs if r.rate == high), None)
        if hi is not None and hi.ttft_sorted:
            n = len(hi.ttft_sorted)
            right.plot(hi.ttft_sorted, [(i + 1) / n for i in range(n)], label=policy)
    left.axhline(slo, color="grey", linestyle="--", label=f"SLO {slo:.2f} s")
    left.set(xlabel="load (requests/s)", ylabel="P99 TTFT (s)", yscale="log", title="P99 TTFT vs load")
    right.axvline(slo, color="grey", linestyle="--")
    right.set(xlabel="TTFT (s)", ylabel="fraction of requests", xscale="log",
              title=f"TTFT CDF at {high:g} requests/s")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
