"""Import boundaries: the policy core and the router never drag in torch (or grpc for the core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _loaded(code: str) -> set[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_chameleon_loads_neither_torch_nor_grpc():
    mods = _loaded("import chameleon, chameleon.tools.cli, chameleon.tools.cliargs, chameleon.tools.logs")
    assert "torch" not in mods
    assert "grpc" not in mods
    assert "asyncio" not in mods


def test_router_does_not_load_torch():
    mods = _loaded("import chameleon, router")
    assert "torch" not in mods


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "chameleon", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("launch", "router", "shard", "demo-assets", "simulate"):
        assert name in out.stdout


def test_router_cli_and_server_do_not_load_torch():
    mods = _loaded("import router.cli, router.server")
    assert "torch" not in mods
    assert "transformers" not in mods
    assert not any(m == "shard" or m.startswith("shard.") for m in mods)


def _omp_policy(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    probe = ("import os, sys\nimport shard, shard.cli\n"
             f"assert os.environ.get('OMP_WAIT_POLICY') == {env_value!r}, 'importing shard set it'\n"
             "try:\n    shard.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
             "assert 'torch' not in sys.modules, 'torch loaded before the shard entry ran'\n"
             "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_shard_makes_openmp_wait_passively_before_torch_loads():
    """Torch's OpenMP workers must not spin on the cores the C kernels' workers need: the shard process
    entry (shard.cli.main) sets it before torch loads; importing `shard` sets nothing."""
    assert _omp_policy(None) == "PASSIVE"
    assert _omp_policy("ACTIVE") == "ACTIVE"  # the user's setting wins
