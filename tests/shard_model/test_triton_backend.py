"""The Triton backend (shard.model.triton_backend) against TorchBackend, on CPU through Triton's interpreter.

The tiny model (2 layers, GQA 6/3 heads, 8 adapters of ranks 8..128 in scattered pool pages, some
tensors straddling pages) runs a short scenario (prefill with prompt logits, decode, prefill + decode in
one forward, a chunked prefill over cached context beside decode rows) once through each backend in float32;
logits agree within float32 rounding and the greedy tokens are identical. Every forward with adapter rows
went through the SGMV kernels (not the torch fallback), and attention through the Triton kernels.

TRITON_INTERPRET=1 is set by tests/shard_model/conftest.py (without CUDA) before triton is first imported.
The interpreter is slow: shapes and steps are few (seconds in all).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from shard.model.dist import DistContext
from shard.model.runner import ModelRunner, select_backend
from shard.model.triton_backend import TritonBackend, TritonLora, triton_unavailable
from tests.shard_model.harness import BLOCK, Harness, Seq

CPU = torch.device("cpu")
NUM_PAGES = 1200  # the 8 adapters (model dtype, float32) and every sequence's blocks


def _runner(root: Path, backend: str) -> ModelRunner:
    return ModelRunner(root / "model", dtype=torch.float32, device="cpu", dist=DistContext.single(),
                       num_pages=NUM_PAGES, block_size=BLOCK, adapter_dtype="model", backend=backend)


def _spy(backend: TritonBackend) -> dict[str, int]:
    """Counts the backend's LoRA kernels built and attention calls (kernel paths taken)."""
    seen = {"lora": 0, "attention": 0}
    build, attend = backend.lora_kernel, backend.attention

    def lora_kernel(*args: object, **kw: object) -> TritonLora | None:
        kernel = build(*args, **kw)  # type: ignore[arg-type]
        assert isinstance(kernel, TritonLora), "the SGMV kernels did not apply to this batch"
        seen["lora"] += 1
        return kernel

    def attention(*args: object, **kw: object) -> torch.Tensor:
        seen["attention"] += 1
        return attend(*args, **kw)  # type: ignore[arg-type]

    backend.lora_kernel = lora_kernel  # type: ignore[method-assign]
    backend.attention = attention  # type: ignore[method-assign]
    return seen


def _scenario(h: Harness) -> list[Seq]:
    a = [h.seq("s0", None, 5), h.seq("s1", "a8", 3), h.seq("s2", "a128", 4)]
    b = [h.seq("s3", "b16", 4)]
    late = h.seq("s4", "a64", 7)
    h.step(a, all_logits=True)                    # prefill (prompt logits too)
    h.step(a)                                     # decode: two adapters and a base row
    h.step(a + b)                                 # decode + prefill in one forward
    h.step([a[0], a[2], *b, late], chunk={"s4": 4})  # decode rows + a first prefill chunk
    h.step([a[0], a[2], *b, late])                # decode rows + the chunk over cached context
    return [*a, *b, late]


def test_triton_scenario_matches_torch_backend(tiny_root: Path) -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "CPU Triton tests need TRITON_INTERPRET=1"
    torch_runner, triton_runner = _runner(tiny_root, "torch"), _runner(tiny_root, "triton")
    assert isinstance(triton_runner.backend, TritonBackend)
    seen = _spy(triton_runner.backend)
    want, got = Harness(torch_runner, tiny_root), Harness(triton_runner, tiny_root)
    want_seqs, got_seqs = _scenario(want), _scenario(got)
    assert seen["lora"] == 5 and seen["attention"] == 10, seen  # 5 forwards x 2 layers
    assert len(want.records) == len(got.records)
    for w, g in zip(want.records, got.records, strict=True):
        assert (w.name, w.tokens) == (g.name, g.tokens)
        torch.testing.assert_close(g.logits, w.logits, atol=2e-4, rtol=2e-4, msg=f"{g.name} {len(g.tokens)}")
    assert [s.tokens for s in got_seqs] == [s.tokens for s in want_seqs]


def test_triton_backend_choice() -> None:
    """Chosen by name on CPU under the interpreter; never chosen automatically for CPU tensors."""
    assert triton_unavailable(CPU) is None
    assert isinstance(select_backend(CPU, "triton"), TritonBackend)
    assert not isinstance(select_backend(CPU), TritonBackend)
    assert select_backend(CPU, "torch").name == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend(CPU, "cuda-magic")


def test_triton_refused_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in (triton_unavailable(CPU) or "")
    with pytest.raises(ValueError, match="triton backend is unavailable"):
        select_backend(CPU, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "interpreter" in (triton_unavailable(torch.device("cuda", 0)) or "")
