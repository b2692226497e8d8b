"""Load a PEFT LoRA folder's tensors. The folder's rules (files, options, targets, shapes, dtypes) are
chameleon.core.adapter_files', shared with the router; this module only reads the tensor data.

Every problem raises AdapterError with a message naming the folder and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from chameleon.core.adapter_files import WEIGHTS, AdapterFolderError, AdapterHeader, read_adapter_header
from chameleon.core.memory import ModelShape
from shard.lora.errors import AdapterError


@dataclass(frozen=True, slots=True)
class PeftAdapter:
    header: AdapterHeader
    # (layer, module) -> (A [r, in], B [out, r]), unscaled, in the dtype asked of load_peft
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def read_header(path: str | Path, shape: ModelShape) -> AdapterHeader:
    """The folder's header, validated for this base model (cheap: no tensor data is read)."""
    try:
        return read_adapter_header(path, shape)
    except AdapterFolderError as exc:
        raise AdapterError(str(exc)) from None


def load_peft(path: str | Path, shape: ModelShape, dtype: torch.dtype) -> PeftAdapter:
    """Read every tensor (shapes as the header promised, all finite); returns them converted to `dtype`
    (the storage dtype, see shard.lora.store)."""
    header = read_header(path, shape)
    weights: dict[tuple[int, str], list[torch.Tensor]] = {}
    try:
        with safe_open(str(header.path / WEIGHTS), framework="pt") as f:
            for t in header.tensors:
                slot = weights.setdefault((t.layer, t.module), [torch.empty(0), torch.empty(0)])
                slot[0 if t.ab == "A" else 1] = f.get_tensor(t.key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"{header.path / WEIGHTS} is corrupt or unreadable: {exc}") from exc
    out: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, module), (a, b) in weights.items():
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"{header.path}: layer {layer} {module} holds NaN or infinite values")
        out[(layer, module)] = (a.to(dtype), b.to(dtype))
    return PeftAdapter(header=header, weights=out)
