"""Figures of `bench-compare` (matplotlib, imported only when --plot is given): P99 TTFT vs rate per
configuration with the SLO line, and the TTFT CDF of every configuration at the high load."""

from __future__ import annotations

from collections.abc import Sequence


def plot_compare(runs: Sequence[dict], meta: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'chameleon-serve[plot]'") from None
    slo, high = meta["slo_s"], meta["high_load_rps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for config in dict.fromkeys(r["config"] for r in runs):
        rs = sorted((r for r in runs if r["config"] == config), key=lambda r: r["rate"])
        left.plot([r["rate"] for r in rs], [r["ttft_p99_s"] for r in rs], marker="o", label=config)
        hi = next((r for r in rs if r["rate"] == high), None)
        if hi is not None and hi["ttft_sorted"]:
            n = len(hi["ttft_sorted"])
            right.plot(hi["ttft_sorted"], [(i + 1) / n for i in range(n)], label=config)
    left.axhline(slo, color="grey", linestyle="--", label=f"SLO {slo:.2f} s")
    left.set(xlabel="load (requests/s)", ylabel="P99 TTFT (s)", yscale="log", title="P99 TTFT vs load (live)")
    right.axvline(slo, color="grey", linestyle="--")
    right.set(xlabel="TTFT (s)", ylabel="fraction of requests", xscale="log",
              title=f"TTFT CDF at {high:g} requests/s")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
