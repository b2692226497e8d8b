"""`chameleon demo-assets --random-llama {7b,1b,160m,tiny}`: a Llama-architecture model of real shape
with random weights, plus random PEFT adapters, for GPU throughput measurements where nothing can be
downloaded. Deterministic from the seed (every tensor has its own generator, seeded from its name).

Presets (real models' shapes, weights random):
- 7b:   Llama-2-7B: hidden 4096, 32 layers, 32 heads (no GQA), intermediate 11008, vocab 32000.
- 1b:   TinyLlama-1.1B: hidden 2048, 22 layers, 32 heads / 4 KV heads, intermediate 5632, vocab 32000.
- 160m: llama-160m (JackFram/llama-160m): hidden 768, 12 layers, 12 heads, intermediate 3072, vocab 32000.
- tiny: hidden 256, 2 layers, 8 heads / 4 KV heads, intermediate 688, vocab 2048 (tests; seconds).

Layout: OUT_DIR/model (config.json saying bfloat16, generation_config.json, tokenizer, weights in
bfloat16 safetensors: one model.safetensors, or model-0000i-of-0000n.safetensors shards of at most
MAX_SHARD_BYTES plus model.safetensors.index.json), OUT_DIR/adapters/r{rank}-{i:02d} (PEFT LoRA on
q,k,v,o_proj by default, bfloat16; rank 32 on 7b = 64 MiB in 16 bits, the paper's setting) and
OUT_DIR/manifest.json (request and file sizes; no hashes: the 7b weights are 13 GB). Memory stays
bounded: weights are drawn tensor by tensor and written shard by shard.

The tokenizer is the tiny model's byte-level BPE (trained locally on the stdlib sources), padded with
added tokens <|extra_N|> up to the preset's vocabulary size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import LlamaConfig

from shard.demo_assets.files import (
    LOCK,
    MANIFEST,
    file_lock,
    remove_stale_adapters,
    save_tensors,
    stable_seed,
    write_json,
)
from shard.demo_assets.hf import quiet_transformers, write_config
from shard.demo_assets.lora import (
    ATTENTION_TARGETS,
    TargetWeight,
    plan_adapters,
    single_thread,
    write_adapter,
)
from shard.demo_assets.tiny import TinySpec, save_tokenizer, train_tokenizer

RANDOM_LLAMA_VERSION = 1  # bump whenever the bytes written for a request change
MAX_SHARD_BYTES = 2 * 1024 ** 3
INIT_STD = 0.02
WEIGHT_DTYPE = torch.bfloat16
DEFAULT_ADAPTERS = 40  # 8 of each default rank 8..128: more than the 32 distinct adapters a batch needs


@dataclass(frozen=True, slots=True)
class LlamaShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float = 10000.0


PRESETS: dict[str, LlamaShape] = {
    "7b": LlamaShape(4096, 32, 32, 32, 11008, 32000, 4096),
    "1b": LlamaShape(2048, 22, 32, 4, 5632, 32000, 2048),
    "160m": LlamaShape(768, 12, 12, 12, 3072, 32000, 2048),
    "tiny": LlamaShape(256, 2, 8, 4, 688, 2048, 2048),
}


@dataclass(frozen=True, slots=True)
class RandomLlamaRequest:
    preset: str
    seed: int
    ranks: tuple[int, ...]
    adapters_per_rank: int
    strength: float
    targets: tuple[str, ...] = ATTENTION_TARGETS

    def key(self) -> dict[str, object]:
        return {**asdict(self), "ranks": list(self.ranks), "targets": list(self.targets),
                "shape": asdict(PRESETS[self.preset]), "random_llama_version": RANDOM_LLAMA_VERSION}


def model_name(preset: str) -> str:
    return f"chameleon-random-llama-{preset}"


def llama_config(shape: LlamaShape) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads, head_dim=shape.hidden_size // shape.num_heads,
        max_position_embeddings=shape.max_position_embeddings, rms_norm_eps=1e-5, rope_theta=shape.rope_theta,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        initializer_range=INIT_STD, dtype="bfloat16")


def tensor_shapes(shape: LlamaShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every checkpoint tensor in file order: embeddings, layer by layer, final norm, head."""
    h, i, v = shape.hidden_size, shape.intermediate_size, shape.vocab_size
    d = h // shape.num_heads
    kv = shape.num_kv_heads * d
    yield "model.embed_tokens.weight", (v, h)
    for layer in range(shape.num_layers):
        p = f"model.layers.{layer}"
        yield f"{p}.input_layernorm.weight", (h,)
        yield f"{p}.self_attn.q_proj.weight", (h, h)
        yield f"{p}.self_attn.k_proj.weight", (kv, h)
        yield f"{p}.self_attn.v_proj.weight", (kv, h)
        yield f"{p}.self_attn.o_proj.weight", (h, h)
        yield f"{p}.post_attention_layernorm.weight", (h,)
        yield f"{p}.mlp.gate_proj.weight", (i, h)
        yield f"{p}.mlp.up_proj.weight", (i, h)
        yield f"{p}.mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (v, h)


def random_tensor(name: str, size: tuple[int, ...], preset: str, seed: int) -> torch.Tensor:
    """Ones for norms, else Normal(0, INIT_STD), from a generator seeded by (preset, seed, name)."""
    if name.endswith("norm.weight"):
        return torch.ones(size, dtype=WEIGHT_DTYPE)
    gen = torch.Generator().manual_seed(stable_seed("random-llama", preset, seed, name))
    return torch.randn(size, generator=gen).mul_(INIT_STD).to(WEIGHT_DTYPE)


