"""Pure parts of the engine: event conversion and squash replay, the adapter registry, warmup sizing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chameleon_pb import chameleon_pb2, generate_pb2

from chameleon.core.adapter_files import valid_adapter_id
from chameleon.core.memory import ModelShape, adapter_pages
from chameleon.core.request import Request
from router.engine.adapter_registry import AdapterNotFound, AdapterRegistry
from router.engine.batches import prefill_batch
from router.engine.config import EngineConfig
from router.engine.live import Live
from router.engine.startup import StartupError, _facts, warmup_request
from router.engine.types import FinalEvent, GenerateParams, GenerateRequest, PrefillEvent, TokenEvent
from tests.adapter_folders import lora_tensors, write_peft

SHAPE = ModelShape(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2,
                   head_dim=16, vocab_size=100)


def _live(**params: object) -> Live:
    req = GenerateRequest(text="hi", input_ids=(1, 2, 3), params=GenerateParams(**params))  # type: ignore[arg-type]
    return Live(Request(id=7, adapter_id=None, input_tokens=3, max_new_tokens=5, arrival=1.0), req, 42, 1.0)


def _gen(tid: int, final: str | None = None, prefill: bool = False) -> generate_pb2.Generation:
    toks = generate_pb2.Tokens(ids=[tid], texts=[f"t{tid}"], logprobs=[-0.1], is_special=[False])
    g = generate_pb2.Generation(request_id=7, tokens=toks)
    if prefill:
        g.prefill_tokens.CopyFrom(generate_pb2.Tokens(ids=[1, 2, 3], texts=["a", "b", "c"],
                                                      logprobs=[0, -1, -2]))
    if final is not None:
        g.generated_text.CopyFrom(generate_pb2.GeneratedText(text=final, generated_tokens=3, finish_reason=1))
    return g


async def _drain(live: Live) -> list:
    out = []
    while (ev := await live.stream.get()) is not None:
        out.append(ev)
    return out


def test_events_in_order_and_squash_replay_swallows_streamed_tokens() -> None:
    live = _live(prefill_logprobs=True)
    live.first_admitted = 2.0
    assert not live.on_generation(_gen(10, prefill=True), 2.5)
    assert not live.on_generation(_gen(11), 2.6)
    live.squashed()  # re-runs from scratch: the same two tokens must not reach the client again
    assert not live.on_generation(_gen(10, prefill=True), 3.0)
    assert not live.on_generation(_gen(11), 3.1)
    assert live.on_generation(_gen(12, final="t10t11t12"), 3.2)
    events = asyncio.run(_drain(live))
    assert isinstance(events[0], PrefillEvent) and [t.id for t in events[0].tokens] == [1, 2, 3]
    assert [e.id for e in events if isinstance(e, TokenEvent)] == [10, 11, 12]
    final = events[-1]
    assert isinstance(final, FinalEvent) and final.finish_reason == "eos_token"
    assert final.queue_s == pytest.approx(1.0) and final.inference_s == pytest.approx(1.2)
    assert not live.diverged


def test_prefill_batch_reserves_every_slot_of_its_blocks() -> None:
    live = _live(max_new_tokens=5)
    batch = prefill_batch(3, [live], [[4, 9]], block_size=4)
    r = batch.requests[0]
    assert list(r.blocks) == [4, 9] and list(r.slots) == [16, 17, 18, 19, 36, 37, 38, 39]
    assert r.truncate == 3 and r.parameters.seed == 42 and not r.HasField("adapter_id")
    assert not r.parameters.HasField("chameleon") and not r.stopping_parameters.HasField("chameleon")


def test_prefill_batch_carries_tgis_extras_past_plain_v3() -> None:
    live = _live(max_new_tokens=5, min_new_tokens=3, length_penalty=(2, 1.5))
    r = prefill_batch(3, [live], [[4]], block_size=4).requests[0]
    assert r.stopping_parameters.chameleon.min_new_tokens == 3
    extras = r.parameters.chameleon
    assert (extras.length_penalty_start, extras.length_penalty_decay) == (2, 1.5)
    assert r.parameters.DESCRIPTOR.fields_by_name["chameleon"].number >= 100
    assert r.stopping_parameters.DESCRIPTOR.fields_by_name["chameleon"].number >= 100


def _adapter(folder: Path, r: int, config_targets: list[str] | str, file_targets: list[str]) -> None:
    write_peft(folder, r, lora_tensors(SHAPE, r, file_targets), {"target_modules": config_targets})


def test_registry_sizes_adapters_and_discovers_late_folders(tmp_path: Path) -> None:
    _adapter(tmp_path / "listed", 8, ["q_proj", "v_proj"], ["q_proj", "v_proj"])
    _adapter(tmp_path / "pattern", 16, ".*proj", ["q_proj", "down_proj"])
    # the config names more modules than the file holds: the tensors decide, as on the shard
    _adapter(tmp_path / "over", 8, ["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "v_proj"])
    reg = AdapterRegistry(SHAPE, 4, 16, 2, tmp_path)
    assert reg.scan() == ["listed", "over", "pattern"]
    listed = reg.get("listed")
    assert listed.target_modules == ("q_proj", "v_proj") and listed.alpha == 16.0
    assert listed.pages == adapter_pages(SHAPE, 8, ("q_proj", "v_proj"), 4, 16, 2)
    assert reg.get("pattern").target_modules == ("q_proj", "down_proj")
    assert reg.get("over").target_modules == ("q_proj", "v_proj") and reg.get("over").pages == listed.pages
    _adapter(tmp_path / "late", 4, ["o_proj"], ["o_proj"])
    assert reg.known("late") and reg.get("late").rank == 4
    for bad in ("../etc", "missing", ".hidden"):
        assert not reg.known(bad)
    with pytest.raises(AdapterNotFound):
        reg.get("missing")


def test_registry_knows_a_folder_whose_files_are_corrupt(tmp_path: Path) -> None:
    """A corrupt adapter folder is known but unusable (ValueError from get), never 'unknown': the
    router's validation then fails it with 'cannot be loaded', as when the shard refuses the files."""
    _adapter(tmp_path / "c0", 8, ".*proj", ["q_proj", "down_proj"])
    reg = AdapterRegistry(SHAPE, 4, 16, 2, tmp_path)
    assert reg.scan() == ["c0"]
    weights = tmp_path / "c0" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:8] + b"\x00garbage" * 64)
    assert reg.forget_folder("c0")  # as after the shard refused it: re-read on next use
    assert reg.known("c0")
    with pytest.raises(ValueError, match="corrupt"):
        reg.get("c0")
    assert not reg.known("gone")
    assert not valid_adapter_id("a/b") and valid_adapter_id("r8-00")


