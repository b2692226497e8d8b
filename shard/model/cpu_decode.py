"""The decoder stack of a batch in one C call (cpu_decode.c), for CPU float32 on one rank.

Why: at decode sizes the Python around ~12 kernel calls per layer (argument checks, allocations, and the
pool's worker falling asleep during single-threaded work) costs as much as a third of the step, and a
short prefill pays the same. The C function chains the same kernels in the same order as
shard.model.llama's layers (see cpu_decode.c). Prefill rows are queries like decode rows: once every new
K/V of the layer is in its slot, row t attends to the first meta.row_lens[t] (= its position + 1) keys of
its sequence's blocks, which is causal attention.

The stack is the CPU backend's alternative executor of the decoder layers (shard.model.cpu_backend); the
layer loop of shard.model.llama is the reference it must equal (tests/shard_model/test_cpu_decode.py runs
both on one scenario). Contract: `DecodeStack.for_model(model, kernels, packed)` is None unless every
linear's weight is packed by the backend (`packed(weight)` gives its panels), the model is float32 on
CPU on one rank and its heads fit the attention kernel.
`run(...)` returns (h, residual) as the layer loop would (h, the embeddings passed in, is overwritten), or
None when this batch does not qualify (LoRA off the C kernel path, e.g. a segment of more than
shard.lora.cpu_bgmv.MAX_SEGMENT_ROWS rows; a prefill of more than MAX_PREFILL_ROWS tokens); then nothing
was written and the caller runs the layer loop.
A KV slot or block page outside the pool raises IndexError before anything is written.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from chameleon.core.memory import LORA_TARGETS
from shard.model.cpu_step import MAX_GROUP, MAX_HEAD_DIM

if TYPE_CHECKING:
    from shard.lora.kernels import LoraBatch
    from shard.model.attention import AttentionMeta
    from shard.model.cpu_kernels import CpuKernels
    from shard.model.llama import LlamaForCausalLM

Packed = Callable[[torch.Tensor], "torch.Tensor | None"]  # a weight Parameter -> its panels (None: not)

_fp, _i64 = ctypes.c_void_p, ctypes.c_int64
# A longer prefill sequence takes the layer loop: the stack's attention is the per-row kernel (reads the
# keys once per query row), which at 2048-token prompts ran ~10% slower end to end than the loop's SDPA;
# at 256-1024 tokens the stack was 4-27% faster.
MAX_PREFILL_ROWS = 1024
ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # cd_step.mods


class Layer(ctypes.Structure):
    _fields_ = [(n, _fp) for n in ("ln1", "ln2", "wqkv", "bqkv", "wo", "bo", "wgu", "bgu", "wdown", "bdown",
                                   "kc", "vc")]


class Step(ctypes.Structure):
    _fields_ = [*((n, _i64) for n in ("T", "H", "Hq", "Hk", "D", "I")),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float),
                *((n, _fp) for n in ("h", "res", "x", "qkv", "attn", "gu", "act", "cosv", "sinv")),
                ("ldc", _i64), *((n, _fp) for n in ("slots", "tables", "lens")),
                *((n, _i64) for n in ("ldt", "page_stride", "slot_stride", "block_size", "num_pages")),
                ("nseg", _i64), *((n, _fp) for n in ("seg", "rows", "ltables")), ("nmod", _i64),
                ("mods", _i64 * 7), ("nthreads", _i64)]


def declare(lib: ctypes.CDLL) -> None:
    """Types cd_decode_layers in the loaded library."""
    lib.cd_decode_layers.argtypes = [ctypes.POINTER(Step), ctypes.POINTER(Layer), ctypes.c_int]
    lib.cd_decode_layers.restype = ctypes.c_int


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


class DecodeStack:
    """One model's decoder layers as the C function sees them (weights fixed; KV views per pool)."""

    def __init__(self, model: LlamaForCausalLM, kernels: CpuKernels, packed: Packed, hq: int,
                 hk: int) -> None:
        self.model, self.lib, self.packed = model, kernels.lib, packed
        declare(self.lib)
        self.H, self.D, self.Hq, self.Hk = model.config.shape.hidden_size, model.config.shape.head_dim, hq, hk
        self.I = model.model.layers[0].mlp.gate_up_proj.out_local // 2
        self.eps = model.model.layers[0].input_layernorm.eps
        self._layers: ctypes.Array | None = None
        self._kv_key: tuple[int, ...] = ()

    @classmethod
    def for_model(cls, model: LlamaForCausalLM, kernels: CpuKernels, packed: Packed) -> DecodeStack | None:
        s = model.config.shape
        layers = model.model.layers
        lin = [m for layer in layers for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj,
                                                 layer.mlp.gate_up_proj, layer.mlp.down_proj)]
        if not (len(layers) and model.model.embed_tokens.dist.is_single
                and all(packed(m.weight) is not None for m in lin)
                and all(m.weight.dtype == torch.float32 and m.weight.is_cpu for m in lin)):
            return None
        d = s.head_dim
        qkv = layers[0].self_attn.qkv_proj.offsets
        hq, hk = (qkv["q"][2] - qkv["q"][1]) // d, (qkv["k"][2] - qkv["k"][1]) // d
        gate_up = layers[0].mlp.gate_up_proj.offsets
        if not (hk and hq % hk == 0 and hq // hk <= MAX_GROUP and d % 8 == 0
                and d <= MAX_HEAD_DIM and [o[0] for o in qkv.values()] == [0, hq * d, (hq + hk) * d]
                and gate_up["up"][0] == gate_up["gate"][2] - gate_up["gate"][1]):
            return None
        return cls(model, kernels, packed, hq, hk)

    def _layer_table(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> ctypes.Array:
        key = tuple(c.data_ptr() for pair in kv for c in pair)
        if self._layers is None or key != self._kv_key:
            table = (Layer * len(kv))()
            for entry, layer, (kc, vc) in zip(table, self.model.model.layers, kv, strict=True):
                a, m = layer.self_attn, layer.mlp
                entry.ln1 = _ptr(layer.input_layernorm.weight)
                entry.ln2 = _ptr(layer.post_attention_layernorm.weight)
                entry.wqkv, entry.bqkv = _ptr(self.packed(a.qkv_proj.weight)), _ptr(a.qkv_proj.bias)
                entry.wo, entry.bo = _ptr(self.packed(a.o_proj.weight)), _ptr(a.o_proj.bias)
                entry.wgu, entry.bgu = _ptr(self.packed(m.gate_up_proj.weight)), _ptr(m.gate_up_proj.bias)
                entry.wdown, entry.bdown = _ptr(self.packed(m.down_proj.weight)), _ptr(m.down_proj.bias)
                entry.kc, entry.vc = _ptr(kc), _ptr(vc)
            self._layers, self._kv_key = table, key
        return self._layers

    def run(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            kv: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMeta,
            lora: LoraBatch | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(h, residual) after every layer, for h [T, H] embeddings of the batch's T token rows (decode and
        prefill alike: row t attends to meta.row_lens[t] keys of its block table); None: not this batch."""
        t = h.shape[0]
        if lora is not None and lora.kernel is None:
            return None
        if any(p.query_len > MAX_PREFILL_ROWS for p in meta.prefills):
            return None
        kc = kv[0][0]
        if not (h.is_contiguous() and h.dtype == torch.float32 and kc.dim() == 4 and kc.stride(2) == self.D
                and kc.stride(3) == 1 and kv[0][1].stride() == kc.stride() and cos.stride(-1) == 1
                and sin.stride(0) == cos.stride(0) and meta.row_blocks.is_contiguous()
                and meta.row_lens.is_contiguous() and meta.slots.is_contiguous()
                and meta.row_lens.numel() == t
                and meta.slots.dtype == meta.row_blocks.dtype == meta.row_lens.dtype == torch.int64):
            return None
        nq, nk = self.Hq * self.D, self.Hk * self.D
        res = torch.empty_like(h)
        x = torch.empty_like(h)
        qkv = torch.empty(t, nq + 2 * nk)
        attn = torch.empty(t, nq)
        gu = torch.empty(t, 2 * self.I)
        act = torch.empty(t, self.I)
        st = Step(T=t, H=self.H, Hq=self.Hq, Hk=self.Hk, D=self.D, I=self.I, eps=self.eps,
                  scale=1.0 / math.sqrt(self.D), h=h.data_ptr(), res=res.data_ptr(), x=x.data_ptr(),
                  qkv=qkv.data_ptr(), attn=attn.data_ptr(), gu=gu.data_ptr(), act=act.data_ptr(),
                  cosv=cos.data_ptr(), sinv=sin.data_ptr(), ldc=cos.stride(0), slots=meta.slots.data_ptr(),
                  tables=meta.row_blocks.data_ptr(), lens=meta.row_lens.data_ptr(),
                  ldt=meta.row_blocks.shape[1], page_stride=kc.stride(0), slot_stride=kc.stride(1),
                  block_size=kc.shape[1], num_pages=kc.shape[0], nthreads=torch.get_num_threads())
        if lora is not None:
            cpu = lora.kernel
            st.nseg, st.seg, st.rows, st.ltables = len(cpu.tables), cpu.seg.data_ptr(), cpu.rows.data_ptr(), \
                cpu.ptrs.data_ptr()
            st.nmod = len(LORA_TARGETS)
            for i, module in enumerate(ORDER):
                st.mods[i] = LORA_TARGETS.index(module) if module in LORA_TARGETS else -1
        rc = self.lib.cd_decode_layers(ctypes.byref(st), self._layer_table(kv), len(kv))
        if rc == -1:
            raise IndexError(f"a KV slot or block table page is outside the pool of {kc.shape[0]} pages, "
                             "or a block table is shorter than its context")
        if rc != 0:  # h is overwritten by now: no fallback; the checks above make this unreachable
            raise RuntimeError(f"decode kernels refused the batch (code {rc})")
        return h, res
