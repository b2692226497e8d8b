"""`chameleon simulate --workload`: one table per class, the SLO from the lowest swept rate, --mlq."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chameleon.tools.simulate import main, mlq_overrides


def test_two_classes_one_table_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w.json"
    assert main(["--workload", "bimodal,long-tail", "--requests", "120", "--policies", "fifo,chameleon",
                 "--rates", "2,4", "--no-progress", "--workers", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "== workload bimodal ==" in printed and "== workload long-tail ==" in printed
    docs = json.loads(out.read_text())["workloads"]
    assert set(docs) == {"bimodal", "long-tail"}
    for doc in docs.values():
        assert doc["meta"]["slo_basis"]["rate"] == 2.0     # the lowest swept rate
        assert len(doc["runs"]) == 4
    assert docs["long-tail"]["meta"]["adapters"] == 1000


def test_class_rates_are_the_default_sweep(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    assert main(["--workload", "prefill-heavy", "--requests", "60", "--policies", "fifo", "--no-progress",
                 "--workers", "1", "--json", str(out), "--slo-s", "30"]) == 0
    doc = json.loads(out.read_text())
    assert doc["meta"]["rates"][0] < 1.0 and doc["meta"]["workload"] == "prefill-heavy"


def test_mlq_overrides_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert mlq_overrides("starve_factor=0,prefill_share=none,bypass=false,refresh_requests=null") == (
        ("starve_factor", 0), ("prefill_share", "none"), ("bypass", False), ("refresh_requests", None))
    for bad in ("nope=1", "starve_factor", "k_max=0"):
        with pytest.raises(ValueError):
            mlq_overrides(bad)
    assert main(["--workload", "nope", "--no-progress"]) == 2
    assert "unknown workload" in capsys.readouterr().err
    assert main(["--workload", "bimodal", "--trace", "x.csv", "--no-progress"]) == 2
    assert main(["--no-progress"]) == 2
