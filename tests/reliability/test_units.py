"""Unit tests of the reliability pieces: MemoryManager.evict, the API key checks, TLS flags, and the
launcher handing the key to the router in its environment (never on its command line)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chameleon.core.adapters import AdapterSpec
from chameleon.tools.launch.args import parse_args
from chameleon.tools.launch.plan import build_plan
from router.api.auth import Secret, TlsFiles, key_matches, offered_key
from router.cli import build_parser, server_config
from tests.policy.helpers import memory, req

SPECS = [AdapterSpec("a", 8, 4096, 4), AdapterSpec("b", 8, 4096, 4)]


def test_evict_frees_idle_pages_counts_and_refuses_pinned() -> None:
    mem = memory(40, SPECS)
    assert mem.try_admit(req(1, "a", inp=4, max_new=4), 0.0) is not None
    assert mem.try_admit(req(2, "b", inp=4, max_new=4), 0.0) is not None
    mem.release(1, 1.0)
    free = mem.pool.free_pages()
    with pytest.raises(RuntimeError, match="in use by 1"):
        mem.evict("b", 2.0)
    assert mem.evict("a", 2.0) is True
    assert "a" not in mem.cache and mem.pool.free_pages() == free + 4
    assert mem.stats()["evictions"] == 1
    assert mem.evict("a", 3.0) is False
    assert mem.take_offloads() == []  # the caller offloads what it evicted itself
    mem.check_integrity()


def test_secret_never_shows_itself() -> None:
    key = Secret("s3cr3t-value")
    assert "s3cr3t" not in repr(key) and "s3cr3t" not in str(key) and "s3cr3t" not in f"{key} {key!r}"
    with pytest.raises(ValueError):
        Secret("")


@pytest.mark.parametrize(
    ("headers", "offered"),
    [
        ([("Authorization", "Bearer k1")], "k1"),
        ([("authorization", "bearer   k1 ")], "k1"),
        ([("x-api-key", "k2")], "k2"),
        ([("Authorization", "Basic k1")], None),
        ([("Authorization", "Bearer ")], None),
        ([("other", "Bearer k1")], None),
        ([("x-api-key", b"k2")], None),
        ([], None),
    ],
)
def test_offered_key(headers: list[tuple[str, object]], offered: str | None) -> None:
    assert offered_key(headers) == offered


def test_key_matches_exactly() -> None:
    key = Secret("abc")
    assert key_matches(key, "abc")
    assert not key_matches(key, "abcd") and not key_matches(key, "ab") and not key_matches(key, None)
    assert not key_matches(key, "\udcff")  # undecodable header bytes are refused, not an error


def test_router_flags_from_environment_hide_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("API_KEY", "from-env-key")
    args = build_parser().parse_args(["--master-shard-uds-path", "x", "--tokenizer", str(tmp_path)])
    assert isinstance(args.api_key, Secret) and args.api_key.reveal() == "from-env-key"
    assert "from-env-key" not in repr(args) and "from-env-key" not in repr(server_config(args))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "from-env-key" not in capsys.readouterr().out
    monkeypatch.setenv("API_KEY", "")
    args = build_parser().parse_args(["--master-shard-uds-path", "x", "--tokenizer", str(tmp_path)])
    assert args.api_key is None


def test_tls_flags_must_be_complete(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    for f in (cert, key, ca):
        f.write_text("x")
    assert TlsFiles.from_flags(None, None, None) is None
    assert TlsFiles.from_flags(cert, key, ca) == TlsFiles(cert, key, ca)
    with pytest.raises(ValueError, match="go together"):
        TlsFiles.from_flags(cert, None, None)
    with pytest.raises(ValueError, match="needs --tls-cert"):
        TlsFiles.from_flags(None, None, ca)
    with pytest.raises(ValueError, match="no such file"):
        TlsFiles.from_flags(cert, tmp_path / "missing.pem", None)


def test_router_exits_2_on_incomplete_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from router.cli import main

    code = main(["--master-shard-uds-path", "x", "--tokenizer", str(tmp_path), "--tls-cert", "c.pem"])
    assert code == 2 and "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_launch_hands_the_key_over_in_the_router_environment(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.delenv("API_KEY", raising=False)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    args = parse_args(["--model-id", str(model), "--api-key", "launch-key", "--tls-cert", "c.pem",
                       "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"])
    plan = build_plan(args, model, None)
    assert plan.router is not None
    assert "launch-key" not in " ".join(plan.router.argv)
    assert plan.router.env["API_KEY"] == "launch-key"
    argv = list(plan.router.argv)
    for flag, value in (("--tls-cert", "c.pem"), ("--tls-key", "k.pem"), ("--tls-client-ca", "ca.pem")):
        assert argv[argv.index(flag) + 1] == value
    assert argv[:3] == [sys.executable, "-m", "chameleon"]
    assert all("launch-key" not in " ".join(s.argv) for s in plan.shard_group())
