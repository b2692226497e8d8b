"""Synthetic PEFT LoRA folders for tests, written without torch: a real safetensors file (zero weights,
which every reader accepts and loads) whose tensors, dtypes and shapes the test chooses."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from chameleon.core.memory import ModelShape

CODE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


def lora_tensors(shape: ModelShape, rank: int, targets: Sequence[str], dtype: str | Mapping[str, str] = "F32",
                 layers: Sequence[int] | None = None) -> dict[str, tuple[str, list[int]]]:
    """PEFT key -> (dtype code, shape) for A [r, in] and B [out, r] of every target in every layer;
    `dtype` one code for all, or per module."""
    out: dict[str, tuple[str, list[int]]] = {}
    for layer in range(shape.num_layers) if layers is None else layers:
        for module in targets:
            fan_in, fan_out = shape.module_dims(module)
            block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            code = dtype if isinstance(dtype, str) else dtype[module]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            out[f"{prefix}.lora_A.weight"] = (code, [rank, fan_in])
            out[f"{prefix}.lora_B.weight"] = (code, [fan_out, rank])
    return out


def write_safetensors(path: Path, tensors: Mapping[str, tuple[str, list[int]]]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, (code, dims) in tensors.items():
        size = math.prod(dims) * CODE_BYTES[code]
        header[key] = {"dtype": code, "shape": dims, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def write_peft(folder: Path, rank: int, tensors: Mapping[str, tuple[str, list[int]]],
               config: Mapping[str, object] | None = None) -> Path:
    """A PEFT folder: adapter_config.json (r, lora_alpha = 2r, plus `config`) and the tensors."""
    folder.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": "all-linear",
           **(config or {})}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    write_safetensors(folder / "adapter_model.safetensors", tensors)
    return folder