def write_weights(model_dir: Path, preset: str, seed: int, bar: tqdm,
                  max_shard_bytes: int | None = None) -> list[str]:
    """Draw and write the weights shard by shard (files of at most max_shard_bytes, default
    MAX_SHARD_BYTES read at call time, unless one tensor is larger); returns the file names written."""
    max_shard_bytes = max_shard_bytes or MAX_SHARD_BYTES
    shape = PRESETS[preset]
    plan = list(tensor_shapes(shape))
    item = torch.empty((), dtype=WEIGHT_DTYPE).element_size()
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in plan:
        n = math.prod(dims) * item
        if groups[-1] and size + n > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, dims))
        size += n
    files = (["model.safetensors"] if len(groups) == 1 else
             [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))])
    weight_map: dict[str, str] = {}
    total = 0
    for fname, group in zip(files, groups, strict=True):
        tensors = {}
        for name, dims in group:
            tensors[name] = random_tensor(name, dims, preset, seed)
            weight_map[name] = fname
            total += tensors[name].numel() * item
            bar.update()
        bar.set_description(f"writing {fname}")
        save_tensors(model_dir / fname, tensors)
        del tensors
    if len(files) > 1:
        write_json(model_dir / "model.safetensors.index.json",
                   {"metadata": {"total_size": total}, "weight_map": weight_map})
    return files


def target_weights(shape: LlamaShape, targets: tuple[str, ...]) -> list[TargetWeight]:
    """The adapted base weights with their expected Frobenius norms (INIT_STD * sqrt(out * in)),
    computed from the shapes: the adapters need not read the weights back."""
    dims = dict(tensor_shapes(shape))
    out = []
    for layer in range(shape.num_layers):
        for module in targets:
            group = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            key = f"model.layers.{layer}.{group}.{module}.weight"
            fan_out, fan_in = dims[key]
            out.append(TargetWeight(f"base_model.model.{key.removesuffix('.weight')}", fan_in, fan_out,
                                    INIT_STD * math.sqrt(fan_out * fan_in)))
    return out


def write_tokenizer(model_dir: Path, shape: LlamaShape) -> None:
    """The tiny model's tokenizer, padded with <|extra_N|> added tokens to the preset's vocabulary."""
    spec = TinySpec(vocab_size=min(shape.vocab_size, TinySpec().vocab_size))
    tok = train_tokenizer(spec)
    have = tok.get_vocab_size()
    if have < shape.vocab_size:
        tok.add_tokens([f"<|extra_{k}|>" for k in range(shape.vocab_size - have)])
    vocab = save_tokenizer(tok, model_dir, shape.max_position_embeddings)
    if vocab != shape.vocab_size:
        raise RuntimeError(f"tokenizer has {vocab} tokens, the {shape} model needs {shape.vocab_size}")


def build_random_llama(out_dir: Path, req: RandomLlamaRequest, *, progress: bool = True,
                       force: bool = False) -> Path:
    """Build (or confirm up to date) out_dir/model, out_dir/adapters/*, out_dir/manifest.json."""
    if req.preset not in PRESETS:
        raise ValueError(f"unknown preset {req.preset!r}; choose one of {', '.join(PRESETS)}")
    out_dir = out_dir.resolve()
    shape = PRESETS[req.preset]
    with file_lock(out_dir / LOCK):
        if not force and is_complete(out_dir, req):
            return out_dir
        (out_dir / MANIFEST).unlink(missing_ok=True)
        model_dir = out_dir / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        for old in model_dir.glob("model*.safetensors*"):
            old.unlink()
        specs = plan_adapters(req.ranks, req.adapters_per_rank, req.seed)
        steps = 1 + len(list(tensor_shapes(shape))) + len(specs)
        bar = tqdm(total=steps, desc="tokenizer", unit="step", disable=not progress)
        with quiet_transformers(), bar:
            write_tokenizer(model_dir, shape)
            data = write_config(model_dir, llama_config(shape))
            write_json(model_dir / "config.json", {**data, "dtype": "bfloat16"})
            bar.update()
            bar.set_description("weights")
            write_weights(model_dir, req.preset, req.seed, bar)
            weights = target_weights(shape, req.targets)
            remove_stale_adapters(out_dir / "adapters", {s.name for s in specs})
            with single_thread():
                for spec in specs:
                    bar.set_description(f"adapter {spec.name}")
                    write_adapter(out_dir / "adapters", spec, weights, base_name=model_name(req.preset),
                                  strength=req.strength, targets=req.targets)
                    bar.update()
        files = {p.relative_to(out_dir).as_posix(): p.stat().st_size for p in sorted(out_dir.rglob("*"))
                 if p.is_file() and p.name not in (MANIFEST, LOCK)}
        write_json(out_dir / MANIFEST, {"request": req.key(), "files": files})
    return out_dir




def is_complete(out_dir: Path, req: RandomLlamaRequest) -> bool:
    """True when the manifest was written for this request and every listed file has its size."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    files = manifest.get("files") or {}
    return (manifest.get("request") == req.key() and bool(files)
            and all((out_dir / n).is_file() and (out_dir / n).stat().st_size == s for n, s in files.items()))
