"""Load safetensors checkpoints into the (sharded) model through each parameter's weight_loader."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from shard.model.llama import PACKED, LlamaForCausalLM

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _target(name: str) -> tuple[str, str | None]:
    """Checkpoint name -> (our parameter name, shard id of a packed module or None)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in PACKED:
            packed, shard_id = PACKED[part]
            return ".".join([*parts[:i], packed, *parts[i + 1:]]), shard_id
    return name, None


def load_weights(model: LlamaForCausalLM, model_dir: str | Path) -> int:
    """Fill every parameter from MODEL_DIR/*.safetensors; returns the number of tensors read.

    Raises ValueError for a folder without safetensors, unknown tensors or parameters left unset.
    """
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no *.safetensors weights (pickle .bin checkpoints are not loaded)")
    params = dict(model.named_parameters())
    tied = model.config.tie_word_embeddings
    pending = {(n, sid) for n, sid in _expected(model)}
    count = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.endswith(IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
                    continue
                target, shard_id = _target(name)
                if target not in params:
                    kind = model.config.model_type
                    raise ValueError(f"{path.name}: unexpected tensor {name!r} for a {kind} model")
                param = params[target]
                with torch.no_grad():
                    param.weight_loader(param, f.get_tensor(name), shard_id)  # type: ignore[attr-defined]
                pending.discard((target, shard_id))
                count += 1
    if pending:
        raise ValueError(f"{model_dir}: missing weights for {sorted(n for n, _ in pending)[:8]}")
    return count


def _expected(model: LlamaForCausalLM) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for name, _param in model.named_parameters():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        offsets = getattr(module, "offsets", None)
        out += [(name, sid) for sid in offsets] if offsets else [(name, None)]
    return out
