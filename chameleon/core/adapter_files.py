"""Adapter rules the router and the shard must agree on, written once (no torch, no tensor data read).

- The adapter id rule (`check_adapter_id`): a plain folder name, so an id can never name a path.
- The names that mean "no adapter, the base model": `BASE_ADAPTER_IDS` on the shard's wire,
  `base_model_names` for the model names clients send the router.
- A PEFT LoRA folder's header (`read_adapter_header`): adapter_config.json plus the JSON header of
  adapter_model.safetensors give rank, alpha, scaling, target modules and every tensor's dtype and
  shape. A pickle `adapter_model.bin` is refused (loading it could run code). The folder is checked
  against the base model (every target in every layer, A [r, in] and B [out, r]), so the router
  refuses exactly what the shard refuses, before any tensor is read.
- Its footprint (`adapter_footprint`): storage dtype, bytes and pool pages. Only the LoRA tensors
  (`lora_A`/`lora_B`) count; a folder holding any other tensor is refused. Router and shard both size
  adapters here, so their page counts are equal by construction.

The shard keeps only the tensor loading (shard.lora.peft_loader).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chameleon.core.memory import (
    DTYPE_BYTES,
    LORA_TARGETS,
    ModelShape,
    adapter_bytes,
    adapter_pages,
    adapter_storage_dtype,
)

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"

ADAPTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Adapter ids on the shard's wire that mean "the base model" (TGI's empty id and its "__base__").
BASE_ADAPTER_IDS: frozenset[str] = frozenset({"", "__base__"})
# `model` values clients send when they do not name one: "tgi" (TGI docs, text-generation) and "dummy"
# (huggingface_hub.InferenceClient(base_url=...)); both mean the base model, never an adapter.
CLIENT_PLACEHOLDERS: tuple[str, ...] = ("tgi", "dummy")

# A LoRA weight's safetensors key: layer, module, A or B (PEFT may insert an adapter name before .weight).
_LORA_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")
_MAX_HEADER = 100 << 20
# bytes per element of the safetensors dtype codes (a tensor's data must be exactly numel * this)
_CODE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}
_UNSUPPORTED_OPTIONS = ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "modules_to_save")


class AdapterIdError(ValueError):
    """An adapter id that is not a plain name; the message says what is allowed."""


class AdapterFolderError(ValueError):
    """An adapter folder that cannot be used: missing, pickle-only, corrupt, unsupported options, or
    trained for another base model. The message names the folder and what is wrong."""


def valid_adapter_id(adapter_id: str) -> bool:
    """1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'."""
    return bool(ADAPTER_ID.match(adapter_id)) and ".." not in adapter_id


def check_adapter_id(adapter_id: str) -> str:
    """The id itself when it is a plain name (`valid_adapter_id`); raises AdapterIdError otherwise."""
    if not valid_adapter_id(adapter_id):
        raise AdapterIdError(
            f"adapter id {adapter_id!r} is not a plain name: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', no '..')")
    return adapter_id


def base_model_names(*names: str) -> tuple[str, ...]:
    """Model names that select the base model: the given ones (served name, model id, model folder
    name; empty ones dropped) and the `CLIENT_PLACEHOLDERS`, in order, without repeats."""
    return tuple(dict.fromkeys(n for n in (*names, *CLIENT_PLACEHOLDERS) if n))


@dataclass(frozen=True, slots=True)
class LoraTensor:
    """One LoRA weight as the safetensors header lists it."""

    key: str
    layer: int
    module: str
    ab: str                  # "A" or "B"
    dtype: str               # safetensors dtype code ("BF16", "F32", ...)
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AdapterHeader:
    """What a PEFT LoRA folder says before any tensor is read."""

    path: Path
    rank: int
    alpha: float
    scaling: float                   # alpha / r, or alpha / sqrt(r) with use_rslora
    targets: tuple[str, ...]         # in LORA_TARGETS order, from the tensor names
    tensors: tuple[LoraTensor, ...]  # every tensor of the file (all LoRA weights), in file order

    @property
    def file_dtypes(self) -> tuple[str, ...]:
        """Sorted safetensors dtype codes of the LoRA tensors: the input of the storage dtype rule."""
        return tuple(sorted({t.dtype for t in self.tensors}))

    def storage_dtype(self, model_dtype: str, policy: str) -> str:
        """The dtype its A/B are kept in, in the pool (chameleon.core.memory.adapter_storage_dtype)."""
        return adapter_storage_dtype(model_dtype, self.file_dtypes, policy)


@dataclass(frozen=True, slots=True)
class AdapterFootprint:
    """An adapter's size in the pool: `nbytes` all ranks together in `dtype`; `pages` on every rank."""

    dtype: str
    nbytes: int
    pages: int


