"""The MLQ settings on the command line: router flags and environment, launcher forwarding, and the
scheduler the serving loop builds from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from chameleon.core.adapters import AdapterSpec
from chameleon.tools.launch.args import parse_args
from chameleon.tools.mlqargs import MLQ_FLAGS, mlq_options
from router.cli import build_parser, engine_config
from router.engine.policies import Policies

ROUTER = ["--master-shard-uds-path", "/tmp/s-0", "--tokenizer", "/nonexistent"]
ENV = [f.flag[2:].replace("-", "_").upper() for f in MLQ_FLAGS]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)


def test_every_flag_has_help_and_reaches_mlqconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    text = build_parser().format_help()
    for f in MLQ_FLAGS:
        assert f.flag in text and f.help
    monkeypatch.setenv("MLQ_SLO_S", "3")
    args = build_parser().parse_args([*ROUTER, "--mlq-k-max", "2", "--mlq-need", "predicted",
                                      "--mlq-starve-factor", "0", "--mlq-size-stat", "p90",
                                      "--mlq-refresh-s", "60", "--mlq-refresh-requests", "200",
                                      "--mlq-prefill-share", "quota", "--mlq-compute-fcfs", "0",
                                      "--mlq-backfill", "4", "--mlq-backfill-evict", "on"])
    opts = dict(mlq_options(args))
    assert opts == {"slo_s": 3.0, "k_max": 2, "need": "predicted", "starve_factor": 0.0, "size_stat": "p90",
                    "t_refresh_s": 60.0, "refresh_requests": 200, "prefill_share": "quota",
                    "compute_fcfs": 0.0, "backfill_lookahead": 4, "backfill_evict": True}
    monkeypatch.delenv("MLQ_SLO_S")
    assert mlq_options(build_parser().parse_args(ROUTER)) == ()


def test_bad_values_are_usage_errors() -> None:
    args = build_parser().parse_args([*ROUTER, "--mlq-size-stat", "median"])
    with pytest.raises(ValueError, match="statistic"):
        mlq_options(args)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*ROUTER, "--mlq-need", "sometimes"])
    with pytest.raises(SystemExit):
        build_parser().parse_args([*ROUTER, "--mlq-backfill-evict", "maybe"])


def test_engine_config_and_policies_build_the_configured_scheduler(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    args = build_parser().parse_args(["--master-shard-uds-path", "/tmp/s-0", "--tokenizer", str(tmp_path),
                                      "--mlq-slo-s", "2.5", "--mlq-k-max", "3"])
    eng = engine_config(args)
    assert dict(eng.mlq) == {"slo_s": 2.5, "k_max": 3}

    def spec(name: str) -> AdapterSpec:
        return AdapterSpec(name, 8, 4096, 1)

    sched = Policies("chameleon", "chameleon", 16, spec, 4096, mlq=eng.mlq).new_scheduler()
    assert (sched.config.slo_s, sched.config.k_max) == (2.5, 3)
    assert Policies("fifo", "none", 16, spec, 4096, mlq=eng.mlq).new_scheduler().name == "fifo"


def test_launcher_forwards_the_mlq_flags_to_the_router(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("MLQ_K_MAX", "2")
    monkeypatch.setenv("MLQ_BACKFILL_EVICT", "off")
    args = parse_args(["--model-id", str(tmp_path), "--mlq-slo-s", "3"])
    assert args.router_flags == ("--mlq-slo-s", "3.0", "--mlq-k-max", "2", "--mlq-backfill-evict", "False")
    forwarded = build_parser().parse_args([*ROUTER, *args.router_flags])
    assert dict(mlq_options(forwarded))["backfill_evict"] is False
    assert "--mlq-slo-s" not in args.shard_flags
