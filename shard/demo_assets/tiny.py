"""The tiny test model: a random-init Llama (GQA, untied head) with a byte-level BPE tokenizer trained
locally on Python's own standard-library sources. Built in seconds; deterministic from the seed.

Special tokens mirror SmolLM2 (ids 0, 1, 2 = <|endoftext|>, <|im_start|> = bos, <|im_end|> = eos = pad)
and the tokenizer carries a ChatML chat template, so code paths match those of the demo model.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from shard.demo_assets.files import save_tensors, stable_seed
from shard.demo_assets.hf import finish_tokenizer_config, write_config

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
MODEL_NAME = "chameleon-tiny-llama"


@dataclass(frozen=True, slots=True)
class TinySpec:
    """Shape of the tiny model. Heads 6 / KV heads 2 (GQA, groups of 3) split evenly at TP=2."""

    vocab_size: int = 1536
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    init_std: float = 0.02
    corpus_bytes: int = 3_000_000


def corpus_files(max_bytes: int) -> list[Path]:
    """Python files of the stdlib directory in sorted order, until max_bytes of text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked: list[Path] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        if total >= max_bytes:
            break
        picked.append(path)
        total += path.stat().st_size
    if not picked:
        raise RuntimeError(f"no Python sources found in {stdlib} to train the tiny tokenizer on")
    return picked


def train_tokenizer(spec: TinySpec) -> Tokenizer:
    """Byte-level BPE, trained on the stdlib sources; no bos is added by the encoder (as SmolLM2)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, min_frequency=2, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = (p.read_text(encoding="utf-8", errors="replace") for p in corpus_files(spec.corpus_bytes))
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, max_length: int) -> int:
    """tokenizer.json + tokenizer_config.json (chat template inside); returns the vocab size."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL_TOKENS[1], eos_token=SPECIAL_TOKENS[2],
        pad_token=SPECIAL_TOKENS[2], unk_token=SPECIAL_TOKENS[0], chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(str(out))
    finish_tokenizer_config(out, max_length)
    return tok.get_vocab_size()


def tiny_config(spec: TinySpec, vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        initializer_range=spec.init_std, dtype="float32")


def random_weights(config: LlamaConfig, seed: int, std: float) -> dict[str, torch.Tensor]:
    """Normal(0, std) for every matrix, ones for every norm; drawn in sorted-name order from one
    generator, so the weights depend only on the seed and the shapes."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(stable_seed("tiny-model", seed))
    out: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        if name.endswith("norm.weight"):
            out[name] = torch.ones(shapes[name])
        else:
            out[name] = torch.randn(shapes[name], generator=gen) * std
    return out


def build_tiny_model(model_dir: Path, seed: int, spec: TinySpec = TinySpec()) -> None:
    """Write the tiny model folder: tokenizer, config.json, generation_config.json, model.safetensors."""
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = save_tokenizer(train_tokenizer(spec), model_dir, spec.max_position_embeddings)
    config = tiny_config(spec, vocab)
    write_config(model_dir, config)
    save_tensors(model_dir / "model.safetensors", random_weights(config, seed, spec.init_std))
