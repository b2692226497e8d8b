"""Last step of scripts/gpu_check.sh: OUT_DIR/summary.json from the stage table, the pytest junit file,
bench.json and kernels.json, with the issue's targets; prints it. Exit 0 when every stage exited 0.

usage: gpu_check_summary.py OUT_DIR STAGES_TSV [--dry-run]
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# issue 18 (bench-shard on one H100): decode step within 1.5x of the bandwidth floor; 32 adapters >= 0.8x
# base-only; mixed-adapter decode >= 5x transformers+PEFT
TARGETS = {"floor_ratio": ("<=", 1.5), "multi_vs_base_decode": (">=", 0.8),
           "multi_vs_peft_decode": (">=", 5.0)}


def stages(path: Path) -> list[dict[str, object]]:
    rows = []
    for line in path.read_text().splitlines():
        name, rc, seconds, limit = line.split("\t")
        rows.append({"stage": name, "rc": int(rc) if rc.lstrip("-").isdigit() else rc,
                     "seconds": int(seconds), "limit_s": int(limit),
                     "timed_out": rc in ("124", "137")})
    return rows


def tests(path: Path) -> dict[str, object] | None:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": str(exc)}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                           "message": (bad.get("message") or "")[:500]})
    return {**counts, "failed": failed}


def load(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def targets(bench: dict | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, (op, bound) in TARGETS.items():
        value = bench.get(key) if isinstance(bench, dict) else None
        ok = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out[key] = {"value": value, "target": f"{op} {bound}", "met": ok}
    return out


def main(argv: list[str]) -> int:
    out_dir, table = Path(argv[0]), Path(argv[1])
    rows = stages(table)
    bench = load(out_dir / "bench.json")
    summary = {"dry_run": "--dry-run" in argv, "stages": rows, "tests": tests(out_dir / "gpu_tests.xml"),
               "targets": targets(bench if isinstance(bench, dict) else None),
               "kernels": load(out_dir / "kernels.json"),
               "env": load(out_dir / "env.json")}
    if isinstance(bench, dict):
        summary["bench"] = {k: bench.get(k) for k in ("device", "backend", "cuda_graphs", "weight_bytes",
                                                      "kv_bytes_per_step", "floor_step_ms",
                                                      "bandwidth_bytes_per_s", "floor_ratio",
                                                      "multi_vs_base_decode", "multi_vs_peft_decode")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("kernels", "env")}, indent=2))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
