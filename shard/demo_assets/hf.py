"""Hugging Face folder details shared by the tiny and the SmolLM2 builds: a clean config.json and a
tokenizer_config.json that carries its own chat template (readable without transformers)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PretrainedConfig

from shard.demo_assets.files import write_json

# Generic PretrainedConfig fields that say nothing about a causal LM checkpoint.
_NOISE = ("_name_or_path", "_model_name_or_path", "id2label", "label2id", "chunk_size_feed_forward",
          "is_encoder_decoder", "output_attentions", "output_hidden_states", "problem_type", "return_dict",
          "quantization_config", "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads")

_TOKENIZER_NOISE = ("is_local", "local_files_only", "name_or_path", "_commit_hash")


def clean_config(config: PretrainedConfig) -> dict[str, Any]:
    """config.to_dict() without generic noise; float32-rounded floats shown in their shortest decimal
    (GGUF stores 1e-5 as 9.999999747e-06); `rope_theta` also at top level for pre-5.x readers."""
    data = {k: v for k, v in config.to_dict().items() if k not in _NOISE}
    data["architectures"] = ["LlamaForCausalLM"]
    data["dtype"] = "float32"
    data["rms_norm_eps"] = float(str(np.float32(data["rms_norm_eps"])))
    rope = data.get("rope_parameters") or {}
    if "rope_theta" in rope:
        rope["rope_theta"] = float(str(np.float32(rope["rope_theta"])))
        data["rope_theta"] = rope["rope_theta"]
    return data


def write_config(model_dir: Path, config: PretrainedConfig) -> dict[str, Any]:
    data = clean_config(config)
    write_json(model_dir / "config.json", data)
    write_json(model_dir / "generation_config.json", {
        "bos_token_id": data["bos_token_id"], "eos_token_id": data["eos_token_id"],
        "pad_token_id": data.get("pad_token_id", data["eos_token_id"])})
    return data


def finish_tokenizer_config(model_dir: Path, max_length: int) -> None:
    """Move chat_template.jinja (transformers 5 default) into tokenizer_config.json, so the router can
    read the template with plain json; portable class name, a real model_max_length, no load-time keys."""
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = {k: v for k, v in json.loads(cfg_path.read_text()).items() if k not in _TOKENIZER_NOISE}
    cfg["model_max_length"] = max_length
    cfg["clean_up_tokenization_spaces"] = False
    jinja = model_dir / "chat_template.jinja"
    if jinja.exists():
        cfg["chat_template"] = jinja.read_text()
        jinja.unlink()
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(cfg_path, cfg)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own per-load progress bars while ours runs; restores the previous state."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
