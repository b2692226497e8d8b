"""Random PEFT LoRA adapters for a base model, deterministic from a seed.

Scaling: every adapted module gets a delta `scaling * B @ A` (PEFT: scaling = lora_alpha / r) whose
expected Frobenius norm is `strength * ||W||_F` of the base weight W it perturbs. A ~ N(0, 1/in)
(kaiming-like), B ~ N(0, sb^2) with E||B A||_F^2 = out * r * sb^2, hence
sb = strength * ||W||_F / (scaling * sqrt(out * r)). The perturbation is thus the same relative size
for every rank and every module, large enough to change greedy text, small enough to keep it readable.

Weights are stored in bfloat16: the fp32 exponent range (no under/overflow of small B entries), an exact
upcast to float32 for the reference path, and half the disk of float32 (SmolLM2: 1.1 GB instead of 2.2 GB
for the 100 q,k,v,o demo adapters); the shard keeps them in 16 bits in its pool too (--adapter-dtype auto).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from chameleon.core.memory import LORA_TARGETS
from shard.demo_assets.files import save_tensors, stable_seed, write_json

ADAPTER_DTYPE = torch.bfloat16
# The attention projections: what the paper's adapters target (its "rank-32 adapter of Llama-7B =
# 64 MB" is exactly q, k, v, o in fp16), and so the SmolLM2 demo adapters by default.
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_LAYER_WEIGHT = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.weight$")


@dataclass(frozen=True, slots=True)
class AdapterPlan:
    """One adapter to build: folder name (= adapter id), rank, PEFT lora_alpha and RNG seed."""

    name: str
    rank: int
    alpha: int
    seed: int


@dataclass(frozen=True, slots=True)
class TargetWeight:
    """A base linear weight that adapters perturb: its PEFT key prefix, shape and Frobenius norm."""

    prefix: str
    fan_in: int
    fan_out: int
    norm: float


def plan_adapters(ranks: Sequence[int], per_rank: int, seed: int) -> list[AdapterPlan]:
    """`r{rank}-{index:02d}` for each rank, `per_rank` adapters each; lora_alpha = 2 * rank."""
    return [AdapterPlan(f"r{r}-{i:02d}", r, 2 * r, stable_seed("lora", seed, r, i))
            for r in ranks for i in range(per_rank)]


def read_targets(model_file: Path, targets: Sequence[str] = LORA_TARGETS) -> list[TargetWeight]:
    """The target linear weights of a Llama-family safetensors file, in layer then module order."""
    found: list[tuple[int, int, TargetWeight]] = []
    with safe_open(str(model_file), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
            m = _LAYER_WEIGHT.match(key)
            if not m or m.group(3) not in targets:
                continue
            w = fh.get_tensor(key).float()
            found.append((int(m.group(1)), targets.index(m.group(3)), TargetWeight(
                f"base_model.model.{key.removesuffix('.weight')}", w.shape[1], w.shape[0],
                float(torch.linalg.vector_norm(w)))))
    if not found:
        raise ValueError(f"{model_file}: no LoRA target weights ({', '.join(targets)}) found")
    return [t for _, _, t in sorted(found, key=lambda x: (x[0], x[1]))]


def adapter_tensors(spec: AdapterPlan, weights: Sequence[TargetWeight],
                    strength: float) -> dict[str, torch.Tensor]:
    """lora_A [r, in] and lora_B [out, r] for every target weight, drawn from spec.seed."""
    gen = torch.Generator().manual_seed(spec.seed)
    scaling = spec.alpha / spec.rank
    out: dict[str, torch.Tensor] = {}
    for t in weights:
        a = torch.randn(spec.rank, t.fan_in, generator=gen).mul_(1.0 / math.sqrt(t.fan_in))
        sb = strength * t.norm / (scaling * math.sqrt(t.fan_out * spec.rank))
        b = torch.randn(t.fan_out, spec.rank, generator=gen).mul_(sb)
        out[f"{t.prefix}.lora_A.weight"] = a.to(ADAPTER_DTYPE)
        out[f"{t.prefix}.lora_B.weight"] = b.to(ADAPTER_DTYPE)
    return out


def adapter_config(spec: AdapterPlan, base_name: str, targets: Sequence[str]) -> dict[str, object]:
    return {
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": spec.rank,
        "target_modules": sorted(targets),
        "task_type": "CAUSAL_LM",
        "use_rslora": False,
    }


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: the tensors here are small and memory-bound, and a busy machine
    makes two spinning OpenMP threads ~100x slower. Results do not depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_adapter(out_dir: Path, spec: AdapterPlan, weights: Sequence[TargetWeight], *,
                  base_name: str, strength: float, targets: Sequence[str] = LORA_TARGETS) -> Path:
    """Write `out_dir/<spec.name>/` (adapter_config.json + adapter_model.safetensors); returns it."""
    folder = out_dir / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "adapter_model.safetensors", adapter_tensors(spec, weights, strength))
    write_json(folder / "adapter_config.json", adapter_config(spec, base_name, targets))
    return folder
