from __future__ import annotations

from pathlib import Path

import pytest

from chameleon.sim.cost import CostModel
from chameleon.sim.paper_a40 import PAPER_TTFT_MS
from chameleon.sim.profile import Profile
from chameleon.sim.profiles import load_profile


@pytest.mark.parametrize("rank", sorted(PAPER_TTFT_MS))
def test_unloaded_ttft_reproduces_paper(a40: Profile, rank: int) -> None:
    ttft = CostModel(a40).unloaded_ttft(rank, a40.ref_input_tokens)
    assert ttft == pytest.approx(PAPER_TTFT_MS[rank] / 1e3, rel=0.03)


def test_paper_sizes_and_memory(a40: Profile) -> None:
    assert a40.bytes_for_rank(32) == 64 * 2**20           # paper: rank-32 adapter of Llama-7B = 64 MB
    assert a40.bytes_for_rank(128) == 4 * a40.bytes_for_rank(32)
    assert a40.kv_bytes_per_token == 512 * 1024
    assert 25e9 < a40.pool_bytes < 35e9                     # 48 GB A40 minus 13.5 GB weights and reserve
    assert a40.num_pages * a40.page_bytes <= a40.pool_bytes
    every_field = {f for f in a40.to_dict() if f not in ("name", "sources")}
    assert every_field <= set(a40.sources), "every constant names its source"


def test_cost_model_shape(a40: Profile) -> None:
    cost = CostModel(a40)
    assert cost.step_time(0) == 0.0
    small, big = cost.step_time(1), cost.step_time(4096)
    assert small == pytest.approx(a40.step_overhead_s + a40.weight_read_s)    # memory bound
    assert big == pytest.approx(a40.step_overhead_s + 4096 * a40.compute_s_per_token)  # compute bound
    assert cost.step_time(8, 0, 10_000) > cost.step_time(8)                  # context costs KV reads
    assert cost.step_time(300, 300 * 128) > cost.step_time(300)              # higher rank, more work
    assert cost.load_time(a40.bytes_for_rank(64)) == pytest.approx(2 * cost.load_time(a40.bytes_for_rank(32)))


def test_profile_json_roundtrip(a40: Profile, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    a40.save(path)
    again = load_profile(str(path))
    assert again == a40
    assert load_profile("a40-llama7b") == a40


def test_bad_profile_is_rejected(a40: Profile, tmp_path: Path) -> None:
    d = a40.to_dict()
    d["weights_bytes"] = d["device_memory_bytes"]
    path = tmp_path / "bad.json"
    path.write_text(__import__("json").dumps(d))
    with pytest.raises(ValueError, match="exceed device memory"):
        Profile.load(path)
    path.write_text('{"name": "x"}')
    with pytest.raises(ValueError, match="missing fields"):
        Profile.load(path)
