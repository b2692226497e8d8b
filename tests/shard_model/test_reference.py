"""ModelRunner vs transformers + PEFT (float32): logits within 1e-4 relative, greedy tokens equal,
for a batch mixing base rows and 8 adapters of ranks 8..128, through prefill, decode, concatenation,
filtering and chunked prefill, over scattered pages; and a request writes only its own KV slots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard.model.dist import DistContext
from shard.model.runner import ForwardBatch, ModelRunner
from tests.shard_model.harness import BLOCK, Harness, Record
from tests.shard_model.tiny import Reference, build

NUM_PAGES = 1600
SENTINEL = 1.0e4


def check_records(records: list[Record], reference: Reference) -> None:
    assert records
    for rec in records:
        ref = reference.logits(list(rec.tokens), rec.adapter)[-1]
        scale = ref.abs().max().item()
        where = f"{rec.name} ({rec.adapter}) at {len(rec.tokens)} tokens"
        torch.testing.assert_close(rec.logits, ref, rtol=1e-4, atol=1e-4 * scale,
                                   msg=lambda m, where=where: f"{where}: {m}")
        assert int(rec.logits.argmax()) == int(ref.argmax()), f"greedy token differs for {rec.name}"


@pytest.fixture(scope="module")
def runner(tiny_root: Path) -> ModelRunner:
    return ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                       num_pages=NUM_PAGES, block_size=BLOCK)


@pytest.mark.parametrize("lora_path", ["segment", "gather", "kernel", "torch-only"])
def test_matches_transformers_peft(runner: ModelRunner, tiny_root: Path, reference: Reference,
                                   lora_path: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """"kernel": the C kernels (base and LoRA) where they apply; "torch-only": C kernels disabled."""
    if lora_path == "torch-only":
        monkeypatch.setenv("CHAMELEON_CPU_KERNELS", "0")  # read when a runner is built: torch ops
        runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu",
                             dist=DistContext.single(), num_pages=NUM_PAGES, block_size=BLOCK)
        assert runner.backend.name == "torch"
        lora_path = None
    for info in runner.adapter_store.resident():
        runner.adapter_store.offload(info.adapter_id)
    runner.allocate_pool(NUM_PAGES)
    runner.lora_path = lora_path
    h = Harness(runner, tiny_root, seed=1)
    h.scenario()
    check_records(h.records, reference)


def test_request_writes_only_its_own_slots(tiny_root: Path, reference: Reference) -> None:
    runner = ModelRunner(tiny_root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=NUM_PAGES, block_size=BLOCK)
    h = Harness(runner, tiny_root, seed=2)
    pool = runner.pool
    assert pool is not None
    adapter_pages = sorted(p for pages in h.adapter_pages.values() for p in pages)
    adapter_before = torch.stack([pool.page(p).clone() for p in adapter_pages])
    # poison every KV slot (all pages but the adapters') with a finite sentinel (pool contents are always
    # finite): a read of a foreign slot shows in the logits, a foreign write in the sentinel check
    mask = torch.ones(pool.num_pages, dtype=torch.bool)
    mask[adapter_pages] = False
    pool.buffer.view(pool.num_pages, -1)[mask] = SENTINEL
    seqs = h.scenario()
    check_records(h.records, reference)
    written = sorted(s for seq in seqs for s in seq.written)
    # [slot, everything of that slot over layers and K/V]
    slot_view = pool.buffer.view(pool.num_pages, pool.num_layers, 2, BLOCK, -1).permute(0, 3, 1, 2, 4)
    slot_view = slot_view.reshape(pool.num_pages * BLOCK, -1)
    untouched = torch.ones(slot_view.shape[0], dtype=torch.bool)
    untouched[written] = False
    untouched.view(pool.num_pages, BLOCK)[adapter_pages] = False
    assert (slot_view[untouched] == SENTINEL).all(), "a forward wrote into a slot it does not own"
    assert (slot_view[written] != SENTINEL).all(dim=1).all(), "a slot of the request was not written"
    after = torch.stack([pool.page(p) for p in adapter_pages])
    assert torch.equal(after, adapter_before), "KV writes touched adapter pages"


def test_qwen2_with_qkv_bias_matches(tmp_path: Path) -> None:
    """Qwen2 (q/k/v biases) through the same scenario: the config path and biased packed layers."""
    root = build(tmp_path, kind="qwen2", seed=5)
    runner = ModelRunner(root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                         num_pages=NUM_PAGES, block_size=BLOCK)
    assert runner.config.qkv_bias and runner.model.model.layers[0].self_attn.qkv_proj.bias is not None
    h = Harness(runner, root, seed=4)
    h.scenario()
    check_records(h.records, Reference(root))


def test_bfloat16_close_to_float32(tiny_root: Path) -> None:
    """bfloat16 on CPU (weights, pool, adapters) stays within bf16 precision of float32."""
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        runner = ModelRunner(tiny_root / "model", dtype=dtype, device="cpu", dist=DistContext.single(),
                             num_pages=900, block_size=BLOCK)
        path = tiny_root / "adapters" / "a128"
        runner.adapter_store.load("a128", path, list(range(1, 1 + runner.adapter_store.pages_needed(path))))
        prefill = ForwardBatch.build([[5, 6, 7, 8, 9], [10, 11, 12]], [5, 3], [[800, 801], [850]], BLOCK,
                                     ["a128", None])
        decode = ForwardBatch.build([[1], [2]], [6, 4], [[800, 801], [850]], BLOCK, ["a128", None])
        logits[dtype] = torch.cat([runner.forward(prefill).last_logits, runner.forward(decode).last_logits])
    full, half = logits[torch.float32], logits[torch.bfloat16]
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).abs().max() <= 0.05 * full.abs().max()
