"""The Inference Extension's series on a real router + shard of the tiny model: one request running
(adapter a00) and one queued behind it (a01, `--max-batch-size 1`) show up in different label lists."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import RouterProc, ShardProc, free_port, make_adapter_dir, workdir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def router(tiny_assets: Path) -> Iterator[RouterProc]:
    wd = workdir()
    model = tiny_assets / "model"
    adir = wd / "adapters"
    make_adapter_dir(tiny_assets / "adapters", adir, 4)
    shard = ShardProc(model, adir)
    proc = None
    try:
        shard.wait_ready()
        proc = RouterProc(shard, model, adir, wd, free_port(), free_port(), "--max-batch-size", "1",
                          "--model-id", "tiny-ie")
        proc.wait_healthy()
        yield proc
    finally:
        if proc is not None:
            proc.stop()
        shard.stop()
        shutil.rmtree(wd, ignore_errors=True)


def scrape(router: RouterProc) -> dict[str, Any]:
    text = requests.get(router.http + "/metrics", timeout=10).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def lora_labels(router: RouterProc) -> dict[str, str]:
    (sample,) = scrape(router)["vllm:lora_requests_info"]
    return sample.labels


@contextmanager
def open_stream(router: RouterProc, adapter: str, wait_first_token: bool) -> Iterator[socket.socket]:
    """A /generate_stream request held open (closed on exit: the router cancels it)."""
    host, port = router.http.removeprefix("http://").split(":")
    body = json.dumps({"inputs": f"hold {adapter}",
                       "parameters": {"max_new_tokens": 1500, "adapter_id": adapter}}).encode()
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        head = "POST /generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while wait_first_token and b"data:" not in received:
            received += sock.recv(4096)
        yield sock


def wait_for(cond: Any, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.05)


def test_idle_router_exports_the_contract(router: RouterProc):
    fams = scrape(router)
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running"):
        assert [(s.labels, s.value) for s in fams[name]] == [({"model_name": "tiny-ie"}, 0.0)]
    (usage,) = fams["vllm:kv_cache_usage_perc"]
    assert 0.0 <= usage.value <= 1.0
    labels = lora_labels(router)
    assert labels["running_lora_adapters"] == labels["waiting_lora_adapters"] == ""
    assert int(labels["max_lora"]) >= 1
    (cfg,) = fams["vllm:cache_config_info"]
    assert int(cfg.labels["num_gpu_blocks"]) > 0 and int(cfg.labels["block_size"]) > 0


def test_running_and_waiting_adapters_are_different_sets(router: RouterProc):
    with ExitStack() as stack:
        stack.enter_context(open_stream(router, "a00", wait_first_token=True))
        stack.enter_context(open_stream(router, "a01", wait_first_token=False))
        wait_for(lambda: lora_labels(router)["waiting_lora_adapters"] == "a01", "a01 queued")
        fams = scrape(router)
        (info,) = fams["vllm:lora_requests_info"]
        assert info.labels["running_lora_adapters"] == "a00"
        assert int(info.labels["max_lora"]) >= 1
        assert fams["vllm:num_requests_running"][0].value == 1
        assert fams["vllm:num_requests_waiting"][0].value == 1
        assert fams["vllm:kv_cache_usage_perc"][0].value > 0
    wait_for(lambda: scrape(router)["vllm:num_requests_running"][0].value == 0, "both streams released")
    labels = lora_labels(router)
    assert labels["running_lora_adapters"] == labels["waiting_lora_adapters"] == ""
