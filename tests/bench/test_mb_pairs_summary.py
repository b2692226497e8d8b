"""scripts/mb_pairs_summary.py: per-round ratios of chameleon/chameleon against the other configurations,
and throughput at the SLO per round."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

MAIN = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "mb_pairs_summary.py"))["main"]


def _write(out: Path, config: str, rate: str, i: int, p99: float, errors: int = 0) -> None:
    row = {"ttft_p99_s": p99, "ttft_p50_s": p99 / 4, "slo_attainment": 0.9, "errors": errors}
    (out / f"{config.replace('/', '-')}-{rate}-{i}.json").write_text(json.dumps({"runs": [row]}))


def test_ratios_per_round_medians_and_ranges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p99 = {"fifo/none": [8.0, 6.0, 10.0], "chameleon/chameleon": [4.0, 3.0, 6.0],
           "fifo/chameleon": [5.0, 6.0, 4.0]}
    for config, values in p99.items():
        for i, v in enumerate(values, 1):
            _write(tmp_path, config, "5", i, v, errors=i - 1)
    assert MAIN(tmp_path, 3, ["5"], 4.0, list(p99)) == 0
    out = capsys.readouterr().out.splitlines()
    vs_fifo = next(line for line in out if line.startswith("fifo/none") and " p99 " in line)
    assert "0.50 0.50 0.60" in vs_fifo and "0.50x" in vs_fifo and "0.50-0.60x" in vs_fifo
    vs_cache = next(line for line in out if line.startswith("fifo/chameleon") and " p99 " in line)
    assert "0.80 0.50 1.50" in vs_cache and "0.80x" in vs_cache and "0.50-1.50x" in vs_cache
    assert any(line.startswith("chameleon/chameleon") and "median P99 4.00 s" in line and "errors 3" in line
               for line in out)
    assert not any("throughput at the SLO" in line for line in out)  # one rate: no crossing to find


def test_throughput_at_the_slo_per_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # SLO 4 s; fifo/none crosses it between 2 and 4 rps, chameleon/chameleon meets it at both rates
    p99 = {"fifo/none": {"2": 2.0, "4": 6.0}, "chameleon/chameleon": {"2": 1.0, "4": 3.0}}
    for config, by_rate in p99.items():
        for rate, v in by_rate.items():
            for i in (1, 2):
                _write(tmp_path, config, rate, i, v)
    assert MAIN(tmp_path, 2, ["2", "4"], 4.0, list(p99)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("at 4 rps")
    base = next(line for line in out if line.startswith("fifo/none ") and "3.00 3.00" in line)
    assert "x" not in base.split("3.00 3.00")[1]
    mine = next(line for line in out if line.startswith("chameleon/chameleon ") and "4.00+" in line)
    assert "1.33x" in mine


def test_a_baseline_that_misses_at_the_lowest_rate_has_no_ratio(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # SLO 4 s. Round 1: fifo/none misses already at 3 rps; round 2: it crosses at 4.5 rps
    p99 = {"fifo/none": {"3": (5.0, 2.0), "6": (9.0, 7.0)},
           "chameleon/chameleon": {"3": (2.0, 2.0), "6": (6.0, 6.0)}}
    for config, by_rate in p99.items():
        for rate, per_round in by_rate.items():
            for i, v in enumerate(per_round, 1):
                _write(tmp_path, config, rate, i, v)
    assert MAIN(tmp_path, 2, ["3", "6"], 4.0, list(p99)) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("fifo/none ") and "<3 4.20" in line for line in out)
    mine = next(line for line in out if line.startswith("chameleon/chameleon ") and " thr " in line)
    assert "4.50 4.50" in mine and " - 1.07" in mine and "1.07x" in mine and "inf" not in mine
