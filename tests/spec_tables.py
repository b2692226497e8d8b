"""Read the message tables of ../shared/spec/*.md into {message: {field: FieldSpec}}.

The spec writes fields as `[repeated|opt] name:Type=number`, nested definitions as
`Type{...}`, oneofs as `oneof name { ... }`, enums as `enum Name: A=0, B=1`, and comments in
parentheses. This is the test's independent reading of the spec, not the project's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FieldSpec:
    name: str
    type: str
    number: int
    repeated: bool = False
    optional: bool = False
    oneof: str | None = None


@dataclass
class Tables:
    messages: dict[str, dict[str, FieldSpec]] = field(default_factory=dict)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)


def spec_dir() -> Path:
    env = os.environ.get("CHAMELEON_SPEC_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "spec"


def _split_top(body: str) -> list[str]:
    out, depth, cur = [], 0, []
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _strip_comments(text: str) -> str:
    prev = None
    while prev != text:
        prev, text = text, re.sub(r"\s*\([^(){}]*\)", "", text)
    return text


def _parse_fields(tables: Tables, message: str, body: str, oneof: str | None = None) -> None:
    fields = tables.messages.setdefault(message, {})
    for item in _split_top(body):
        m = re.fullmatch(r"oneof (\w+) \{(.*)\}", item, re.S)
        if m:
            _parse_fields(tables, message, m.group(2), oneof=m.group(1))
            continue
        m = re.fullmatch(r"(repeated |opt )?(\w+):(\w+)(\{.*\})?=(\d+)", item.strip(), re.S)
        if not m:
            raise ValueError(f"cannot read spec field {item!r} of {message}")
        label, name, typ, nested, num = m.groups()
        if nested:
            inner = nested[1:-1]
            if ":" in inner:
                _parse_fields(tables, typ, inner)
            else:
                tables.enums[typ] = {k.strip(): int(v) for k, v in (x.split("=") for x in inner.split(","))}
        fields[name] = FieldSpec(name, typ, int(num), repeated=label == "repeated ",
                                 optional=label == "opt ", oneof=oneof)


def read_tables(path: Path) -> Tables:
    tables = Tables()
    text = path.read_text()
    for line in text.splitlines():
        m = re.match(r"- enum (\w+): (.*)$", line)
        if m:
            pairs = [x.strip() for x in _strip_comments(m.group(2)).split(",")]
            tables.enums[m.group(1)] = {k: int(v) for k, v in (p.split("=") for p in pairs)}
            continue
        m = re.match(r"- (\w+)(?: and (\w+))?(?: \(same shape\))?: (.*)$", line)
        if not m or ":" not in m.group(3):
            continue
        body = _strip_comments(m.group(3).rstrip("."))
        for name in filter(None, (m.group(1), m.group(2))):
            _parse_fields(tables, name, body)
    return tables


def read_services(path: Path) -> dict[str, tuple[str, str, bool]]:
    """rpc -> (request, response, server-streaming) from the `| rpc | request | response |` table."""
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"[A-Z]\w+", cells[0]) and cells[0] != "rpc":
            req = cells[1].split()[0]
            resp = cells[2].replace("stream ", "").split()[0]
            out[cells[0]] = (req, resp, cells[2].startswith("stream "))
    return out
