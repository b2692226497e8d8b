"""Read and validate a PEFT LoRA folder: adapter_config.json + adapter_model.safetensors only.

A pickle `adapter_model.bin` is refused (loading it could run arbitrary code). Every problem raises
AdapterError with a message naming the folder and the fix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from chameleon.memory import LORA_TARGETS, ModelShape
from shard.lora.errors import AdapterError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """What adapter_config.json and the key listing say, before any tensor is read."""

    path: Path
    rank: int
    alpha: float
    scaling: float               # alpha / r, or alpha / sqrt(r) with use_rslora
    targets: tuple[str, ...]     # in LORA_TARGETS order
    file_dtypes: tuple[str, ...] = ()  # safetensors dtype codes of the LoRA tensors ("BF16", "F32"), sorted


@dataclass(frozen=True, slots=True)
class PeftAdapter:
    spec: AdapterSpec
    # (layer, module) -> (A [r, in], B [out, r]), unscaled, in the dtype asked of load_peft
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise AdapterError(f"{path} has no {CONFIG}: not a PEFT adapter folder")
    if not (path / WEIGHTS).is_file():
        if (path / "adapter_model.bin").is_file():
            raise AdapterError(f"{path} holds only adapter_model.bin (a pickle file, which can run code when "
                               f"loaded); convert it to {WEIGHTS} with safetensors and retry")
        raise AdapterError(f"{path} has no {WEIGHTS}")
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{cfg_path} is not valid JSON: {exc}") from exc


def _check_options(path: Path, cfg: dict[str, Any]) -> None:
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    unsupported = {
        "use_dora": bool(cfg.get("use_dora")), "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")),
        "rank_pattern": bool(cfg.get("rank_pattern")), "alpha_pattern": bool(cfg.get("alpha_pattern")),
        "modules_to_save": bool(cfg.get("modules_to_save")),
        "layers_to_transform": cfg.get("layers_to_transform") is not None,
        "bias": str(cfg.get("bias", "none")) != "none",
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise AdapterError(f"{path}: unsupported LoRA options {bad}; plain LoRA on q/k/v/o/gate/up/down only")


def read_spec(path: str | Path, shape: ModelShape) -> AdapterSpec:
    """Validate the config and the weight key listing (cheap: no tensor data is read)."""
    path = Path(path)
    cfg = _read_config(path)
    _check_options(path, cfg)
    rank = cfg.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"{path}: r must be a positive integer, got {rank!r}")
    alpha = float(cfg.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    dtypes = _key_dtypes(path)
    found = _layer_modules(path, list(dtypes), shape)
    targets = tuple(m for m in LORA_TARGETS if m in found)
    return AdapterSpec(path=path, rank=rank, alpha=alpha, scaling=scaling, targets=targets,
                       file_dtypes=tuple(sorted(set(dtypes.values()))))


def _key_dtypes(path: Path) -> dict[str, str]:
    """Tensor name -> safetensors dtype code, from the header (no tensor data is read)."""
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            return {k: str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path / WEIGHTS} is corrupt or unreadable: {exc}") from exc


def _layer_modules(path: Path, keys: list[str], shape: ModelShape) -> set[str]:
    """Target modules; every one must have A and B in every layer of the base model."""
    seen: dict[str, set[tuple[int, str]]] = {}
    for key in keys:
        m = _KEY.search(key)
        if m is None or m.group(2) not in LORA_TARGETS:
            raise AdapterError(f"{path}: unknown target module in weight {key!r}; "
                               f"supported targets: {', '.join(LORA_TARGETS)}")
        layer = int(m.group(1))
        if layer >= shape.num_layers:
            raise AdapterError(f"{path}: weight {key!r} is for layer {layer}, but the base model has "
                               f"{shape.num_layers} layers")
        seen.setdefault(m.group(2), set()).add((layer, m.group(3)))
    if not seen:
        raise AdapterError(f"{path}: {WEIGHTS} holds no LoRA weights")
    full = {(layer, ab) for layer in range(shape.num_layers) for ab in "AB"}
    for module, got in seen.items():
        if got != full:
            raise AdapterError(f"{path}: {module} lacks lora_A/lora_B in some layers; adapters must cover "
                               "every layer")
    return set(seen)


def load_peft(path: str | Path, shape: ModelShape, dtype: torch.dtype) -> PeftAdapter:
    """Read and validate every tensor: A must be [r, in] and B [out, r] for this base model; returns
    them converted to `dtype` (the storage dtype, see shard.lora.store)."""
    spec = read_spec(path, shape)
    weights: dict[tuple[int, str], list[torch.Tensor | None]] = {}
    try:
        with safe_open(str(spec.path / WEIGHTS), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                m = _KEY.search(key)
                if m is None:  # read_spec rejected such keys already
                    continue
                slot = weights.setdefault((int(m.group(1)), m.group(2)), [None, None])
                slot[0 if m.group(3) == "A" else 1] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"{spec.path / WEIGHTS} is corrupt or unreadable: {exc}") from exc
    out: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, module), (a, b) in weights.items():
        fan_in, fan_out = shape.module_dims(module)
        want_a, want_b = (spec.rank, fan_in), (fan_out, spec.rank)
        if a is None or b is None or tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            got = (None if a is None else tuple(a.shape), None if b is None else tuple(b.shape))
            raise AdapterError(
                f"{spec.path}: layer {layer} {module} has A/B shapes {got}, expected ({spec.rank}, {fan_in}) "
                f"and ({fan_out}, {spec.rank}); the adapter was trained for a different base model "
                f"(hidden size {shape.hidden_size}) or rank")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"{spec.path}: layer {layer} {module} holds NaN or infinite values")
        out[(layer, module)] = (a.to(dtype), b.to(dtype))
    return PeftAdapter(spec=spec, weights=out)
