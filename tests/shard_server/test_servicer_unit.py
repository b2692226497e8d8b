"""Servicer + Batch bookkeeping against a fake runner (unit test only).

The fake model's next token is a pure function of the sequence's whole context, which it reads back
through the block tables and slots from its own KV store: wrong slots, lost KV or mixed-up rows after
concatenate/filter change the tokens.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from chameleon_pb import generate_pb2

from shard.lora.errors import AdapterError
from shard.model.backend import TorchBackend
from shard.model.dist import DistContext
from shard.model.runner import ForwardOutput
from shard.server.adapter_manager import AdapterManager
from shard.server.headroom import DeviceMemory
from shard.server.servicer import ShardCore, ShardOptions, TextGenerationService

BS = 4
EOS = 1


def next_token(ctx: list[int], adapter: str | None, vocab: int) -> int:
    salt = sum(map(ord, adapter)) if adapter else 0
    return 2 + (sum(t * (i + 1) for i, t in enumerate(ctx)) + salt) % (vocab - 2)


class FakeStore:
    def __init__(self) -> None:
        self.infos: dict[str, SimpleNamespace] = {}

    def has(self, a: str) -> bool:
        return a in self.infos

    def info(self, a: str) -> SimpleNamespace:
        return self.infos[a]

    def resident(self) -> list[SimpleNamespace]:
        return list(self.infos.values())

    def pages_needed(self, path: Path) -> int:
        return 2

    def load(self, a: str, path: Path, pages: list[int] | None) -> SimpleNamespace:
        self.infos[a] = SimpleNamespace(adapter_id=a, pages=tuple(pages or ()), rank=8, alpha=16.0,
                                        nbytes=100, extra_bytes=0, target_modules=("q_proj",))
        return self.infos[a]

    def offload(self, a: str) -> tuple[int, ...]:
        return self.infos.pop(a).pages


class FakeRunner:
    def __init__(self, vocab: int) -> None:
        self.vocab_size, self.block_size, self.num_pages, self.page_bytes = vocab, BS, 0, 64
        self.weight_bytes, self.device, self.dist = 1000, torch.device("cpu"), DistContext.single()
        self.backend = TorchBackend()
        self.pool = None
        self.config = SimpleNamespace(max_position_embeddings=64, model_type="llama",
                                      shape=SimpleNamespace(hidden_size=8, num_layers=1))
        self.adapter_store = FakeStore()
        self.kv: dict[int, int] = {}

    def allocate_pool(self, n: int) -> None:
        self.num_pages = n

    def measure_activation_bytes(self, tokens: int) -> int:
        return 128 * tokens

    def _logits(self, ctx: list[int], adapter: str | None) -> torch.Tensor:
        out = torch.zeros(self.vocab_size)
        out[next_token(ctx, adapter, self.vocab_size)] = 10.0
        return out

    def forward(self, fb) -> ForwardOutput:
        for slot, tok in zip(fb.slots.tolist(), fb.input_ids.tolist(), strict=True):
            self.kv[slot] = tok
        last, every = [], []
        for i, ctx_len in enumerate(fb.context_lens):
            a = fb.adapter_ids[i]
            if a is not None and not self.adapter_store.has(a):
                raise AdapterError(f"{a} not resident")
            table = fb.block_tables[i]
            ctx = [self.kv[table[p // BS] * BS + p % BS] for p in range(ctx_len)]
            last.append(self._logits(ctx, a))
            q = fb.query_lens[i]
            every.append(torch.stack([self._logits(ctx[:p + 1], a) for p in range(ctx_len - q, ctx_len)])
                         if fb.all_logits[i] else None)
        return ForwardOutput(torch.stack(last), every)


def reference(tokenizer, prompt: str, adapter: str | None, max_new: int) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for _ in range(max_new):
        out.append(next_token(ids + out, adapter, len(tokenizer)))
        if out[-1] == EOS:
            break
    return out


@pytest.fixture()
def service(byte_tokenizer, tmp_path):
    (tmp_path / "ad1").mkdir()
    runner = FakeRunner(len(byte_tokenizer))
    options = ShardOptions(uds_path="/tmp/x", memory=DeviceMemory(torch.device("cpu"),
                           1000 + 64 * 3000 + 128 * 64))  # weights + 3000 pages + activations
    core = ShardCore(runner, byte_tokenizer, frozenset({EOS}), AdapterManager(runner.adapter_store,
                     {"named": tmp_path}, tmp_path), options)
    svc = TextGenerationService(core)
    warm = svc.Warmup(generate_pb2.WarmupRequest(max_prefill_tokens=64), None)
    assert warm.pool.num_pages == runner.num_pages > 100
    return svc


class Pager:
    """Hands out consecutive blocks like a router would."""

    def __init__(self) -> None:
        self.next = 1

    def request(self, rid: int, prompt: str, max_new: int, adapter: str | None = None, **kw):
        nblocks = -(-(len(prompt.encode()) + max_new) // BS)
        blocks = list(range(self.next, self.next + nblocks))
        self.next += nblocks
        r = generate_pb2.Request(id=rid, inputs=prompt, blocks=blocks, **kw)
        r.stopping_parameters.max_new_tokens = max_new
        if adapter:
            r.adapter_id = adapter
        return r


def collect(gens, out: dict[int, list[int]], done: dict[int, object]) -> None:
    for g in gens:
        out.setdefault(g.request_id, []).extend(g.tokens.ids)
        if g.HasField("generated_text"):
            done[g.request_id] = g.generated_text


def test_prefill_decode_concat_filter_match_reference(service, byte_tokenizer):
    pg, out, done = Pager(), {}, {}
    specs = {1: ("hello world", None, 6), 2: ("the quick", "ad1", 9), 3: ("fox", "named", 3),
             4: ("lazy dog", None, 8), 5: ("stop here", "ad1", 7)}

    def req(i: int) -> generate_pb2.Request:
        return pg.request(i, specs[i][0], specs[i][2], specs[i][1])

    a = generate_pb2.Batch(id=10, requests=[req(i) for i in (1, 2, 3)])
    ra = service.Prefill(generate_pb2.PrefillRequest(batch=a), None)
    collect(ra.generations, out, done)
    assert ra.headroom.adapter_pages_used == 4 and ra.headroom.kv_pages_used > 1
    b = generate_pb2.Batch(id=11, requests=[req(i) for i in (4, 5)])
    rb = service.Prefill(generate_pb2.PrefillRequest(batch=b), None)
    collect(rb.generations, out, done)
    r = service.Decode(generate_pb2.DecodeRequest(batches=[ra.batch, rb.batch]), None)
    assert r.HasField("concat_ns") and list(r.batch.request_ids) == [1, 2, 3, 4, 5]
    collect(r.generations, out, done)
    kept = [i for i in r.batch.request_ids if i != 4]
    f = service.FilterBatch(generate_pb2.FilterBatchRequest(batch_id=r.batch.id, request_ids=kept), None)
    assert list(f.batch.request_ids) == kept
    batch = f.batch
    while batch.request_ids:
        r = service.Decode(generate_pb2.DecodeRequest(batches=[batch]), None)
        collect(r.generations, out, done)
        batch = r.batch if r.HasField("batch") else generate_pb2.CachedBatch()
    for i in (1, 2, 3, 5):
        assert out[i] == reference(byte_tokenizer, *specs[i]), i
        assert done[i].generated_tokens == len(out[i])
    assert out[4] == reference(byte_tokenizer, *specs[4])[:2] and 4 not in done


def test_prefill_onto_cached_batch(service, byte_tokenizer):
    pg, out, done = Pager(), {}, {}
    first = service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(
        id=1, requests=[pg.request(1, "hello world", 5)])), None)
    collect(first.generations, out, done)
    second = service.Prefill(generate_pb2.PrefillRequest(
        batch=generate_pb2.Batch(id=2, requests=[pg.request(2, "the lazy dog", 4)]),
        cached_batch=first.batch), None)
    collect(second.generations, out, done)
    assert sorted(second.batch.request_ids) == [1, 2] and len(out[1]) == 2
    batch = second.batch
    while batch.request_ids:
        r = service.Decode(generate_pb2.DecodeRequest(batches=[batch]), None)
        collect(r.generations, out, done)
        batch = r.batch if r.HasField("batch") else generate_pb2.CachedBatch()
    assert out[1] == reference(byte_tokenizer, "hello world", None, 5)
    assert out[2] == reference(byte_tokenizer, "the lazy dog", None, 4)


def test_prefill_logprobs_and_top_tokens(service, byte_tokenizer):
    r = Pager().request(7, "hello world", 1, prefill_logprobs=True, top_n_tokens=3)
    g = service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(id=3, requests=[r])), None)
    gen = g.generations[0]
    prompt = byte_tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert list(gen.prefill_tokens.ids) == prompt and len(gen.prefill_tokens.logprobs) == len(prompt)
    assert len(gen.top_tokens) == 1 and gen.top_tokens[0].ids[0] == gen.tokens.ids[0]
    assert gen.generated_text.finish_reason == generate_pb2.FINISH_REASON_LENGTH
    assert not g.HasField("batch")


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.ClearField("blocks"), "no KV blocks"),
    (lambda r: setattr(r, "inputs", "x" * 200), "too long"),
    (lambda r: setattr(r, "adapter_id", "nope"), "unknown adapter"),
    (lambda r: setattr(r, "adapter_id", "../etc"), "plain name"),
    (lambda r: setattr(r.stopping_parameters.chameleon, "min_new_tokens", 4), r"min_new_tokens \(4\)"),
    (lambda r: setattr(r.parameters.chameleon, "length_penalty_decay", float("nan")), "decay"),
])
def test_bad_request_is_refused_alone_and_its_batch_mate_runs(service, byte_tokenizer, mutate, match):
    pg = Pager()
    bad = pg.request(1, "hello", 3)
    mutate(bad)
    batch = generate_pb2.Batch(id=1, requests=[bad, pg.request(2, "hello", 1)])
    reply = service.Prefill(generate_pb2.PrefillRequest(batch=batch), None)
    assert [r.request_id for r in reply.rejected] == [1]
    assert re.search(match, reply.rejected[0].reason)
    assert [g.request_id for g in reply.generations] == [2]
    assert list(reply.generations[0].tokens.ids) == reference(byte_tokenizer, "hello", None, 1)
    alone = service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(id=3, requests=[bad])), None)
    assert [r.request_id for r in alone.rejected] == [1] and not alone.generations
    assert not alone.HasField("batch")
    good = service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(
        id=2, requests=[pg.request(4, "hello", 1)])), None)
    assert list(good.generations[0].tokens.ids) == reference(byte_tokenizer, "hello", None, 1)


def test_nan_sampling_parameters_are_refused_per_request(service, byte_tokenizer):
    pg = Pager()
    bad = pg.request(1, "hello", 3)
    bad.parameters.do_sample, bad.parameters.temperature = True, float("nan")
    batch = generate_pb2.Batch(id=8, requests=[pg.request(2, "hello", 2), bad])
    reply = service.Prefill(generate_pb2.PrefillRequest(batch=batch), None)
    assert [r.request_id for r in reply.rejected] == [1] and "temperature" in reply.rejected[0].reason
    assert list(reply.batch.request_ids) == [2]


def test_decode_of_unknown_batch_is_an_error(service):
    with pytest.raises(ValueError, match="not in the shard's cache"):
        service.Decode(generate_pb2.DecodeRequest(batches=[generate_pb2.CachedBatch(id=99)]), None)


def test_chunked_prefill_continues_on_the_next_step(service, byte_tokenizer):
    pg, out, done = Pager(), {}, {}
    prompt = "the quick brown fox"
    n = len(byte_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    chunked = pg.request(1, prompt, 4, chunk_len=3)
    whole = pg.request(2, "hello world", 4)
    batch = generate_pb2.Batch(id=5, requests=[chunked, whole])
    r = service.Prefill(generate_pb2.PrefillRequest(batch=batch), None)
    collect(r.generations, out, done)
    assert 1 not in out and len(out[2]) == 1 and r.batch.current_tokens == (n - 3) + 1
    batch = r.batch
    while batch.request_ids:
        r = service.Decode(generate_pb2.DecodeRequest(batches=[batch]), None)
        collect(r.generations, out, done)
        batch = r.batch if r.HasField("batch") else generate_pb2.CachedBatch()
    assert out[1] == reference(byte_tokenizer, prompt, None, 4)
    assert out[2] == reference(byte_tokenizer, "hello world", None, 4)


def test_clear_cache_and_filter_to_nothing(service):
    pg = Pager()
    r = service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(
        id=6, requests=[pg.request(1, "hello", 5), pg.request(2, "world", 5)])), None)
    f = service.FilterBatch(generate_pb2.FilterBatchRequest(batch_id=6, request_ids=[]), None)
    assert f.batch.size == 0 and 6 not in service.core.cache
    service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(
        id=7, requests=[pg.request(3, "again", 5)])), None)
    service.ClearCache(generate_pb2.ClearCacheRequest(id=7), None)
    assert 7 not in service.core.cache and r.headroom.kv_pages_used > 1
    with pytest.raises(ValueError, match="not in the shard's cache"):
        service.Decode(generate_pb2.DecodeRequest(batches=[generate_pb2.CachedBatch(id=7)]), None)


def test_router_pages_holding_kv_are_refused(service):
    from chameleon_pb import chameleon_pb2

    from shard.server.adapter_service import AdapterService

    adapters, pg = AdapterService(service.core), Pager()
    r = pg.request(1, "hello world", 5)
    service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(id=1, requests=[r])), None)
    with pytest.raises(ValueError, match="KV blocks"):
        adapters.LoadAdapter(chameleon_pb2.LoadAdapterRequest(adapter_id="ad1", pages=[r.blocks[0]]), None)
    free = service.core.runner.num_pages // 2
    loaded = adapters.LoadAdapter(chameleon_pb2.LoadAdapterRequest(adapter_id="ad1", pages=[free]), None)
    assert loaded.adapter.pages == 1 and loaded.headroom.adapter_pages_used >= 1
    service.Prefill(generate_pb2.PrefillRequest(batch=generate_pb2.Batch(
        id=2, requests=[pg.request(2, "x", 2, "ad1")])), None)
    with pytest.raises(ValueError, match="used by a running batch"):
        adapters.OffloadAdapter(chameleon_pb2.OffloadAdapterRequest(adapter_id="ad1"), None)
