"""The model forward (prefill, chunked prefill over cached KV, decode; paged KV) and the multi-LoRA path
(base rows and adapters of ranks 8..128 in one batch, every LoRA path) on fake CUDA tensors: no op mixes
devices, every output and every tensor the runner holds is on cuda:0, and the logits equal a CPU run's
(the fake CUDA tensors compute on the CPU underneath, so the comparison is tight)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard.model.dist import DistContext
from shard.model.runner import ForwardBatch, ModelRunner, resolve_dtype
from tests.shard_device.fake_cuda import CUDA, fake_cuda, host
from tests.shard_model.tiny import ADAPTERS

BS = 16
KV_PAGES = 11  # page 0 + two blocks for each of 5 sequences
TABLES = [[1 + 2 * i, 2 + 2 * i] for i in range(5)]
SEQ_ADAPTERS = [None, "a8", "a128", "b16", "a8"]  # a8's rows are not contiguous: an index tensor


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 251, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _steps() -> list[ForwardBatch]:
    """Prefill (one prompt's first chunk with all logits), then the rest of that prompt beside four
    decode rows, then a decode step of all five."""
    prompts = [_ids(5, 1), _ids(20, 2), _ids(10, 3), _ids(3, 4), _ids(4, 5)]
    logits = [False, False, True, False, False]
    first = ForwardBatch.build([prompts[0], prompts[1], prompts[2][:6], prompts[3], prompts[4]],
                               [5, 20, 6, 3, 4], TABLES, BS, SEQ_ADAPTERS, all_logits=logits)
    mixed = ForwardBatch.build([[7], [8], prompts[2][6:], [9], [14]], [6, 21, 10, 4, 5], TABLES, BS,
                               SEQ_ADAPTERS, all_logits=logits)
    decode = ForwardBatch.build([[10], [11], [12], [13], [15]], [7, 22, 11, 5, 6], TABLES, BS, SEQ_ADAPTERS)
    return [first, mixed, decode]


def _runner(root: Path, device: str | torch.device, dtype: torch.dtype, lora_path: str | None) -> ModelRunner:
    runner = ModelRunner(root / "model", dtype=dtype, device=device, dist=DistContext.single(),
                         backend="torch")
    paths = {a.name: root / "adapters" / a.name for a in ADAPTERS}
    pages = {a: runner.adapter_store.pages_needed(p) for a, p in paths.items()}
    runner.allocate_pool(KV_PAGES + sum(pages.values()))
    start = KV_PAGES
    for name, path in paths.items():
        runner.adapter_store.load(name, path, list(range(start, start + pages[name])))
        start += pages[name]
    runner.lora_path = lora_path
    return runner


def _run(root: Path, device: str | torch.device, dtype: torch.dtype,
         lora_path: str | None) -> tuple[ModelRunner, list[torch.Tensor]]:
    runner = _runner(root, device, dtype, lora_path)
    outs: list[torch.Tensor] = []
    for fb in _steps():
        out = runner.forward(fb)
        outs += [out.last_logits, *(t for t in out.all_logits if t is not None)]
    return runner, outs


def _runner_tensors(runner: ModelRunner) -> list[torch.Tensor]:
    held = [runner.model.rotary.inv_freq, *runner.model.parameters(), runner.pool.buffer]
    for info in runner.adapter_store.resident():
        for layer in runner.adapter_store.get(info.adapter_id).layers:
            held += [t for ab in layer.values() for t in ab]
    return held


@pytest.mark.parametrize("lora_path", [None, "segment", "gather"])
def test_forward_and_lora_stay_on_the_device_and_match_cpu(lora_root: Path, lora_path: str | None) -> None:
    with fake_cuda() as mode:
        runner, outs = _run(lora_root, CUDA, torch.float32, lora_path)
        held = _runner_tensors(runner)
    assert mode.checked > 500
    assert {t.device for t in outs + held} == {CUDA}
    _, expected = _run(lora_root, "cpu", torch.float32, lora_path)
    assert len(outs) == len(expected) == 5
    for got, want in zip(outs, expected, strict=True):
        torch.testing.assert_close(host(got), want, rtol=1e-4, atol=1e-4)


def test_cuda_defaults_to_bfloat16_and_runs_in_it(lora_root: Path) -> None:
    assert resolve_dtype("auto", CUDA) == torch.bfloat16 and resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", CUDA) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float64", "cpu")
    with fake_cuda():
        runner, outs = _run(lora_root, CUDA, resolve_dtype("auto", CUDA), None)
        held = _runner_tensors(runner)
    assert {t.dtype for t in held[1:]} == {torch.bfloat16}  # every weight, the pool, every adapter
    assert {t.device for t in outs} == {CUDA} and {t.dtype for t in outs} == {torch.float32}
    _, expected = _run(lora_root, "cpu", torch.float32, None)
    for got, want in zip(outs, expected, strict=True):
        assert torch.isfinite(host(got)).all()
        assert float((host(got) - want).abs().max()) < 0.05 * float(want.abs().max())
