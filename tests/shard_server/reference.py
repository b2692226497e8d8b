"""transformers + PEFT reference generation (float32), for comparing greedy tokens."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM


class PeftReference:
    """The base model with every adapter of `adapter_dirs` loaded under its folder name."""

    def __init__(self, model_dir: Path, adapter_dirs: Iterable[Path]) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        base = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
        dirs = list(adapter_dirs)
        self.model = PeftModel.from_pretrained(base, str(dirs[0]), adapter_name=dirs[0].name)
        for d in dirs[1:]:
            self.model.load_adapter(str(d), adapter_name=d.name)
        self.model.eval()

    @torch.inference_mode()
    def greedy(self, prompt: str, adapter: str | None, max_new: int, eos: frozenset[int]) -> list[int]:
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        out: list[int] = []
        past = None
        step = ids
        if adapter is not None:
            self.model.set_adapter(adapter)
        for _ in range(max_new):
            if adapter is None:
                with self.model.disable_adapter():
                    res = self.model(input_ids=step, past_key_values=past, use_cache=True)
            else:
                res = self.model(input_ids=step, past_key_values=past, use_cache=True)
            past = res.past_key_values
            out.append(int(res.logits[0, -1].argmax()))
            if out[-1] in eos:
                break
            step = torch.tensor([[out[-1]]])
        return out