def adapter_footprint(shape: ModelShape, rank: int, targets: tuple[str, ...], dtype: str,
                      pool_dtype_bytes: int, block_size: int, world: int) -> AdapterFootprint:
    """Bytes and pool pages of an adapter stored in `dtype` ("float32", "bfloat16", "float16"), in a
    pool of `pool_dtype_bytes` elements (the KV dtype, which sets the page size)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unsupported adapter storage dtype {dtype!r}; expected one of "
                         f"{sorted(DTYPE_BYTES)}")
    stored = DTYPE_BYTES[dtype]
    return AdapterFootprint(dtype, adapter_bytes(shape, rank, targets, stored),
                            adapter_pages(shape, rank, targets, pool_dtype_bytes, block_size, world,
                                          adapter_dtype_bytes=stored))


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), without
    `__metadata__`; each entry checked to have a string dtype, an integer shape and data offsets inside
    the file that span its shape. Raises AdapterFolderError ("corrupt or unreadable")."""
    def corrupt(why: str) -> AdapterFolderError:
        return AdapterFolderError(f"{path} is corrupt or unreadable: {why}")

    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise corrupt("too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise corrupt(f"a header of {n} bytes is implausible")
            raw = f.read(n)
        size = path.stat().st_size
    except OSError as exc:
        raise corrupt(str(exc)) from None
    if len(raw) != n:
        raise corrupt(f"header of {n} bytes announced, {len(raw)} there")
    try:
        header = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise corrupt(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise corrupt("its header is not a JSON object")
    header.pop("__metadata__", None)
    for key, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list) and all(isinstance(d, int) for d in entry["shape"])
                and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2):
            raise corrupt(f"tensor {key!r} has no valid dtype, shape and data_offsets")
        lo, hi = entry["data_offsets"]
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= size - 8 - n):
            raise corrupt(f"tensor {key!r} lies outside the file")
        itemsize = _CODE_BYTES.get(entry["dtype"])
        if itemsize is not None and hi - lo != math.prod(entry["shape"]) * itemsize:
            raise corrupt(f"tensor {key!r} has {hi - lo} bytes for shape {entry['shape']} {entry['dtype']}")
    return header


def read_adapter_header(folder: str | Path, shape: ModelShape) -> AdapterHeader:
    """Read and validate a PEFT LoRA folder for this base model (see module doc). No tensor data is
    read. Raises AdapterFolderError naming the folder, the problem and the fix."""
    path = Path(folder)
    config = _read_config(path)
    _check_options(path, config)
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterFolderError(f"{path}: r must be a positive integer, got {rank!r}")
    try:
        alpha = float(config.get("lora_alpha", rank))
    except (TypeError, ValueError):
        raise AdapterFolderError(f"{path}: lora_alpha must be a number, got {config.get('lora_alpha')!r}") \
            from None
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = _lora_tensors(path, read_safetensors_header(path / WEIGHTS), shape)
    targets = _check_coverage(path, tensors, shape)
    _check_shapes(path, tensors, shape, rank)
    return AdapterHeader(path, rank, alpha, scaling, targets, tensors)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise AdapterFolderError(f"adapter folder {path} does not exist")
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise AdapterFolderError(f"{path} has no {CONFIG}: not a PEFT adapter folder")
    if not (path / WEIGHTS).is_file():
        if (path / PICKLE_WEIGHTS).is_file():
            raise AdapterFolderError(
                f"{path} holds only {PICKLE_WEIGHTS} (a pickle file, which can run code when loaded); "
                f"convert it to {WEIGHTS} with safetensors and retry")
        raise AdapterFolderError(f"{path} has no {WEIGHTS}")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise AdapterFolderError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterFolderError(f"{cfg_path} is not a JSON object")
    return config


def _check_options(path: Path, config: dict[str, Any]) -> None:
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterFolderError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    bad = [k for k in _UNSUPPORTED_OPTIONS if config.get(k)]
    if config.get("layers_to_transform") is not None:
        bad.append("layers_to_transform")
    if str(config.get("bias", "none")) != "none":
        bad.append("bias")
    if bad:
        raise AdapterFolderError(f"{path}: unsupported LoRA options {bad}; plain LoRA on "
                                 "q/k/v/o/gate/up/down only")


def _lora_tensors(path: Path, header: dict[str, Any], shape: ModelShape) -> tuple[LoraTensor, ...]:
    """Every tensor must be a LoRA A/B of a supported module in a layer of the base model."""
    out = []
    for key, entry in header.items():
        m = _LORA_KEY.search(key)
        if m is None or m.group(2) not in LORA_TARGETS:
            raise AdapterFolderError(f"{path}: unknown target module in weight {key!r}; "
                                     f"supported targets: {', '.join(LORA_TARGETS)}")
        layer = int(m.group(1))
        if layer >= shape.num_layers:
            raise AdapterFolderError(f"{path}: weight {key!r} is for layer {layer}, but the base model has "
                                     f"{shape.num_layers} layers")
        out.append(LoraTensor(key, layer, m.group(2), m.group(3), entry["dtype"], tuple(entry["shape"])))
    if not out:
        raise AdapterFolderError(f"{path}: {WEIGHTS} holds no LoRA weights")
    return tuple(out)


def _check_coverage(path: Path, tensors: tuple[LoraTensor, ...], shape: ModelShape) -> tuple[str, ...]:
    """The target modules, in LORA_TARGETS order; each must have one A and one B in every layer."""
    seen: dict[str, set[tuple[int, str]]] = {}
    for t in tensors:
        seen.setdefault(t.module, set()).add((t.layer, t.ab))
    full = {(layer, ab) for layer in range(shape.num_layers) for ab in "AB"}
    for module, got in seen.items():
        if got != full:
            raise AdapterFolderError(f"{path}: {module} lacks lora_A/lora_B in some layers; adapters must "
                                     "cover every layer")
    return tuple(m for m in LORA_TARGETS if m in seen)


def _check_shapes(path: Path, tensors: tuple[LoraTensor, ...], shape: ModelShape, rank: int) -> None:
    """A is [r, in] and B [out, r] of this base model's module."""
    for t in tensors:
        fan_in, fan_out = shape.module_dims(t.module)
        want = (rank, fan_in) if t.ab == "A" else (fan_out, rank)
        if t.shape != want:
            raise AdapterFolderError(
                f"{path}: layer {t.layer} {t.module} lora_{t.ab} has shape {t.shape}, expected {want}; the "
                f"adapter was trained for a different base model (hidden size {shape.hidden_size}) or rank")
