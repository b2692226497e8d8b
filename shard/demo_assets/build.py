"""Build an assets directory: the model folder (tiny or SmolLM2), then the adapters, then a manifest.

A directory whose manifest matches the request and whose files are all present (with the recorded
sizes) is left as it is, so `chameleon launch` and the test fixtures pay for a build once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from chameleon.core.memory import LORA_TARGETS
from shard.demo_assets.files import LOCK, MANIFEST, file_lock, remove_stale_adapters, tree_hashes, write_json
from shard.demo_assets.hf import quiet_transformers
from shard.demo_assets.lora import (
    ATTENTION_TARGETS,
    plan_adapters,
    read_targets,
    single_thread,
    write_adapter,
)

log = logging.getLogger(__name__)
BUILDER_VERSION = 3  # bump whenever the bytes written for a request change
DEMO_RANKS = (8, 16, 32, 64, 128)
TINY_RANKS = (8, 16, 64, 128)
DEMO_TARGETS = ATTENTION_TARGETS  # the paper's adapters (q, k, v, o)
TINY_TARGETS = LORA_TARGETS  # every linear, so the tests cover MLP adapters too


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """What to build. `strength` is the relative size of each adapter's delta (see lora.py);
    `targets` the PEFT module names every adapter adapts."""

    tiny: bool
    seed: int
    ranks: tuple[int, ...]
    adapters_per_rank: int
    strength: float
    targets: tuple[str, ...] = DEMO_TARGETS

    def key(self) -> dict[str, object]:
        return {**asdict(self), "ranks": list(self.ranks), "targets": list(self.targets),
                "builder_version": BUILDER_VERSION}


def build_assets(out_dir: Path, req: BuildRequest, *, cache_dir: Path, progress: bool = True,
                 force: bool = False) -> Path:
    """Build (or confirm up to date) `out_dir/model`, `out_dir/adapters/*`, `out_dir/manifest.json`."""
    out_dir = out_dir.resolve()
    with file_lock(out_dir / LOCK):
        if not force and is_complete(out_dir, req):
            log.info("demo assets in %s are up to date", out_dir)
            return out_dir
        (out_dir / MANIFEST).unlink(missing_ok=True)  # written again last: no manifest = not complete
        specs = plan_adapters(req.ranks, req.adapters_per_rank, req.seed)
        with quiet_transformers(), tqdm(total=1 + len(specs), desc="model", unit="step",
                                        disable=not progress) as bar:
            base_name = _build_model(out_dir / "model", req, cache_dir, bar.set_description)
            bar.update()
            weights = read_targets(out_dir / "model" / "model.safetensors", req.targets)
            adapters = out_dir / "adapters"
            remove_stale_adapters(adapters, {s.name for s in specs})
            with single_thread():
                for spec in specs:
                    bar.set_description(f"adapter {spec.name}")
                    write_adapter(adapters, spec, weights, base_name=base_name, strength=req.strength,
                                  targets=req.targets)
                    bar.update()
            bar.set_description("done")
        _write_manifest(out_dir, req)
    return out_dir


def _build_model(model_dir: Path, req: BuildRequest, cache_dir: Path,
                 say: Callable[[str], None]) -> str:
    """Write the model folder; returns the model's name for adapter_config.json."""
    if req.tiny:
        from shard.demo_assets.tiny import MODEL_NAME, build_tiny_model

        say("tiny model")
        build_tiny_model(model_dir, req.seed)
        return MODEL_NAME
    from shard.demo_assets.smollm2 import MODEL_NAME, install_smollm2

    install_smollm2(model_dir, cache_dir, say)
    return MODEL_NAME




def _write_manifest(out_dir: Path, req: BuildRequest) -> None:
    files = {name: {"sha256": digest, "bytes": (out_dir / name).stat().st_size}
             for name, digest in tree_hashes(out_dir).items()}
    write_json(out_dir / MANIFEST, {"request": req.key(), "files": files})


def is_complete(out_dir: Path, req: BuildRequest) -> bool:
    """True when the manifest was written for this request and every listed file has its size."""
    path = out_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("request") != req.key():
        return False
    files = manifest.get("files") or {}
    return bool(files) and all((out_dir / name).is_file() and (out_dir / name).stat().st_size == meta["bytes"]
                               for name, meta in files.items())
