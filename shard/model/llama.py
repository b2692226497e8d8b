"""Llama-family decoder (Llama, Mistral, Qwen2), this rank's shard, over a paged KV pool.

The architecture only: how each operation executes (torch ops, C kernels, a fused whole-stack executor)
is the backend's business (shard.model.backend), given at construction and chosen by the runner.

Shapes: T = new tokens in the batch (all sequences concatenated), H = hidden size,
Hq/Hk = this rank's query/KV heads, D = head dim, I_loc = this rank's intermediate columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from chameleon.core.memory import shard_ranges
from shard.model.attention import AttentionMeta
from shard.model.backend import KV, Backend
from shard.model.config import ModelConfig
from shard.model.dist import DistContext
from shard.model.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RMSNorm,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from shard.model.rotary import Rotary

if TYPE_CHECKING:
    from shard.lora.kernels import LoraBatch

# checkpoint module name -> (our packed module, shard id)
PACKED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
          "gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up")}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dist: DistContext, dtype: torch.dtype,
                 device: torch.device, ops: Backend) -> None:
        super().__init__()
        s, w, r = cfg.shape, dist.world_size, dist.rank
        self.layer, self.head_dim, self.ops = layer, s.head_dim, ops
        parts = [(sid, s.module_dims(m)[1], shard_ranges(s, m, w, r)[1])
                 for m, sid in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"))]
        self.qkv_proj = ColumnParallelLinear(s.hidden_size, parts, cfg.qkv_bias, dtype, device, ops)
        self.o_proj = RowParallelLinear(shard_ranges(s, "o_proj", w, r)[0], s.hidden_size, cfg.o_bias, dist,
                                        dtype, device, ops)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv: KV, meta: AttentionMeta, lora: LoraBatch | None) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hk) D]
        q, k, v = (self.qkv_proj.part(qkv, sid) for sid in ("q", "k", "v"))
        if lora is not None:
            for module, y in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                lora.column(self.layer, module, x, y)
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)) for t in (q, k, v))  # [T, Hq|Hk, D]
        q, k = self.ops.rope_store(q, k, v, cos, sin, kv, meta)  # rotary on q, k; k, v into their KV slots
        o = self.ops.attention(q, k, v, kv, meta)  # [T, Hq D]
        return self.o_proj(o, lora.row(self.layer, "o_proj") if lora is not None else None)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dist: DistContext, dtype: torch.dtype,
                 device: torch.device, ops: Backend) -> None:
        super().__init__()
        s, w, r = cfg.shape, dist.world_size, dist.rank
        self.layer, self.ops = layer, ops
        parts = [(sid, s.intermediate_size, shard_ranges(s, m, w, r)[1])
                 for m, sid in (("gate_proj", "gate"), ("up_proj", "up"))]
        self.gate_up_proj = ColumnParallelLinear(s.hidden_size, parts, cfg.mlp_bias, dtype, device, ops)
        self.down_proj = RowParallelLinear(shard_ranges(s, "down_proj", w, r)[0], s.hidden_size, cfg.mlp_bias,
                                           dist, dtype, device, ops)

    def forward(self, x: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2 I_loc]
        gate, up = self.gate_up_proj.part(gate_up, "gate"), self.gate_up_proj.part(gate_up, "up")
        if lora is not None:
            lora.column(self.layer, "gate_proj", x, gate)
            lora.column(self.layer, "up_proj", x, up)
        act = self.ops.silu_mul(gate, up)  # silu(gate) * up [T, I_loc]
        return self.down_proj(act, lora.row(self.layer, "down_proj") if lora is not None else None)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dist: DistContext, dtype: torch.dtype,
                 device: torch.device, ops: Backend) -> None:
        super().__init__()
        h, eps = cfg.shape.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(h, eps, dtype, device, ops)
        self.self_attn = Attention(cfg, layer, dist, dtype, device, ops)
        self.post_attention_layernorm = RMSNorm(h, eps, dtype, device, ops)
        self.mlp = MLP(cfg, layer, dist, dtype, device, ops)

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
    def __init__(self, cfg: ModelConfig, dist: DistContext, dtype: torch.dtype, device: torch.device,
                 ops: Backend) -> None:
        super().__init__()
        s = cfg.shape
        self.embed_tokens = VocabParallelEmbedding(s.vocab_size, s.hidden_size, dist, dtype, device, ops)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, dist, dtype, device, ops)
                                    for i in range(s.num_layers))
        self.norm = RMSNorm(s.hidden_size, cfg.rms_norm_eps, dtype, device, ops)


class LlamaForCausalLM(nn.Module):
    """forward(ids [T], positions [T], kv caches, meta, lora, rows) -> logits [len(rows), vocab] (rows None:
    every row). Its three stages (`embed`, `decode`, `logits`) are public so that a backend's whole-stack
    executor can stand in for `decode` (shard.model.backend.Backend.run)."""

    def __init__(self, cfg: ModelConfig, dist: DistContext, dtype: torch.dtype, device: torch.device,
                 ops: Backend) -> None:
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, dist, dtype, device, ops)
        self.lm_head = ParallelLMHead(self.model.embed_tokens, cfg.shape.vocab_size, cfg.tie_word_embeddings,
                                      dist, dtype, device, ops)
        self.rotary = Rotary(cfg.rope, cfg.shape.head_dim, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: list[KV], meta: AttentionMeta,
                lora: LoraBatch | None, rows: torch.Tensor | None) -> torch.Tensor:
        h, cos, sin = self.embed(input_ids, positions)
        h, residual = self.decode(h, cos, sin, kv, meta, lora)
        return self.logits(h, residual, rows)

    def embed(self, input_ids: torch.Tensor,
              positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h [T, H], cos, sin [T, 1, D]): the token embeddings and the rotary tables of their positions."""
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions, h.dtype)
        return h, cos, sin

    def decode(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: list[KV], meta: AttentionMeta,
               lora: LoraBatch | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every decoder layer: (h, residual) of the last one (residual None: no layers)."""
        residual = None
        for layer, cache in zip(self.model.layers, kv, strict=True):
            h, residual = layer(h, residual, cos, sin, cache, meta, lora)
        return h, residual

    def logits(self, h: torch.Tensor, residual: torch.Tensor | None,
               rows: torch.Tensor | None) -> torch.Tensor:
        """Final norm and LM head over the rows whose logits are wanted (None: every row) -> [rows, vocab]."""
        if rows is not None:
            h, residual = h[rows], residual[rows] if residual is not None else None
        h = self.model.norm(h) if residual is None else self.model.norm.add_forward(h, residual)[0]
        return self.lm_head(h).float()
