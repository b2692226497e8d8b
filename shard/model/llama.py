"""Llama-family decoder (Llama, Mistral, Qwen2), this rank's shard, over a paged KV pool.

Shapes: T = new tokens in the batch (all sequences concatenated), H = hidden size,
Hq/Hk = this rank's query/KV heads, D = head dim, I_loc = this rank's intermediate columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from chameleon.memory import shard_ranges
from shard.model import cpu_step
from shard.model.attention import AttentionMeta, paged_attention
from shard.model.config import ModelConfig
from shard.model.cpu_decode import DecodeStack
from shard.model.dist import DistContext
from shard.model.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RMSNorm,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from shard.model.rotary import Rotary, apply_rotary

if TYPE_CHECKING:
    from shard.lora.kernels import LoraBatch

KV = tuple[torch.Tensor, torch.Tensor]  # this layer's (K cache, V cache) [slots, Hk, D]
# checkpoint module name -> (our packed module, shard id)
PACKED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
          "gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up")}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dist: DistContext, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        s, w, r = cfg.shape, dist.world_size, dist.rank
        self.layer, self.head_dim = layer, s.head_dim
        parts = [(sid, s.module_dims(m)[1], shard_ranges(s, m, w, r)[1])
                 for m, sid in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"))]
        self.qkv_proj = ColumnParallelLinear(s.hidden_size, parts, cfg.qkv_bias, dtype, device)
        self.o_proj = RowParallelLinear(shard_ranges(s, "o_proj", w, r)[0], s.hidden_size, cfg.o_bias, dist,
                                        dtype, device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv: KV, meta: AttentionMeta, lora: LoraBatch | None) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hk) D]
        q, k, v = (self.qkv_proj.part(qkv, sid) for sid in ("q", "k", "v"))
        if lora is not None:
            for module, y in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                lora.column(self.layer, module, x, y)
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)) for t in (q, k, v))  # [T, Hq|Hk, D]
        stored = cpu_step.rope_store(q, k, v, cos, sin, meta.slots, kv[0], kv[1])  # rotates q, k in place
        if not stored:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = paged_attention(q, k, v, kv[0], kv[1], meta, stored)  # [T, Hq D]
        return self.o_proj(o, lora.row(self.layer, "o_proj") if lora is not None else None)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dist: DistContext, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        s, w, r = cfg.shape, dist.world_size, dist.rank
        self.layer = layer
        parts = [(sid, s.intermediate_size, shard_ranges(s, m, w, r)[1])
                 for m, sid in (("gate_proj", "gate"), ("up_proj", "up"))]
        self.gate_up_proj = ColumnParallelLinear(s.hidden_size, parts, cfg.mlp_bias, dtype, device)
        self.down_proj = RowParallelLinear(shard_ranges(s, "down_proj", w, r)[0], s.hidden_size, cfg.mlp_bias,
                                           dist, dtype, device)

    def forward(self, x: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 I_loc]
        gate, up = self.gate_up_proj.part(gate_up, "gate"), self.gate_up_proj.part(gate_up, "up")
        if lora is not None:
            lora.column(self.layer, "gate_proj", x, gate)
            lora.column(self.layer, "up_proj", x, up)
        act = cpu_step.silu_mul(gate, up)  # [T, I_loc]
        if act is None:
            act = F.silu(gate) * up
        return self.down_proj(act, lora.row(self.layer, "down_proj") if lora is not None else None)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dist: DistContext, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        h, eps = cfg.shape.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(h, eps, dtype, device)
        self.self_attn = Attention(cfg, layer, dist, dtype, device)
        self.post_attention_layernorm = RMSNorm(h, eps, dtype, device)
        self.mlp = MLP(cfg, layer, dist, dtype, device)

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                kv: KV, meta: AttentionMeta, lora: LoraBatch | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, residual) -> (this layer's MLP output, the residual stream before it); the stream is h +
        residual (residual None: h alone). The norms add into the stream in place where they can."""
        if residual is None:
            residual, x = h, self.input_layernorm(h)
        else:
            x, residual = self.input_layernorm.add_forward(h, residual)
        x, residual = self.post_attention_layernorm.add_forward(
            self.self_attn(x, cos, sin, kv, meta, lora), residual)
        return self.mlp(x, lora), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dist: DistContext, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        s = cfg.shape
        self.embed_tokens = VocabParallelEmbedding(s.vocab_size, s.hidden_size, dist, dtype, device)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, dist, dtype, device) for i in range(s.num_layers))
        self.norm = RMSNorm(s.hidden_size, cfg.rms_norm_eps, dtype, device)


class LlamaForCausalLM(nn.Module):
    """forward(ids [T], positions [T], kv caches, meta, lora, rows) -> logits [len(rows), vocab] (rows None:
    every row)."""

    def __init__(self, cfg: ModelConfig, dist: DistContext, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, dist, dtype, device)
        self.lm_head = ParallelLMHead(self.model.embed_tokens, cfg.shape.vocab_size, cfg.tie_word_embeddings,
                                      dist, dtype, device)
        self.rotary = Rotary(cfg.rope, cfg.shape.head_dim, device)
        self._stack: DecodeStack | Literal[False] | None = None  # built at the first forward (after packing)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMeta, lora: LoraBatch | None,
                rows: torch.Tensor | None) -> torch.Tensor:
        h = self.model.embed_tokens(input_ids)  # [T, H]
        cos, sin = self.rotary.cos_sin(positions, h.dtype)  # [T, 1, D]
        residual = None
        if self._stack is None:
            self._stack = DecodeStack.for_model(self) or False
        fused = self._stack.run(h, cos, sin, kv, meta, lora) if self._stack else None
        if fused is not None:  # CPU float32, one rank: all layers in one C call
            h, residual = fused
        else:
            for layer, cache in zip(self.model.layers, kv, strict=True):
                h, residual = layer(h, residual, cos, sin, cache, meta, lora)
        if rows is not None:  # only the rows whose logits are wanted
            h, residual = h[rows], residual[rows] if residual is not None else None
        h = self.model.norm(h) if residual is None else self.model.norm.add_forward(h, residual)[0]
        return self.lm_head(h).float()  # [rows, vocab]
