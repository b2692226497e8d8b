"""The tools' output options (--json, --plot, --log-dir, --log, --profile-out) create missing folders
up front, and every tool reads traces in the common column formats (through chameleon.workload)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chameleon.tools.cliargs import prepare_outputs


def _jsonl_trace(path: Path) -> Path:
    """A public-trace style JSONL: timestamp, input_length, output_length."""
    rows = [{"timestamp": 100.0 + i * 0.5, "input_length": 40 + i, "output_length": 8 + i % 5}
            for i in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prepare_outputs_creates_parents_and_folders(tmp_path: Path):
    prepare_outputs(files=(tmp_path / "a" / "b" / "out.json", None, "plain.json"),
                    folders=(tmp_path / "logs" / "x",))
    assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "logs" / "x").is_dir()
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(ValueError, match=r"cannot create the output folder .*file"):
        prepare_outputs(folders=(tmp_path / "file" / "logs",))


def test_bench_compare_log_dir_that_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]):
    """Was a FileNotFoundError traceback (the partial results file in a missing --log-dir)."""
    from chameleon.tools.bench import compare

    async def cannot_start(*_args, **_kw):
        raise RuntimeError("stand-in: this configuration does not start")

    monkeypatch.setattr(compare, "_config", cannot_start)
    log_dir, out = tmp_path / "new" / "logs", tmp_path / "res" / "cmp.json"
    code = compare.main(["--trace", str(_jsonl_trace(tmp_path / "t.jsonl")), "--configs", "fifo/none",
                         "--log-dir", str(log_dir), "--json", str(out),
                         "--plot", str(tmp_path / "p" / "x.png")])
    assert code == 2 and "no configuration could be measured" in capsys.readouterr().err
    assert json.loads((log_dir / "bench-compare-partial.json").read_text()) == []
    assert (tmp_path / "res").is_dir() and (tmp_path / "p").is_dir()


def test_soak_reads_a_jsonl_trace_and_writes_json_in_a_new_folder(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    from chameleon.tools.bench import soak

    seen: dict[str, object] = {}

    class FakeSystem:
        def stop(self) -> None:
            seen["stopped"] = True

    async def fake_run(_system, _args, records):
        seen["records"] = len(records)
        return {"verdict": {"pass": True}}

    monkeypatch.setattr(soak, "start", lambda *a, **k: FakeSystem())
    monkeypatch.setattr(soak, "run_soak", fake_run)
    monkeypatch.setattr(soak, "format_report", lambda r: "verdict: PASS")
    out = tmp_path / "reports" / "soak.json"
    code = soak.main(["--trace", str(_jsonl_trace(tmp_path / "t.jsonl")), "--json", str(out),
                      "--log", str(tmp_path / "logs" / "launch.log")])
    assert code == 0 and seen == {"records": 60, "stopped": True}
    assert json.loads(out.read_text())["verdict"]["pass"] and (tmp_path / "logs").is_dir()


def test_soak_refuses_an_unrecognised_trace_listing_the_names(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]):
    from chameleon.tools.bench import soak

    bad = tmp_path / "t.jsonl"
    bad.write_text(json.dumps({"when": 1, "input_length": 2, "output_length": 3}) + "\n")
    assert soak.main(["--trace", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no timestamp column" in err and "arrival_time" in err


def test_bench_json_in_a_new_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from chameleon.tools.bench import cli

    async def fake_bench(target, records, *_a, **_k):
        return cli.Run({"rate": 1.0, "n": len(records)}, [])

    monkeypatch.setattr(cli, "run_bench", fake_bench)
    monkeypatch.setattr(cli, "format_summary", lambda s: "summary")
    out = tmp_path / "deep" / "er" / "bench.json"
    assert cli.main(["--target", "grpc://127.0.0.1:1", "--trace", str(_jsonl_trace(tmp_path / "t.jsonl")),
                     "--rate", "1", "--duration", "5", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["summary"]["n"] == 60
