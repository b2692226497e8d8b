"""Start real `chameleon shard` processes for the engine tests (tiny model, unix sockets)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from router.engine.config import EngineConfig

BUDGET = 100_000_000  # bytes per shard: tiny weights + activations + a pool of ~2500 pages (32 KiB)
PREFILL = 256         # --max-batch-prefill-tokens: small warmup, small activation reserve


class ShardProc:
    """One rank-0 shard process; `uds` is the path the router gets (`<prefix>-0`)."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None, budget: int = BUDGET) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ce-", dir="/tmp"))
        self.prefix = self.dir / "s"
        self.uds = f"{self.prefix}-0"
        cmd = [sys.executable, "-m", "chameleon", "shard", str(model_dir), "--uds-path", str(self.prefix),
               "--memory-budget", str(budget), "--threads", "1"]
        if adapter_dir is not None:
            cmd += ["--adapter-dir", str(adapter_dir)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                                 "MASTER_PORT", "LOCAL_RANK")}
        self.log = self.dir / "shard.log"
        self._cmd, self._env = cmd, env
        self._spawn()

    def _spawn(self) -> None:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(self._cmd, stdout=out, stderr=subprocess.STDOUT, env=self._env)

    def restart(self) -> ShardProc:
        """Start the same shard again (after `kill`), as the launcher does: stale socket removed."""
        self.kill()
        Path(self.uds).unlink(missing_ok=True)
        self._spawn()
        return self

    def wait_ready(self, timeout_s: float = 180.0) -> ShardProc:
        deadline = time.monotonic() + timeout_s
        while not Path(self.uds).exists():
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"shard exited with {self.proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"shard socket {self.uds} did not appear:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def make_adapter_dir(tiny_assets: Path, dest: Path, count: int = 20) -> list[str]:
    """`count` adapters under new names (a{i:02d}), each a symlink to one of the tiny set."""
    src = sorted(p for p in (tiny_assets / "adapters").iterdir() if p.is_dir())
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"a{i:02d}"
        (dest / name).symlink_to(src[i % len(src)], target_is_directory=True)
        names.append(name)
    return names


def engine_config(shard: ShardProc, tiny_assets: Path, adapter_dir: Path | None,
                  **kw: object) -> EngineConfig:
    return EngineConfig(master_shard_uds_path=shard.uds, model_dir=tiny_assets / "model",
                        adapter_dir=adapter_dir, max_batch_prefill_tokens=PREFILL, **kw)  # type: ignore[arg-type]
