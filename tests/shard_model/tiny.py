"""A tiny Llama-family model + PEFT adapters built in a test fixture, and the transformers+PEFT reference.

Shape chosen for the hard cases: 6 query heads over 3 KV heads (uneven 2+1 split at TP=2, like
SmolLM2's 9/3), an odd intermediate size and vocab (uneven MLP and vocab
splits), tied embeddings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
ALL = ATTN + MLP


@dataclass(frozen=True, slots=True)
class AdapterDef:
    name: str
    rank: int
    alpha: float
    targets: tuple[str, ...]
    rslora: bool = False
    dtype: torch.dtype = torch.float32  # of the saved safetensors (16-bit ones are stored in 16 bits)


# every rank 8..128, mixed targets and scalings (one not a power of two), float32/bfloat16/float16 files
ADAPTERS = (
    AdapterDef("a8", 8, 16, tuple(ALL)),
    AdapterDef("a16", 16, 8, tuple(ATTN), dtype=torch.bfloat16),
    AdapterDef("a32", 32, 64, tuple(MLP)),
    AdapterDef("a64", 64, 32, ("q_proj", "v_proj", "down_proj"), rslora=True, dtype=torch.bfloat16),
    AdapterDef("a128", 128, 128, tuple(ALL)),
    AdapterDef("b8", 8, 12, ("o_proj", "up_proj"), dtype=torch.bfloat16),
    AdapterDef("b16", 16, 32, tuple(ALL), rslora=True),
    AdapterDef("b128", 128, 64, ("k_proj", "gate_proj", "o_proj"), dtype=torch.float16),
)


def tiny_config(kind: str = "llama"):
    common = dict(vocab_size=251, hidden_size=96, intermediate_size=90, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=3, head_dim=16, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.1)
    if kind == "qwen2":
        return Qwen2Config(**common)
    return LlamaConfig(**common, rope_theta=10000.0)


def build(root: Path, kind: str = "llama", seed: int = 0) -> Path:
    """root/model (safetensors) and root/adapters/<name>/ (PEFT, safetensors)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind), dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):  # transformers zero-initialises biases; make them count
                param.normal_(0.0, 0.1)
    model.save_pretrained(root / "model")
    for i, spec in enumerate(ADAPTERS):
        torch.manual_seed(seed * 100 + i + 1)
        cfg = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets),
                         init_lora_weights=False, use_rslora=spec.rslora, lora_dropout=0.0)
        peft_model = get_peft_model(copy.deepcopy(model), cfg)
        peft_model.save_pretrained(root / "adapters" / spec.name)
        if spec.dtype != torch.float32:
            path = root / "adapters" / spec.name / "adapter_model.safetensors"
            save_file({k: v.to(spec.dtype).contiguous() for k, v in load_file(path).items()}, path,
                      metadata={"format": "pt"})
    return root


class Reference:
    """transformers + PEFT in float32: logits of every position for one sequence and one adapter."""

    def __init__(self, root: Path) -> None:
        base = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
        first, *rest = ADAPTERS
        self.model = PeftModel.from_pretrained(base, root / "adapters" / first.name, adapter_name=first.name)
        for spec in rest:
            self.model.load_adapter(root / "adapters" / spec.name, adapter_name=spec.name)
        self.model.eval()

    @torch.no_grad()
    def logits(self, ids: list[int], adapter: str | None) -> torch.Tensor:
        """[len(ids), vocab] float32."""
        x = torch.tensor([ids])
        if adapter is None:
            with self.model.disable_adapter():
                return self.model(input_ids=x).logits[0].float()
        self.model.set_adapter(adapter)
        return self.model(input_ids=x).logits[0].float()
