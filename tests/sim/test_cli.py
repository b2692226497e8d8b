from __future__ import annotations

import json
from pathlib import Path

import pytest

from chameleon.tools.simulate import main

RUN_KEYS = {"policy", "rate", "ttft_p50_s", "ttft_p99_s", "tbt_p99_s", "throughput_rps", "slo_attainment",
            "cache_hit_rate", "adapter_bytes_loaded", "squashes"}


@pytest.fixture()
def trace(tmp_path: Path) -> Path:
    from tests.sim.conftest import synthetic_records

    p = tmp_path / "trace.csv"
    recs = synthetic_records(150, seed=2)
    rows = [f"{r.timestamp},{r.input_tokens * 6},{r.output_tokens * 6}" for r in recs]
    p.write_text("timestamp,input,output\n" + "\n".join(rows) + "\n")
    return p


def _simulate(trace: Path, out: Path, *extra: str) -> dict:
    argv = ["--trace", str(trace), "--rates", "4,8", "--policies", "fifo,chameleon,chameleon-nosched",
            "--adapters", "20", "--json", str(out), "--no-progress", "--slo-rate", "4", *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_json_document(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _simulate(trace, tmp_path / "a.json", "--workers", "1")
    printed = capsys.readouterr().out
    assert "thr@SLO" in printed and "chameleon-nosched" in printed
    assert set(doc["summary"]) == {"fifo", "chameleon", "chameleon-nosched"}
    for s in doc["summary"].values():
        assert {"slo_throughput_rps", "ratio_vs_fifo"} <= set(s)
    assert doc["summary"]["fifo"]["ratio_vs_fifo"] == 1.0
    assert len(doc["runs"]) == 6
    for run in doc["runs"]:
        assert set(run) >= RUN_KEYS
        assert 0.0 <= run["slo_attainment"] <= 1.0
    assert doc["meta"]["slo_basis"]["policy"] == "fifo"
    assert doc["meta"]["slo_s"] == pytest.approx(5 * doc["meta"]["slo_basis"]["mean_request_s"])
    two = _simulate(trace, tmp_path / "b.json", "--workers", "2")
    def strip(runs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("wall_s", "cpu_s")} for r in runs]

    assert strip(two["runs"]) == strip(doc["runs"])     # same numbers whichever worker ran what


def test_fixed_slo_and_errors(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _simulate(trace, tmp_path / "c.json", "--workers", "1", "--slo-s", "2.5", "--predictor", "oracle")
    assert doc["meta"]["slo_s"] == 2.5 and doc["meta"]["slo_basis"]["mean_request_s"] is None
    assert main(["--trace", str(trace), "--policies", "nope", "--no-progress"]) == 2
    assert "unknown policies" in capsys.readouterr().err
    assert main(["--trace", str(tmp_path / "missing.csv"), "--no-progress"]) == 2
    assert main(["--show-profile"]) == 0
    assert "h2d_bytes_per_s" in capsys.readouterr().out


def test_plot(trace: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    _simulate(trace, tmp_path / "d.json", "--workers", "1", "--plot", str(png))
    assert png.stat().st_size > 10_000


def test_jsonl_trace_with_common_names_and_outputs_in_new_folders(tmp_path: Path) -> None:
    from tests.sim.conftest import synthetic_records

    p = tmp_path / "trace.jsonl"
    recs = synthetic_records(150, seed=2)
    p.write_text("".join(json.dumps({"arrival_time": r.timestamp, "prompt_tokens": r.input_tokens * 6,
                                     "completion_tokens": r.output_tokens * 6}) + "\n" for r in recs))
    out = tmp_path / "new" / "folder" / "sim.json"
    assert main(["--trace", str(p), "--rates", "4", "--policies", "fifo", "--adapters", "20", "--json",
                 str(out), "--no-progress", "--workers", "1"]) == 0
    assert len(json.loads(out.read_text())["runs"]) == 1
