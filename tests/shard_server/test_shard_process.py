"""A real `chameleon shard` process on a tmp unix socket, driven like a TGI router would drive it."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from chameleon_pb import chameleon_pb2, generate_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from transformers import AutoTokenizer

from chameleon.core.adapter_files import read_safetensors_header
from chameleon.core.memory import DTYPE_BYTES, ModelShape, adapter_pages, adapter_storage_dtype
from shard.cli import eos_token_ids
from tests.shard_server.procs import Router, request, start_shards
from tests.shard_server.reference import PeftReference

pytestmark = pytest.mark.slow

BUDGET = str(100 * 1024**2)  # weights (~9 MB) + activations + a pool of ~2500 tiny pages
ADAPTER_PAGES = "1200"  # the shard's own adapter region: room for every tiny adapter at once
PROMPTS = ["def main(argv):", "import os\nimport sys", "class Parser(object):", "    return self._",
           "for key, value in", "# Copyright (c)", "if __name__ ==", "raise ValueError(",
           "with open(path) as f:", "    def __init__(self,", "try:\n    import", "x = [i for i in"]


@pytest.fixture(scope="module")
def tiny(tiny_assets: Path) -> Path:
    return tiny_assets


@pytest.fixture(scope="module")
def tokenizer(tiny: Path):
    return AutoTokenizer.from_pretrained(str(tiny / "model"))


@pytest.fixture(scope="module")
def eos(tiny: Path, tokenizer) -> frozenset[int]:
    return eos_token_ids(tiny / "model", tokenizer)


@pytest.fixture(scope="module")
def adapters(tiny: Path) -> list[str]:
    names = sorted(p.name for p in (tiny / "adapters").iterdir() if p.is_dir())
    assert len(names) >= 8
    return names


@pytest.fixture(scope="module")
def shard(tiny: Path, tmp_path_factory: pytest.TempPathFactory, adapters: list[str]):
    uds = str(tmp_path_factory.mktemp("uds") / "shard")
    named = f"startup={tiny / 'adapters' / adapters[0]}"
    with start_shards(tiny / "model", uds, ["--adapter-dir", str(tiny / "adapters"), "--lora-adapters",
                                            named, "--memory-budget", BUDGET, "--adapter-pages",
                                            ADAPTER_PAGES]) as shards:
        yield shards


@pytest.fixture()
def router(shard) -> Router:
    r = Router(shard)
    if not hasattr(shard[0], "warm"):
        shard[0].warm = r.warmup()
    r.kv_pages = shard[0].warm.max_supported_total_tokens // r.block_size
    return r


def _prompt_len(tokenizer, prompt: str) -> int:
    return len(tokenizer(prompt)["input_ids"])


def _req(router: Router, tokenizer, rid: int, prompt: str, max_new: int, adapter: str | None = None,
         **params: object) -> generate_pb2.Request:
    return request(rid, prompt, max_new, router.blocks(_prompt_len(tokenizer, prompt) + max_new), adapter,
                   **params)


def test_greedy_matches_peft_through_prefill_concat_filter(router, tokenizer, tiny, adapters, eos):
    plan = [(i, PROMPTS[i], adapters[i - 4] if i >= 4 else None, 10) for i in range(12)]
    reqs = [_req(router, tokenizer, i, p, n, a) for i, p, a, n in plan]
    a = router.step("Prefill", generate_pb2.PrefillRequest(batch=generate_pb2.Batch(id=1, requests=reqs[:6])))
    b = router.step("Prefill", generate_pb2.PrefillRequest(batch=generate_pb2.Batch(id=2, requests=reqs[6:])))
    merged = router.step("Decode", generate_pb2.DecodeRequest(batches=[a, b]))
    dropped = {3, 9}
    kept = [i for i in merged.request_ids if i not in dropped]
    filtered = router.call("FilterBatch", generate_pb2.FilterBatchRequest(batch_id=merged.id,
                                                                          request_ids=kept))[0]
    assert list(filtered.batch.request_ids) == kept and filtered.headroom.pool_pages_total > 0
    router.run(filtered.batch)
    ref = PeftReference(tiny / "model", [tiny / "adapters" / n for n in adapters])
    for i, prompt, adapter, n in plan:
        want = ref.greedy(prompt, adapter, n, eos)
        got = router.tokens(i)
        if i in dropped:
            assert got == want[:len(got)] and len(got) == 2, (i, adapter)
        else:
            assert got == want, (i, adapter)
            assert router.final(i).generated_tokens == len(want)


def test_seeded_sampling_reproduces_and_top_k_1_is_greedy(router, tokenizer):
    def run(rid: int, **params: object) -> list[int]:
        r = _req(router, tokenizer, rid, PROMPTS[0], 12, "startup", ignore_eos=True, **params)
        router.generate(100 + rid, [r])
        return router.tokens(rid)

    sampled = dict(do_sample=True, temperature=1.5, top_p=0.95, seed=42)
    first, again, other = run(1, **sampled), run(2, **sampled), run(3, **{**sampled, "seed": 43})
    assert first == again and first != other
    assert router.final(1).seed == 42
    assert run(4, do_sample=True, top_k=1, seed=5) == run(5)


def test_stop_sequence_and_max_new_tokens(router, tokenizer):
    r = _req(router, tokenizer, 1, PROMPTS[1], 6, ignore_eos=True)
    router.generate(7, [r])
    full = router.final(1)
    assert full.finish_reason == generate_pb2.FINISH_REASON_LENGTH and full.generated_tokens == 6
    pieces = [g.tokens.texts[0] for g in router.generations[1]]
    k = next(k for k in range(2, 6) if pieces[k].strip())
    stop = pieces[k].strip()[-1]
    expected = next(j for j in range(6) if stop in "".join(pieces[:j + 1]))
    r = _req(router, tokenizer, 2, PROMPTS[1], 6, ignore_eos=True, stop=[stop])
    router.generate(8, [r])
    end = router.final(2)
    assert end.finish_reason == generate_pb2.FINISH_REASON_STOP_SEQUENCE
    assert end.generated_tokens == expected + 1


@pytest.mark.parametrize("case", ["unknown adapter", "too long", "no KV blocks", "path adapter"])
def test_bad_request_is_refused_alone_on_every_rank(router, tokenizer, case):
    """Every rank lists the bad request in `rejected` with a readable reason; its batch mate runs."""
    r = _req(router, tokenizer, 1, PROMPTS[2], 4)
    if case == "unknown adapter":
        r.adapter_id = "no-such-adapter"
    elif case == "path adapter":
        r.adapter_id = "../adapters/r8-00"
    elif case == "too long":
        r.inputs = PROMPTS[2] * 200
    else:
        r.ClearField("blocks")
    good = _req(router, tokenizer, 2, PROMPTS[2], 1)
    batch = generate_pb2.Batch(id=9, requests=[r, good])
    replies = router.call("Prefill", generate_pb2.PrefillRequest(batch=batch))
    for reply in replies:
        assert [x.request_id for x in reply.rejected] == [1] and reply.rejected[0].reason
    gens = [g for reply in replies for g in reply.generations]
    assert [g.request_id for g in gens] == [2] and len(gens[0].tokens.ids) == 1


def test_liveness_info_discovery_headroom_reflection(router, shard):
    live = generate_pb2.Request(id=2**64 - 1, inputs="liveness", truncate=1, blocks=[0], slots=[0])
    live.stopping_parameters.max_new_tokens = 1
    reply = shard[0].stub.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(
        id=2**64 - 1, requests=[live], size=1, max_tokens=2)))
    assert not reply.HasField("batch") and reply.generations[0].generated_text.generated_tokens == 1
    info = shard[0].stub.Info(generate_pb2.InfoRequest())
    assert info.block_size == 16 and info.device_type == "cpu" and info.chameleon.world_size == 1
    urls = shard[0].stub.ServiceDiscovery(generate_pb2.ServiceDiscoveryRequest()).urls
    assert list(urls) == [shard[0].url]
    head = shard[0].adapters.GetHeadroom(chameleon_pb2.HeadroomRequest())
    assert 0 < head.free_device_bytes <= head.total_device_bytes and head.resident_adapters >= 1
    assert head.free_source in ("meminfo", "cgroup-v1", "cgroup-v2")  # measured, not the budget
    assert head.resident_bytes > 0 and head.pool_pages_allocated == head.pool_pages_total > 0
    assert head.segment_pages >= 1
    assert head.pool_allocated_bytes == head.pool_pages_allocated * head.page_bytes
    listed = shard[0].adapters.ListAdapters(chameleon_pb2.ListAdaptersRequest()).adapters
    assert {a.adapter_id for a in listed if a.resident} >= {"startup"}
    refl = reflection_pb2_grpc.ServerReflectionStub(shard[0].channel)
    answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"generate.v3.TextGenerationService", "chameleon.v1.AdapterService"} <= names


def test_router_assigned_adapter_pages(router, shard, tiny, adapters):
    warm, name = shard[0].warm, adapters[-1]
    cfg = json.loads((tiny / "adapters" / name / "adapter_config.json").read_text())
    header = read_safetensors_header(tiny / "adapters" / name / "adapter_model.safetensors")
    dtypes = [t["dtype"] for t in header.values()]
    stored = DTYPE_BYTES[adapter_storage_dtype("float32", dtypes)]  # the demo's bf16 files: 16-bit storage
    assert stored == 2
    need = adapter_pages(ModelShape.from_model_dir(tiny / "model"), cfg["r"], cfg["target_modules"], 4, 16,
                         adapter_dtype_bytes=stored)
    shard[0].adapters.OffloadAdapter(chameleon_pb2.OffloadAdapterRequest(adapter_id=name))
    with pytest.raises(grpc.RpcError) as err:  # too few pages
        shard[0].adapters.LoadAdapter(chameleon_pb2.LoadAdapterRequest(adapter_id=name, pages=[5]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pages" in err.value.details()
    pages = list(range(router.kv_pages - need, router.kv_pages))
    loaded = shard[0].adapters.LoadAdapter(chameleon_pb2.LoadAdapterRequest(adapter_id=name, pages=pages))
    assert loaded.adapter.pages == need and loaded.headroom.adapter_pages_used >= need
    assert loaded.adapter.dtype == "bfloat16"
    assert loaded.headroom.pool_pages_total == warm.pool.num_pages


def test_tensor_parallel_2_matches_tp_1(router, shard, tiny, tokenizer, adapters, tmp_path):
    plan = [(i, PROMPTS[i], adapters[i] if i % 3 else None, 8) for i in range(6)]
    router.generate(20, [_req(router, tokenizer, i, p, n, a, ignore_eos=True) for i, p, a, n in plan])
    uds = str(tmp_path / "tp")
    args = ["--adapter-dir", str(tiny / "adapters"), "--memory-budget", BUDGET]  # default adapter region
    with start_shards(tiny / "model", uds, args, world=2) as ranks:
        tp = Router(ranks)
        tp.warmup()
        reqs = [_req(tp, tokenizer, i, p, n, a, ignore_eos=True) for i, p, a, n in plan]
        batch = generate_pb2.Batch(id=1, requests=reqs, size=len(reqs))
        replies = tp.call("Prefill", generate_pb2.PrefillRequest(batch=batch))
        assert [sorted(g.request_id % 2 for g in r.generations) for r in replies] == [[0] * 3, [1] * 3]
        for r in replies:
            for g in r.generations:
                tp.generations.setdefault(g.request_id, []).append(g)
        tp.run(replies[0].batch)
        urls = ranks[0].stub.ServiceDiscovery(generate_pb2.ServiceDiscoveryRequest()).urls
        assert list(urls) == [ranks[0].url, ranks[1].url]
    assert [s.proc.returncode for s in ranks] == [0, 0]  # SIGTERM: graceful shutdown
    assert not any(Path(s.url.removeprefix("unix://")).exists() for s in ranks)
    for i, *_ in plan:
        assert tp.tokens(i) == router.tokens(i), i
