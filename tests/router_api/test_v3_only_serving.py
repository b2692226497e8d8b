"""End to end on real processes (tiny model): `chameleon router` over a shard that speaks only TGI
generate.v3 (`chameleon shard --protocol generate.v3`, as an unmodified TGI text-generation-server).

The router starts in v3-only mode and says so (/info, its log); requests with and without an adapter
answer with the same greedy text as a normal (chameleon.v1) system; an adapter the router does not know
gets a 4xx, one the shard refuses fails only its own request; a restarted shard is re-warmed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from chameleon_pb import chameleon_pb2, chameleon_pb2_grpc

from tests.procs import RouterProc, ShardProc, free_port, make_adapter_dir, workdir
from tests.router_api.real import http_generate, metric, wait_for

pytestmark = pytest.mark.slow

CASES = [("the quick brown fox", "a01"), ("the quick brown fox", None), ("serving many adapters", "a02")]
V3 = ("--protocol", "generate.v3")
ADAPTER_PAGES = 'chameleon_pool_pages{tenant="adapter"}'


@contextmanager
def _system(model: Path, shard_dir: Path, router_dir: Path, wd: Path, *shard_flags: str,
            ) -> Iterator[tuple[ShardProc, RouterProc]]:
    """A shard that finds adapters under `shard_dir`, a router that validates against `router_dir`."""
    wd.mkdir()
    shard = ShardProc(model, shard_dir, wd, *shard_flags)
    router = None
    try:
        shard.wait_ready()
        router = RouterProc(shard, model, router_dir, wd, free_port(), free_port())
        router.wait_healthy()
        yield shard, router
    finally:
        if router is not None:
            router.stop()
        shard.stop()


def _texts(router: RouterProc) -> list[str]:
    return [http_generate(router, text, adapter, 12)["generated_text"] for text, adapter in CASES]


def _post(router: RouterProc, adapter: str) -> requests.Response:
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 4, "adapter_id": adapter}}
    return requests.post(router.http + "/generate", json=body, timeout=60)


def _info(router: RouterProc) -> dict[str, Any]:
    return requests.get(router.http + "/info", timeout=10).json()


def _health(router: RouterProc) -> int:
    return requests.get(router.http + "/health", timeout=30).status_code


def _list_adapters_code(shard: ShardProc) -> grpc.StatusCode:
    with grpc.insecure_channel(f"unix://{shard.uds}") as channel:
        try:
            chameleon_pb2_grpc.AdapterServiceStub(channel).ListAdapters(chameleon_pb2.ListAdaptersRequest(),
                                                                        timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def setup(tiny_assets: Path) -> Iterator[dict[str, Any]]:
    wd = workdir()
    shard_dir, router_dir = wd / "adapters", wd / "router-adapters"
    make_adapter_dir(tiny_assets / "adapters", shard_dir, 3)
    make_adapter_dir(tiny_assets / "adapters", router_dir, 4)  # a03: only the router sees it
    try:
        yield {"model": tiny_assets / "model", "wd": wd, "shard_dir": shard_dir, "router_dir": router_dir}
    finally:
        shutil.rmtree(wd, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(setup: dict[str, Any]) -> list[str]:
    """CASES through a normal system: a chameleon.v1 shard under the router's adapter cache."""
    with _system(setup["model"], setup["shard_dir"], setup["shard_dir"], setup["wd"] / "v1") as (shard, ref):
        assert _list_adapters_code(shard) == grpc.StatusCode.OK
        info = _info(ref)
        assert info["shard_protocol"] == "chameleon.v1" and info["warnings"] == []
        assert info["memory_headroom"] == "0.05 of total"  # --memory-headroom default
        texts = _texts(ref)
        assert metric(ref, ADAPTER_PAGES) > 0  # the adapters sit in router-assigned pages
    assert texts[0] != texts[1]  # the adapter changes the output: the comparison below sees it
    return texts


@pytest.fixture(scope="module")
def v3(setup: dict[str, Any]) -> Iterator[tuple[ShardProc, RouterProc]]:
    with _system(setup["model"], setup["shard_dir"], setup["router_dir"], setup["wd"] / "v3", *V3) as system:
        yield system


def test_v3_only_shard_serves_like_a_chameleon_system(reference: list[str],
                                                       v3: tuple[ShardProc, RouterProc]) -> None:
    shard, router = v3
    assert _list_adapters_code(shard) == grpc.StatusCode.UNIMPLEMENTED
    info = _info(router)
    assert info["shard_protocol"] == "generate.v3"
    assert len(info["warnings"]) == 1 and "only TGI generate.v3" in info["warnings"][0]
    assert "only TGI generate.v3" in router.tail()  # logged at start
    assert _texts(router) == reference
    assert metric(router, ADAPTER_PAGES) == 0  # adapters cost the router no pool pages
    assert metric(router, "chameleon_adapter_offloads_total") == 0
    assert metric(router, "chameleon_adapter_loads_total") == 2  # a01, a02: one first-use probe each


def test_adapter_errors_fail_only_their_request(reference: list[str],
                                                v3: tuple[ShardProc, RouterProc]) -> None:
    _, router = v3
    unknown = _post(router, "no-such-adapter")
    assert unknown.status_code == 422, unknown.text
    assert "unknown adapter 'no-such-adapter'" in unknown.json()["error"]
    refused = _post(router, "a03")  # under the router's --adapter-dir, not the shard's
    assert refused.status_code == 422, refused.text
    assert "adapter 'a03' cannot be loaded" in refused.json()["error"]
    assert _health(router) == 200
    assert _texts(router) == reference


def test_restarted_v3_shard_is_warmed_again(setup: dict[str, Any], reference: list[str],
                                            v3: tuple[ShardProc, RouterProc]) -> None:
    shard, router = v3
    shard.stop()
    wait_for(lambda: _health(router) == 503, "the router notices the dead shard")
    Path(shard.uds).unlink(missing_ok=True)
    again = ShardProc(setup["model"], setup["shard_dir"], setup["wd"] / "v3", *V3)
    try:
        again.wait_ready()
        wait_for(lambda: _health(router) == 200, "the router re-warms the restarted shard", timeout_s=120)
        assert _texts(router) == reference
    finally:
        again.stop()