def test_registry_scan_skips_a_folder_it_cannot_use(tmp_path: Path) -> None:
    """At start-up a folder the shard would refuse does not stop the router: it is known, and using it
    fails with the reason."""
    _adapter(tmp_path / "good", 8, ["q_proj"], ["q_proj"])
    _adapter(tmp_path / "half", 8, ["q_proj"], [])  # no LoRA weights at all
    reg = AdapterRegistry(SHAPE, 4, 16, 1, tmp_path)
    assert reg.scan() == ["good", "half"]
    assert [m.adapter_id for m in reg.all()] == ["good"]
    assert reg.known("half")
    with pytest.raises(ValueError, match="no LoRA weights"):
        reg.get("half")


def test_warmup_batch_and_sizing() -> None:
    req = warmup_request(None, 100, None, None)
    assert sum(r.truncate for r in req.batch.requests) == 100 and not req.HasField("max_input_tokens")
    cfg = EngineConfig(master_shard_uds_path="/x", model_dir=Path("/m"), max_total_tokens=10_000)
    info = generate_pb2.InfoResponse(dtype="float32", block_size=16)
    warm = generate_pb2.WarmupResponse(max_supported_total_tokens=1600, max_input_tokens=100,
                                       max_total_tokens=10_000,
                                       pool=chameleon_pb2.PoolLayout(num_pages=101, page_bytes=512))
    facts = _facts(cfg, info, [warm])
    assert facts.info.max_total_tokens == 1600 and facts.info.max_input_tokens == 100
    assert facts.dtype_bytes == 4
    tiny = generate_pb2.WarmupResponse(pool=chameleon_pb2.PoolLayout(num_pages=1))
    with pytest.raises(StartupError, match="memory-budget"):
        _facts(cfg, info, [tiny])
