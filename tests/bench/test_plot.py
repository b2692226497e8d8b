"""`bench-compare --plot` draws through the simulator's plotting (one figure style for both)."""

from __future__ import annotations

from chameleon.tools.bench.plot import plot_compare


def test_plot_compare_writes_a_png(tmp_path):
    runs = [{"config": c, "rate": rate, "ttft_p99_s": p99, "ttft_sorted": [0.1, p99 / 2, p99]}
            for c, scale in (("fifo/none", 2.0), ("chameleon/chameleon", 1.0))
            for rate, p99 in ((1.0, scale), (2.0, 2 * scale))]
    out = tmp_path / "cmp.png"
    plot_compare(runs, {"slo_s": 3.0, "high_load_rps": 2.0}, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
