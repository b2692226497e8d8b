"""`chameleon launch` as a command: the demo model when no --model-id is given, JSON logs, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from chameleon.tools.launch.args import parse_args
from chameleon.tools.launch.plan import resolve_model


def test_no_model_serves_the_demo_assets_already_built(tmp_path, monkeypatch):
    for var in ("MODEL_ID", "ADAPTER_DIR"):
        monkeypatch.delenv(var, raising=False)
    demo = tmp_path / "demo"
    (demo / "model").mkdir(parents=True)
    (demo / "model" / "config.json").write_text("{}")
    (demo / "manifest.json").write_text("{}")  # demo-assets writes it last: the build is complete
    (demo / "adapters" / "r8-00").mkdir(parents=True)
    assert resolve_model(parse_args(["--demo-dir", str(demo)])) == (demo / "model", demo / "adapters")
    other = tmp_path / "mine"
    other.mkdir()
    args = parse_args(["--demo-dir", str(demo), "--adapter-dir", str(other)])
    assert resolve_model(args) == (demo / "model", other)


def test_demo_build_failure_is_a_json_logged_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "NUM_SHARD")}
    out = subprocess.run([sys.executable, "-m", "chameleon", "launch", "--json-output",
                          "--demo-dir", str(blocker / "demo")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 1
    records = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    launcher = [r for r in records if r["target"] == "chameleon.tools.launch"]
    assert launcher[0]["message"].startswith("no --model-id: building the demo model")
    assert launcher[-1]["level"] == "ERROR"
    assert f"building the demo assets in {blocker / 'demo'} failed" in launcher[-1]["message"]


def test_missing_model_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "chameleon", "launch", "--model-id", "/nonexistent/m"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no config.json there" in out.stderr
