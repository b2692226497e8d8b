"""The real system of the end-to-end router tests: `chameleon router` on one shard, plus a second shard driven
directly (generate.v3, no router) as the reference for "the same tokens as the shard alone"; and helpers.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc
from google.protobuf import json_format
from tokenizers import Tokenizer

from chameleon.core.memory import ModelShape
from router.engine.adapter_registry import AdapterRegistry
from router.engine.config import EngineConfig
from router.engine.shard_client import ShardClient
from router.engine.startup import ShardFacts, start_shards
from tests.procs import PREFILL, RouterProc, ShardProc, free_port, make_adapter_dir, workdir

MAX_CONCURRENT = 64


@dataclass(frozen=True)
class RealSystem:
    router: RouterProc
    names: list[str]  # adapters a00..a19 under the router's --adapter-dir
    ref: ShardClient  # the reference shard, warmed up, driven directly
    facts: ShardFacts
    registry: AdapterRegistry
    tok: Tokenizer


@contextmanager
def start_system(tiny_assets: Path, aloop: asyncio.AbstractEventLoop) -> Iterator[RealSystem]:
    wd = workdir()
    model = tiny_assets / "model"
    adir = wd / "adapters"
    names = make_adapter_dir(tiny_assets / "adapters", adir, 20)
    (wd / "main").mkdir()
    (wd / "ref").mkdir()
    main, ref = ShardProc(model, adir, wd / "main"), ShardProc(model, adir, wd / "ref")
    router = None
    client = None
    try:
        main.wait_ready()
        ref.wait_ready()
        router = RouterProc(
            main, model, adir, wd, free_port(), free_port(), "--max-concurrent-requests", str(MAX_CONCURRENT)
        )
        client = aloop.run_until_complete(ShardClient.connect(ref.uds))
        cfg = EngineConfig(master_shard_uds_path=ref.uds, model_dir=model, max_batch_prefill_tokens=PREFILL)
        facts = aloop.run_until_complete(start_shards(client, cfg))
        registry = AdapterRegistry(
            ModelShape.from_model_dir(model), facts.dtype_bytes, facts.info.block_size, 1, adir,
            model_dtype=facts.info.dtype, adapter_policy=facts.adapter_dtype,
        )
        router.wait_healthy()
        yield RealSystem(
            router, names, client, facts, registry, Tokenizer.from_file(str(model / "tokenizer.json"))
        )
    finally:
        if client is not None:
            aloop.run_until_complete(client.close())
        if router is not None:
            router.stop()
        main.stop()
        ref.stop()
        shutil.rmtree(wd, ignore_errors=True)


def stub(router: RouterProc) -> pb_grpc.GenerationServiceStub:
    return pb_grpc.GenerationServiceStub(grpc.insecure_channel(router.grpc))


def params(max_new: int, min_new: int = 0, **extra: Any) -> pb.Parameters:
    """fmaas Parameters; `min_new` sets stopping.min_new_tokens as caikit-style TGIS clients do."""
    stopping = {"max_new_tokens": max_new, "min_new_tokens": min_new}
    return json_format.ParseDict({"stopping": stopping, **extra}, pb.Parameters())


def metric(router: RouterProc, sample: str) -> float:
    text = requests.get(router.http + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{sample} missing from /metrics"
    return float(m.group(1))


def wait_for(cond: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.05)


def http_generate(router: RouterProc, text: str, adapter: str | None, max_new: int) -> dict[str, Any]:
    body = {"inputs": text, "parameters": {"max_new_tokens": max_new, "details": True, "adapter_id": adapter}}
    resp = requests.post(router.http + "/generate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()
