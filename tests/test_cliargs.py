from __future__ import annotations

import pytest

from chameleon.tools.cliargs import EnvArgumentParser


def _parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="x", env_aliases={"model_dir": ["MODEL_ID"]})
    p.add_argument("model_dir", help="model folder")
    p.add_argument("--max-batch", type=int, default=4, help="batch")
    p.add_argument("--json-output", action="store_true", help="json logs")
    p.add_argument("--scheduler", choices=["fifo", "chameleon"], default="chameleon", help="policy")
    return p


def test_command_line_beats_environment(monkeypatch):
    monkeypatch.setenv("MAX_BATCH", "9")
    assert _parser().parse_args(["m", "--max-batch", "3"]).max_batch == 3
    assert _parser().parse_args(["m"]).max_batch == 9


def test_environment_fills_positionals_flags_and_aliases(monkeypatch):
    monkeypatch.setenv("MODEL_ID", "/models/a")
    monkeypatch.setenv("JSON_OUTPUT", "true")
    monkeypatch.setenv("SCHEDULER", "fifo")
    args = _parser().parse_args([])
    assert (args.model_dir, args.json_output, args.scheduler) == ("/models/a", True, "fifo")


def test_bad_environment_value_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("MAX_BATCH", "many")
    with pytest.raises(SystemExit):
        _parser().parse_args(["m"])
    assert "MAX_BATCH='many'" in capsys.readouterr().err


def test_help_names_the_variable():
    assert "[env: MAX_BATCH]" in _parser().format_help()


def test_help_flag_has_no_variable():
    assert "[env: HELP]" not in _parser().format_help()
