"""`chameleon bench-shard` runs end to end on the tiny assets and reports every number (no timing asserts)."""

from __future__ import annotations

import json

from shard.bench import main


def test_bench_shard_json(tiny_assets, capsys):
    rc = main(["--model-dir", str(tiny_assets / "model"), "--adapter-dir", str(tiny_assets / "adapters"),
               "--requests", "4", "--prompt-tokens", "8", "--new-tokens", "3", "--floor-batch", "2",
               "--memory-budget", str(2 * 1024**3), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["adapter_ranks"]) == 4
    for key in ("base", "multi", "peft", "floor_batch"):
        assert out[key]["decode_tokens_per_s"] > 0 and out[key]["prefill_tokens_per_s"] > 0
    assert out["floor_step_ms"] > 0 and out["multi_vs_peft_decode"] > 0 and out["multi_vs_base_decode"] > 0
    assert out["adapter_bytes_per_step"] > 0 and 0 < out["multi_vs_base_ceiling"] < 1
    assert out["multi_floor_step_ms"] > out["floor_step_ms"] and out["multi_floor_ratio"] > 0
    at = out["floor_batch"]  # a bandwidth sample before every step of the floor batch
    assert len(at["bandwidth_bytes_per_s"]) == len(at["steps_ms"]) == 2
    assert min(at["bandwidth_bytes_per_s"]) > 0 and out["best_bandwidth_bytes_per_s"] > 0
    assert out["floor_ratio"] > 0 and out["floor_ratio_best_bandwidth"] > 0
    assert ("torch_path" in out) == out["cpu_kernels"]  # kernels on: the torch path is measured too
    if out["cpu_kernels"]:
        assert out["torch_path"]["multi"]["decode_tokens_per_s"] > 0 and out["torch_path"]["floor_ratio"] > 0


def test_bench_shard_without_assets_explains(tmp_path, capsys):
    assert main(["--model-dir", str(tmp_path / "none"), "--adapter-dir", str(tmp_path)]) == 2
    assert "chameleon demo-assets" in capsys.readouterr().err
