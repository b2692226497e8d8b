"""scripts/mb_pairs_summary.py: per-round ratios of chameleon/chameleon against the other configurations."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest


def test_mb_pairs_summary_ratios_per_round_medians_and_ranges(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    p99 = {"fifo/none": [8.0, 6.0, 10.0], "chameleon/chameleon": [4.0, 3.0, 6.0],
           "fifo/chameleon": [5.0, 6.0, 4.0]}
    for config, values in p99.items():
        for i, v in enumerate(values, 1):
            row = {"ttft_p99_s": v, "ttft_p50_s": v / 4, "slo_attainment": 0.9, "errors": i - 1}
            (tmp_path / f"{config.replace('/', '-')}-{i}.json").write_text(json.dumps({"runs": [row]}))
    main = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "mb_pairs_summary.py"))["main"]
    assert main(tmp_path, 3, list(p99)) == 0
    out = capsys.readouterr().out.splitlines()
    vs_fifo = next(line for line in out if line.startswith("fifo/none") and " p99 " in line)
    assert "0.50 0.50 0.60" in vs_fifo and "0.50x" in vs_fifo and "0.50-0.60x" in vs_fifo
    vs_cache = next(line for line in out if line.startswith("fifo/chameleon") and " p99 " in line)
    assert "0.80 0.50 1.50" in vs_cache and "0.80x" in vs_cache and "0.50-1.50x" in vs_cache
    assert any(line.startswith("chameleon/chameleon") and "median P99 4.00 s" in line and "errors 3" in line
               for line in out)
