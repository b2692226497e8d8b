"""Trace readers: request arrival times and token lengths from production traces.

Formats (chosen by suffix; the columns are matched case-insensitively, see `_ALIASES`, e.g.
timestamp/arrival_time, input_length/prompt_tokens/input_tokens/ContextTokens,
output_length/output_tokens/completion_tokens/GeneratedTokens):
- Azure LLM inference trace 2023 CSV: `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps like
  `2023-11-16 18:15:46.6805900` (7 fractional digits).
- Any CSV with timestamp/input/output columns; timestamps are seconds (number) or ISO-8601.
- JSONL: one object per line with the same keys.
Timestamps are returned relative to the first record, in seconds, sorted.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "time", "arrival", "arrival_time", "arrival_timestamp", "ts", "created",
                  "created_at", "request_time"),
    "input": ("input", "input_tokens", "input_length", "input_len", "contexttokens", "context_tokens",
              "prompt_tokens", "prompt_length", "prompt_len", "num_prompt_tokens", "request_tokens"),
    "output": ("output", "output_tokens", "output_length", "output_len", "generatedtokens",
               "generated_tokens", "completion_tokens", "completion_length", "num_output_tokens",
               "response_tokens", "response_length"),
}


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One request of a trace: arrival offset (s, from the first request) and token lengths."""

    timestamp: float
    input_tokens: int
    output_tokens: int


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and the line."""


def parse_timestamp(raw: str) -> float:
    """Seconds since the epoch (or plain seconds) from a number or an ISO-8601 date-time.

    Fractions longer than microseconds (the Azure trace has 7 digits) are kept as a float.
    """
    text = raw.strip()
    try:
        return float(text)
    except ValueError:
        pass
    frac = 0.0
    if "." in text:
        head, tail = text.rsplit(".", 1)
        digits = "".join(ch for ch in tail if ch.isdigit())
        if digits and tail[:len(digits)] == digits and len(digits) > 6:
            frac, text = float("0." + digits), head + tail[len(digits):]
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return stamp.timestamp() + frac


def _columns(fields: Iterable[str], source: str) -> dict[str, str]:
    lower = {f.strip().lower(): f for f in fields}
    found: dict[str, str] = {}
    for key, names in _ALIASES.items():
        match = next((lower[n] for n in names if n in lower), None)
        if match is None:
            raise TraceError(f"{source}: no {key} column (accepted names: {', '.join(names)}); "
                             f"columns present: {', '.join(lower) or 'none'}")
        found[key] = match
    return found


def _record(row: Mapping[str, object], cols: dict[str, str], where: str) -> tuple[float, int, int]:
    try:
        ts = parse_timestamp(str(row[cols["timestamp"]]))
        n_in, n_out = int(float(str(row[cols["input"]]))), int(float(str(row[cols["output"]])))
    except (KeyError, ValueError, TypeError) as exc:
        raise TraceError(f"{where}: cannot read timestamp/input/output ({exc})") from None
    if n_in < 0 or n_out < 0:
        raise TraceError(f"{where}: token counts must be >= 0")
    return ts, n_in, n_out


def _normalise(raw: list[tuple[float, int, int]], source: str) -> list[TraceRecord]:
    if not raw:
        raise TraceError(f"{source}: the trace has no requests")
    raw.sort(key=lambda r: r[0])
    t0 = raw[0][0]
    return [TraceRecord(ts - t0, n_in, n_out) for ts, n_in, n_out in raw]


def read_csv(path: Path) -> list[TraceRecord]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = _columns(reader.fieldnames or (), str(path))
        raw = [_record(row, cols, f"{path}:{n}") for n, row in enumerate(reader, start=2)]
    return _normalise(raw, str(path))


def read_jsonl(path: Path) -> list[TraceRecord]:
    raw: list[tuple[float, int, int]] = []
    cols: dict[str, str] | None = None
    with path.open() as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise TraceError(f"{path}:{n}: each line must be a JSON object")
            cols = cols or _columns(obj.keys(), f"{path}:{n}")
            raw.append(_record(obj, cols, f"{path}:{n}"))
    return _normalise(raw, str(path))


def read_trace(path: str | Path) -> list[TraceRecord]:
    """Read a trace (CSV or JSONL, by suffix; `.json`/`.jsonl`/`.ndjson` are JSON lines)."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file {p} does not exist (the shared Azure trace lives at "
                         "../shared/data/traces/azure_llm_2023_conv.csv)")
    if p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return read_jsonl(p)
    return read_csv(p)
