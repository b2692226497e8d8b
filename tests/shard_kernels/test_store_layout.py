"""The SGMV kernel on adapters loaded by the real AdapterStore into a ShardPagePool: the table points
into the pool in place (each adapter in ascending adjacent pages) or packs copies (an adapter given
scattered pages, whose tensors straddle them), and both match the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chameleon.core.memory import ModelShape
from shard.kernels import reference
from shard.kernels.lora import lora_table, segments_from_row_adapters, sgmv_lora
from shard.lora.store import AdapterStore
from shard.model.dist import DistContext
from shard.model.pool import ShardPagePool
from tests.shard_kernels.conftest import tolerance

BLOCK = 4


def _store(root: Path, dtype: torch.dtype, device: torch.device,
           scatter: bool) -> tuple[ShardPagePool, AdapterStore, list[str]]:
    shape = ModelShape.from_model_dir(root / "model")
    names = sorted(p.name for p in (root / "adapters").iterdir())[::2]  # one adapter of each rank
    pool = ShardPagePool(shape, 4000, BLOCK, dtype, device)
    store = AdapterStore(shape, dtype, device, DistContext.single(), BLOCK, lambda: pool,
                         adapter_dtype="model")
    first = 3
    for name in names:
        need = store.pages_needed(root / "adapters" / name)
        pages = list(range(first, first + 2 * need, 2)) if scatter and name == names[0] else \
            list(range(first, first + need))
        store.load(name, root / "adapters" / name, pages)
        first = pages[-1] + 5  # gaps between adapters
    assert first < pool.num_pages
    return pool, store, names


@pytest.mark.parametrize("scatter", [False, True], ids=["in-place", "packed"])
def test_sgmv_on_store_adapters(target, tiny_assets: Path, scatter: bool) -> None:
    device, dtype = target
    pool, store, names = _store(tiny_assets, dtype, device, scatter)
    weights = [store.get(n) for n in names]
    assert sorted(w.rank for w in weights) == [8, 16, 64, 128]
    gen = torch.Generator().manual_seed(4)
    for layer, module in ((1, "q_proj"), (3, "down_proj")):
        pairs = [w.layers[layer][module] for w in weights]
        scales = [w.scale for w in weights]
        table = lora_table(pairs, scales, pool.buffer.view(pairs[0][0].dtype))
        assert (table.weights.data_ptr() == pool.buffer.data_ptr()) == (not scatter)
        in_dim, out_dim = pairs[0][0].shape[1], pairs[0][1].shape[0]
        row_adapter = torch.tensor([2, -1, 0, 3, 3, 1, -1, 0], device=device)
        x = torch.randn(8, in_dim, generator=gen).to(dtype).to(device)
        base = torch.randn(8, out_dim, generator=gen).to(dtype).to(device)
        got = sgmv_lora(x, table, segments_from_row_adapters(row_adapter), base.clone(), out_dim)
        want = reference.sgmv_lora(x, pairs, scales, row_adapter, base)
        torch.testing.assert_close(got.float(), want.float(), **tolerance(dtype))
