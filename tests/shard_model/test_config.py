"""Config parsing (transformers 4 and 5 spellings) and rotary frequencies vs transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from shard.model.config import ModelConfig
from shard.model.rotary import inv_frequencies

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


@pytest.mark.parametrize("kind", ["default", "llama3", "linear"])
def test_rope_frequencies_match_transformers(kind: str) -> None:
    scaling = {"default": None, "llama3": LLAMA3, "linear": {"rope_type": "linear", "factor": 2.0}}[kind]
    hf = LlamaConfig(hidden_size=128, num_attention_heads=2, rope_theta=500000.0, rope_scaling=scaling)
    ours = ModelConfig.from_dict(hf.to_dict())
    assert ours.rope.kind == kind and ours.rope.theta == 500000.0
    want = ROPE_INIT_FUNCTIONS[kind](hf, "cpu")[0] if kind != "default" else \
        1.0 / (500000.0 ** (torch.arange(0, 64, 2).float() / 64))
    torch.testing.assert_close(inv_frequencies(ours.rope, 64), want, rtol=0, atol=0)


def test_old_style_config_and_model_types() -> None:
    base = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 100, "rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 4.0}}
    cfg = ModelConfig.from_dict({**base, "model_type": "llama"})
    assert (cfg.rope.kind, cfg.rope.factor, cfg.shape.num_kv_heads, cfg.qkv_bias) == ("linear", 4.0, 4, False)
    assert ModelConfig.from_dict({**base, "model_type": "qwen2"}).qkv_bias
    mistral = ModelConfig.from_dict({**base, "model_type": "mistral", "sliding_window": 4096})
    assert mistral.sliding_window == 4096
    with pytest.raises(ValueError, match="not supported"):
        ModelConfig.from_dict({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope scaling type"):
        ModelConfig.from_dict({**base, "rope_scaling": {"type": "yarn", "factor": 2.0}})
