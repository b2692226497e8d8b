"""The real system of the reliability tests: ONE tiny shard for the whole package, and a router per
module started against it (each router start re-warms the running shard, which is itself a check
of the second-Warmup fix). Helpers: the reference answer, metrics, router memory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import requests
from chameleon_pb import generation_pb2 as pb
from chameleon_pb import generation_pb2_grpc as pb_grpc

from tests.procs import RouterProc, ShardProc, child_env, free_port, make_adapter_dir, workdir

GOLDEN_TEXT = "the quick brown fox"
GOLDEN_NEW = 8
COPIED = ("c0", "c1", "c2")
# Deadline of every wait on a condition in this package (start-up, requests drained): generous, since a
# busy 2-core machine can be many times slower than an idle one; a bound against hanging, not a timing.
BUSY_S = 300.0  # adapters copied as real folders (the tests corrupt and delete them)


@dataclass(frozen=True)
class Shard:
    proc: ShardProc
    model: Path
    adapters: Path
    source: Path  # a pristine adapter folder (to restore the copies)
    wd: Path


@contextlib.contextmanager
def shard_system(tiny_assets: Path) -> Iterator[Shard]:
    wd = workdir()
    adir = wd / "adapters"
    make_adapter_dir(tiny_assets / "adapters", adir, 4)
    source = sorted(p for p in (tiny_assets / "adapters").iterdir() if p.is_dir())[0]
    for name in COPIED:
        shutil.copytree(source, adir / name)
    (wd / "shard").mkdir()
    proc = ShardProc(tiny_assets / "model", adir, wd / "shard")
    try:
        proc.wait_ready(BUSY_S)
        yield Shard(proc, tiny_assets / "model", adir, source, wd)
    finally:
        proc.stop()
        shutil.rmtree(wd, ignore_errors=True)


@contextlib.contextmanager
def router_on(shard: Shard, name: str, *flags: str, env: dict[str, str] | None = None,
              health_path: str = "/health") -> Iterator[RouterProc]:
    """A router in front of the package's shard; `env` is set for the child only."""
    shard.proc.check_alive("shard")
    folder = shard.wd / name
    folder.mkdir(exist_ok=True)
    router = RouterProc(shard.proc, shard.model, shard.adapters, folder, free_port(), free_port(), *flags,
                        env=child_env(**(env or {})))
    try:
        router.wait_healthy(BUSY_S)
        yield router
    finally:
        router.stop()


def golden_ids(router: RouterProc, headers: dict[str, str] | None = None) -> list[int]:
    """Greedy token ids of the reference request over HTTP."""
    body = {"inputs": GOLDEN_TEXT, "parameters": {"max_new_tokens": GOLDEN_NEW, "details": True}}
    resp = requests.post(router.http + "/generate", json=body, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text
    return [t["id"] for t in resp.json()["details"]["tokens"]]


def golden_request() -> pb.BatchedGenerationRequest:
    return pb.BatchedGenerationRequest(
        requests=[pb.GenerationRequest(text=GOLDEN_TEXT)],
        params=pb.Parameters(stopping=pb.StoppingCriteria(max_new_tokens=GOLDEN_NEW)),
    )


def golden_grpc_text(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    reply = pb_grpc.GenerationServiceStub(channel).Generate(golden_request(), timeout=60, metadata=metadata)
    return reply.responses[0].text


def adapter_request(router: RouterProc, adapter: str) -> requests.Response:
    body = {"inputs": "adapter check", "parameters": {"max_new_tokens": 4, "adapter_id": adapter}}
    return requests.post(router.http + "/generate", json=body, timeout=60)


def metrics_text(router: RouterProc, headers: dict[str, str] | None = None) -> str:
    return requests.get(router.http + "/metrics", headers=headers, timeout=30).text


def metric(router: RouterProc, sample: str) -> float:
    m = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", metrics_text(router), re.M)
    assert m, f"{sample} missing from /metrics"
    return float(m.group(1))


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (from /proc)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def is_error_body(body: Any) -> bool:
    """A TGI-style error: {"error": str, "error_type": str}."""
    return isinstance(body, dict) and isinstance(body.get("error"), str) and bool(body["error"]) \
        and isinstance(body.get("error_type"), str)
