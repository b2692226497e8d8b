"""ModelConfig: the Llama-family config.json (Llama, Mistral, Qwen2) read as plain JSON.

Notes: Qwen2 always has q/k/v biases. Mistral's sliding window is ignored (attention is full): outputs
equal the reference as long as contexts stay within `sliding_window` tokens (4096 for Mistral-7B).
Rope scaling: "llama3", "linear" and none are supported; other types raise a clear error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chameleon.core.memory import ModelShape

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True, slots=True)
class RopeConfig:
    theta: float
    kind: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model_type: str
    shape: ModelShape
    rms_norm_eps: float
    rope: RopeConfig
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    max_position_embeddings: int
    sliding_window: int | None

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        model_type = str(cfg.get("model_type", "llama"))
        if model_type not in SUPPORTED_TYPES:
            raise ValueError(f"model_type {model_type!r} is not supported; use one of {SUPPORTED_TYPES}")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (only silu)")
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            model_type=model_type,
            shape=ModelShape.from_config(cfg),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=_rope(cfg),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            sliding_window=cfg.get("sliding_window") if model_type == "mistral" else None,
        )

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: MODEL_DIR must be a Hugging Face model folder")
        return cls.from_dict(json.loads(path.read_text()))


def _rope(cfg: dict[str, Any]) -> RopeConfig:
    """Reads rope settings in both the transformers 4 (rope_theta/rope_scaling) and 5 (rope_parameters)
    spellings."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = str(merged.get("rope_type", merged.get("type", "default")) or "default")
    if kind == "default":
        return RopeConfig(theta=theta)
    if kind not in ("linear", "llama3"):
        raise ValueError(f"rope scaling type {kind!r} is not supported (default, linear, llama3)")
    return RopeConfig(
        theta=theta, kind=kind, factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position=int(merged.get("original_max_position_embeddings", 8192)),
    )

