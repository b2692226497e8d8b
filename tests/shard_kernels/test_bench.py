"""`python -m shard.kernels.bench --small` runs on CPU (interpreter) and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

from shard.kernels.bench import main


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["--device", "cpu", "--dtype", "float32", "--small", "--iters", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    kernels = [r["kernel"] for r in data["results"]]
    assert kernels == ["paged_decode_attention", "prefill_attention", "sgmv_lora"]
    assert all(r["bytes_read"] > 0 and r["max_abs_err"] < 1e-4 for r in data["results"])
