"""`chameleon launch` flags: environment fallbacks, forwarding to the children, the resolved plan."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chameleon.tools.launch.args import parse_args
from chameleon.tools.launch.plan import build_plan, connect_host

LAUNCH_VARS = ("MODEL_ID", "NUM_SHARD", "LORA_ADAPTERS", "ADAPTER_DIR", "PORT", "GRPC_PORT", "JSON_OUTPUT",
               "SCHEDULER", "ADAPTER_CACHE", "HOSTNAME", "CUDA_VISIBLE_DEVICES", "MASTER_PORT",
               "MASTER_ADDR", "ROUTER_ARGS", "SHARD_ARGS", "MEMORY_BUDGET", "DTYPE", "SHARD_UDS_PATH",
               "MAX_CONCURRENT_REQUESTS", "DEMO_DIR", "XDG_CACHE_HOME")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "ad").mkdir()
    return tmp_path / "m"


def test_environment_configures_every_launch_flag(monkeypatch, model):
    monkeypatch.setenv("MODEL_ID", str(model))
    monkeypatch.setenv("NUM_SHARD", "2")
    monkeypatch.setenv("LORA_ADAPTERS", "a=/x/a,b=/x/b")
    monkeypatch.setenv("ADAPTER_DIR", str(model.parent / "ad"))
    monkeypatch.setenv("PORT", "4000")
    monkeypatch.setenv("JSON_OUTPUT", "true")
    monkeypatch.setenv("SCHEDULER", "fifo")
    args = parse_args([])
    assert (args.model_id, args.num_shard, args.port, args.json_output) == (model, 2, 4000, True)
    assert args.adapter_dir == model.parent / "ad"
    assert args.shard_flags == ("--lora-adapters", "a=/x/a,b=/x/b", "--json-output")
    assert args.router_flags == ("--scheduler", "fifo", "--json-output")


def test_command_line_wins_over_environment(monkeypatch, model):
    monkeypatch.setenv("NUM_SHARD", "4")
    monkeypatch.setenv("PORT", "4000")
    args = parse_args(["--model-id", str(model), "--num-shard", "2", "--port", "5000"])
    assert (args.num_shard, args.port) == (2, 5000)


def test_unset_forwarded_flags_are_not_passed(model):
    args = parse_args(["--model-id", str(model)])
    assert args.router_flags == ()
    assert args.shard_flags == ()


def test_num_shard_defaults_to_visible_cuda_devices(monkeypatch, model):
    assert parse_args(["--model-id", str(model)]).num_shard == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert parse_args(["--model-id", str(model)]).num_shard == 3


def test_extra_child_flags_are_shell_split(model):
    args = parse_args(["--model-id", str(model), "--router-args", "--max-stop-sequences 2 --foo 'a b'"])
    assert args.router_flags == ("--max-stop-sequences", "2", "--foo", "a b")


@pytest.mark.parametrize("argv, message", [
    (["--model-id", "/nonexistent/model"], "no config.json there"),
    (["--num-shard", "0"], "must be >= 1"),
    (["--scheduler", "random"], "invalid choice"),
    (["--adapter-dir", "/nonexistent/adapters"], "not a folder"),
    (["--router-args", "'unclosed"], "--router-args"),
])
def test_bad_values_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_bad_environment_value_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("NUM_SHARD", "two")
    with pytest.raises(SystemExit):
        parse_args([])
    assert "NUM_SHARD='two'" in capsys.readouterr().err


def test_plan_wires_ranks_sockets_and_router(model):
    args = parse_args(["--model-id", str(model), "--num-shard", "2", "--shard-uds-path", "/tmp/x",
                       "--port", "3100", "--grpc-port", "8100", "--scheduler", "sjf",
                       "--memory-budget", "1000", "--adapter-dtype", "model", "--master-port", "29999"])
    plan = build_plan(args, model, model.parent / "ad")
    shards = plan.shard_group()
    assert [s.unix_socket for s in shards] == ["/tmp/x-0", "/tmp/x-1"]
    assert [s.env["RANK"] for s in shards] == ["0", "1"]
    assert {(s.env["WORLD_SIZE"], s.env["MASTER_PORT"], s.env["MASTER_ADDR"]) for s in shards} == {
        ("2", "29999", "127.0.0.1")}
    assert shards[1].argv == (sys.executable, "-m", "chameleon", "shard", str(model), "--uds-path", "/tmp/x",
                              "--adapter-dir", str(model.parent / "ad"), "--memory-budget", "1000",
                              "--adapter-dtype", "model")
    router = plan.router
    assert router.argv == (sys.executable, "-m", "chameleon", "router", "--master-shard-uds-path", "/tmp/x-0",
                           "--tokenizer", str(model), "--port", "3100", "--grpc-port", "8100",
                           "--drain-timeout", "60", "--adapter-dir", str(model.parent / "ad"),
                           "--scheduler", "sjf")
    assert router.tcp == ("127.0.0.1", 3100)


def test_free_rendezvous_port_per_group_start_when_not_given(model):
    plan = build_plan(parse_args(["--model-id", str(model)]), model, None)
    port = int(plan.shard_group()[0].env["MASTER_PORT"])
    assert 0 < port < 65536
    assert "--adapter-dir" not in plan.router.argv


@pytest.mark.parametrize("hostname, expected", [(None, "127.0.0.1"), ("0.0.0.0", "127.0.0.1"),
                                                ("::", "::1"), ("10.1.2.3", "10.1.2.3")])
def test_connect_host(hostname, expected):
    assert connect_host(hostname) == expected
