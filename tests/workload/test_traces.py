from __future__ import annotations

import json
from pathlib import Path

import pytest

from chameleon.workload import TraceError, read_trace
from chameleon.workload.traces import parse_timestamp

SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"


def test_azure_csv_seven_digit_fraction(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:47.1805900,10,3\n"
                 "2023-11-16 18:15:46.6805900,374,44\n")
    recs = read_trace(p)
    assert [r.input_tokens for r in recs] == [374, 10]
    assert recs[0].timestamp == 0.0
    assert recs[1].timestamp == pytest.approx(0.5, abs=1e-6)


def test_generic_csv_and_jsonl(tmp_path: Path) -> None:
    c = tmp_path / "g.csv"
    c.write_text("time,prompt_tokens,completion_tokens\n5.0,7,2\n2.5,9,4\n")
    got = [(r.timestamp, r.input_tokens, r.output_tokens) for r in read_trace(c)]
    assert got == [(0.0, 9, 4), (2.5, 7, 2)]
    j = tmp_path / "g.jsonl"
    j.write_text("\n".join(json.dumps(o) for o in [{"timestamp": 1, "input": 3, "output": 1},
                                                    {"timestamp": 3, "input": 5, "output": 2}]) + "\n\n")
    assert [(r.timestamp, r.input_tokens) for r in read_trace(j)] == [(0.0, 3), (2.0, 5)]


@pytest.mark.parametrize("body,match", [
    ("a,b,c\n1,2,3\n", "no timestamp column"),
    ("timestamp,input,output\nx,2,3\n", r"g\.csv:2"),
    ("timestamp,input,output\n", "no requests"),
    ("timestamp,input,output\n1,-2,3\n", ">= 0"),
])
def test_bad_csv_has_clear_error(tmp_path: Path, body: str, match: str) -> None:
    p = tmp_path / "g.csv"
    p.write_text(body)
    with pytest.raises(TraceError, match=match):
        read_trace(p)


def test_missing_file_names_shared_trace(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="shared/data/traces"):
        read_trace(tmp_path / "nope.csv")


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp("12.5") == 12.5
    a = parse_timestamp("2023-11-16T18:15:46Z")
    assert parse_timestamp("2023-11-16 18:15:46.2500000") - parse_timestamp("2023-11-16 18:15:46") == \
        pytest.approx(0.25)
    assert a == parse_timestamp("2023-11-16 18:15:46+00:00")


@pytest.mark.skipif(not SHARED_TRACE.is_file(), reason="the shared Azure trace is not on this machine")
def test_shared_azure_trace_reads() -> None:
    recs = read_trace(SHARED_TRACE)
    assert len(recs) == 19366
    assert 3400 < recs[-1].timestamp < 3600
    assert all(r.input_tokens >= 1 and r.output_tokens >= 1 for r in recs)


@pytest.mark.parametrize(("suffix", "ts", "n_in", "n_out"), [
    ("jsonl", "timestamp", "input_length", "output_length"),
    ("jsonl", "arrival_time", "prompt_tokens", "completion_tokens"),
    ("csv", "timestamp", "input_tokens", "output_tokens"),
    ("csv", "TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    ("csv", "Arrival_Time", "Input_Length", "Output_Length"),
])
def test_common_trace_column_names(tmp_path: Path, suffix: str, ts: str, n_in: str, n_out: str) -> None:
    rows = [(10.0, 5, 7), (11.5, 6, 8)]
    p = tmp_path / f"t.{suffix}"
    if suffix == "csv":
        p.write_text(f"{ts},{n_in},{n_out}\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    else:
        p.write_text("".join(json.dumps({ts: a, n_in: b, n_out: c}) + "\n" for a, b, c in rows))
    got = [(r.timestamp, r.input_tokens, r.output_tokens) for r in read_trace(p)]
    assert got == [(0.0, 5, 7), (1.5, 6, 8)]


def test_unrecognised_columns_list_the_accepted_names(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"timestamp": 1, "tokens_in": 2, "output_length": 3}) + "\n")
    with pytest.raises(TraceError) as err:
        read_trace(p)
    msg = str(err.value)
    assert "no input column" in msg and "input_length" in msg and "prompt_tokens" in msg
    assert "contexttokens" in msg and "tokens_in" in msg  # what the file has
