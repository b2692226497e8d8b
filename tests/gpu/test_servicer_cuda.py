"""Warmup, Prefill and Decode through the real servicer (in process, no socket) on CUDA: the router's own
warmup batch (prefill logprobs, penalties, top-n: the tensor code that must stay on the device), then a
mixed batch of base and adapter requests decoded to the end, with the decode steps replayed from CUDA
graphs. float32 greedy tokens equal transformers + PEFT's; bfloat16 runs every request to its end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from chameleon_pb import generate_pb2

from router.engine.startup import warmup_request
from shard.cli import build_core, eos_token_ids
from shard.server.servicer import TextGenerationService
from tests.gpu.replays import count_replays
from tests.shard_server.reference import PeftReference

pytestmark = pytest.mark.gpu

PROMPTS = ["def main(argv):", "import os\nimport sys", "class Parser(object):", "    return self._",
           "with open(path) as f:", "    def __init__(self,"]
MAX_NEW = 10
BLOCK = 16


def _service(assets: Path, dtype: str) -> TextGenerationService:
    core = build_core(SimpleNamespace(
        model_dir=assets / "model", uds_path="gpu-test", lora_adapters="", adapter_dir=assets / "adapters",
        memory_budget=4 * 1024**3, adapter_pages=None, memory_fraction=0.05, dtype=dtype, device="cuda:0",
        block_size=BLOCK, threads=None, adapter_dtype="auto", kernel_backend="auto", cuda_graph_max_batch=8))
    assert core.runner.device.type == "cuda" and core.runner.backend.name == "triton"
    return TextGenerationService(core)


def _generate(service: TextGenerationService, plan: list[tuple[str, str | None]], kv_pages: int) -> dict:
    tokens: dict[int, list[int]] = {i: [] for i in range(len(plan))}
    reqs, page = [], 1
    per = -(-(64 + MAX_NEW) // BLOCK)
    for i, (prompt, adapter) in enumerate(plan):
        r = generate_pb2.Request(id=i, inputs=prompt, add_special_tokens=True, blocks=range(page, page + per))
        r.stopping_parameters.max_new_tokens = MAX_NEW
        if adapter is not None:
            r.adapter_id = adapter
        reqs.append(r)
        page += per
    assert page < kv_pages
    reply = service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(id=1, requests=reqs,
                                                                                   size=len(reqs))), None)
    while True:
        for g in reply.generations:
            tokens[g.request_id] += list(g.tokens.ids)
        if not reply.HasField("batch"):
            return tokens
        reply = service.Decode(generate_pb2.DecodeRequest(batches=[reply.batch]), None)


def _run(assets: Path, dtype: str) -> tuple[dict, list[tuple[str, str | None]], int]:
    service = _service(assets, dtype)
    runner = service.core.runner
    warm = service.Warmup(warmup_request(None, 256, None, None, runner.config.max_position_embeddings), None)
    assert warm.max_supported_total_tokens > 0 and runner.graphs is not None
    adapters = sorted(p.name for p in (assets / "adapters").iterdir() if p.is_dir())[:4]
    service.core.adapter_manager.ensure_resident(adapters, set(), set())
    plan = [(p, adapters[i % 4] if i % 3 else None) for i, p in enumerate(PROMPTS)]
    replays = count_replays(runner.graphs)
    got = _generate(service, plan, warm.max_supported_total_tokens // BLOCK)
    return got, plan, replays["n"]


def _reference(assets: Path, plan: list[tuple[str, str | None]]) -> list[list[int]]:
    names = sorted({a for _, a in plan if a})
    ref = PeftReference(assets / "model", [assets / "adapters" / a for a in names])
    eos = eos_token_ids(assets / "model", ref.tokenizer)
    return [ref.greedy(p, a, MAX_NEW, eos) for p, a in plan]


def test_float32_greedy_matches_peft(tiny_assets: Path) -> None:
    got, plan, replays = _run(tiny_assets, "float32")
    assert replays >= 1, "no decode step was replayed from a CUDA graph"
    want = _reference(tiny_assets, plan)
    for i, w in enumerate(want):
        assert got[i] == w, (i, plan[i])


def test_bfloat16_runs_to_the_end(tiny_assets: Path) -> None:
    """bf16 rounding may change later greedy tokens (tests/gpu/test_reference_cuda.py holds bf16 logits to
    a tolerance); here every request must run to its end with valid tokens."""
    got, plan, replays = _run(tiny_assets, "bfloat16")
    assert replays >= 1
    vocab = json.loads((tiny_assets / "model" / "config.json").read_text())["vocab_size"]
    for i in range(len(plan)):
        assert 1 <= len(got[i]) <= MAX_NEW and all(0 <= t < vocab for t in got[i]), (i, got[i])
