"""`chameleon bench-ray` against a real router + shard of the tiny model (the same HTTP API a serve-ray
endpoint offers), its counters read through an endpoint.json as serve-ray writes it; and serve-ray's
refusal of bad arguments."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from chameleon.scale.ray_cli import main as serve_ray_main
from chameleon.tools.cli import main as chameleon_main
from tests.procs import RouterProc, ShardProc, free_port, make_adapter_dir, workdir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_assets: Path) -> Iterator[tuple[RouterProc, Path]]:
    wd = workdir("cb-")
    model, adir = tiny_assets / "model", wd / "adapters"
    make_adapter_dir(tiny_assets / "adapters", adir, 10)
    shard = ShardProc(model, adir)
    router = None
    try:
        shard.wait_ready()
        router = RouterProc(shard, model, adir, wd, free_port(), free_port())
        router.wait_healthy()
        (wd / "ray" / "r0").mkdir(parents=True)
        (wd / "ray" / "r0" / "endpoint.json").write_text(json.dumps({"http": router.http}))
        yield router, wd
    finally:
        if router is not None:
            router.stop()
        shard.stop()
        shutil.rmtree(wd, ignore_errors=True)


def test_bench_ray_replays_over_http_and_sums_replica_counters(served: tuple[RouterProc, Path]):
    router, wd = served
    trace = wd / "trace.csv"
    trace.write_text("timestamp,input_tokens,output_tokens\n" +
                     "".join(f"{i},{200 + 37 * i % 300},{40 + 13 * i % 100}\n" for i in range(40)))
    out = wd / "bench.json"
    rc = chameleon_main(["bench-ray", "--url", router.http, "--workdir", str(wd / "ray"),
                         "--trace", str(trace),
                         "--rate", "4", "--duration", "5", "--adapters", "10", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    s = doc["summary"]
    assert s["requests"] == len(doc["requests"]) > 5 and s["errors"] == 0 and s["replicas"] == 1
    assert 0.0 <= s["cache_hit_rate"] <= 1.0 and s["adapter_loads_per_request"] > 0
    assert all(r["generated_tokens"] > 0 and r["ttft_s"] is not None for r in doc["requests"])
    # the router's own breakdown of the run; no Ray proxy in front, so no replica header to record
    (r0,) = s["per_replica"].values()
    assert r0["requests"] == s["requests"] and r0["prefill_s_per_token"] > 0 and r0["routed"] == 0
    assert r0["loads"] == round(s["adapter_loads_per_request"] * s["requests"])
    assert all(r["replica"] is None for r in doc["requests"])


def test_serve_ray_refuses_a_model_folder_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        serve_ray_main(["--model-id", str(tmp_path)])
    assert info.value.code == 2 and "no config.json there" in capsys.readouterr().err
