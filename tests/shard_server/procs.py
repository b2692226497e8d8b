"""Start `chameleon shard` ranks as real processes on tmp unix sockets and talk to them like a router."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from chameleon_pb import chameleon_pb2_grpc, generate_pb2, generate_pb2_grpc

from tests.procs import DIST_ENV, REPO, START_S, Child, child_env, free_port, shard_argv, stop_all, wait_until


@dataclass
class Shard:
    """One rank: its process, channel and stubs."""

    child: Child
    channel: grpc.Channel
    stub: generate_pb2_grpc.TextGenerationServiceStub
    adapters: chameleon_pb2_grpc.AdapterServiceStub
    url: str

    @property
    def proc(self) -> subprocess.Popen:
        return self.child.proc

    @property
    def log(self) -> Path:
        return self.child.log


@contextmanager
def start_shards(model_dir: Path, uds: str, args: Sequence[str], world: int = 1,
                 timeout_s: float = START_S) -> Iterator[list[Shard]]:
    """Start `world` ranks; yield once every socket answers Health; stop them (SIGTERM) on exit."""
    port = free_port()
    shards: list[Shard] = []
    try:
        for rank in range(world):
            env = child_env(DIST_ENV, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port), PYTHONPATH=f"{REPO}:{REPO / 'proto'}")
            child = Child(shard_argv(model_dir, uds, *args, budget=None), Path(f"{uds}-{rank}.log"), env,
                          cwd=REPO, name=f"shard rank {rank}")
            channel = grpc.insecure_channel(f"unix://{uds}-{rank}")
            shards.append(Shard(child, channel, generate_pb2_grpc.TextGenerationServiceStub(channel),
                                chameleon_pb2_grpc.AdapterServiceStub(channel), f"unix://{uds}-{rank}"))
        deadline = time.monotonic() + timeout_s
        for s in shards:
            wait_until(lambda s=s: _healthy(s), f"{s.child.name} answers Health",
                       max(deadline - time.monotonic(), 0.0), s.child, poll_s=0.2)
        yield shards
    finally:
        stop_all([s.child for s in shards])
        for s in shards:
            s.channel.close()


def _healthy(s: Shard) -> bool:
    try:
        s.stub.Health(generate_pb2.HealthRequest(), timeout=2)
    except grpc.RpcError:
        return False
    return True


@dataclass
class Router:
    """A minimal router: sends each RPC to every rank, merges generations, hands out KV blocks."""

    shards: list[Shard]
    block_size: int = 16
    next_page: int = 1
    kv_pages: int = 0
    generations: dict[int, list] = field(default_factory=dict)

    def call(self, method: str, request: object) -> list:
        futures = [getattr(s.stub, method).future(request, timeout=120) for s in self.shards]
        return [f.result() for f in futures]

    def warmup(self, max_prefill: int = 256) -> generate_pb2.WarmupResponse:
        reply = self.call("Warmup", generate_pb2.WarmupRequest(max_prefill_tokens=max_prefill))[0]
        self.kv_pages = reply.max_supported_total_tokens // self.block_size
        return reply

    def blocks(self, n_tokens: int) -> list[int]:
        need = -(-n_tokens // self.block_size)
        if self.next_page + need > self.kv_pages:
            self.next_page = 1  # tests never hold more than the pool at once
        out = list(range(self.next_page, self.next_page + need))
        self.next_page += need
        return out

    def step(self, method: str, request: object) -> generate_pb2.CachedBatch | None:
        replies = self.call(method, request)
        for r in replies:
            for g in r.generations:
                self.generations.setdefault(g.request_id, []).append(g)
        return replies[0].batch if replies[0].HasField("batch") else None

    def run(self, batch: generate_pb2.CachedBatch | None) -> None:
        while batch is not None:
            batch = self.step("Decode", generate_pb2.DecodeRequest(batches=[batch]))

    def generate(self, batch_id: int, requests: list) -> None:
        """Prefill one batch and decode it to the end."""
        self.run(self.step("Prefill", generate_pb2.PrefillRequest(
            batch=generate_pb2.Batch(id=batch_id, requests=requests, size=len(requests)))))

    def tokens(self, rid: int) -> list[int]:
        return [t for g in self.generations[rid] for t in g.tokens.ids]

    def final(self, rid: int) -> generate_pb2.GeneratedText:
        return self.generations[rid][-1].generated_text


def request(rid: int, prompt: str, max_new: int, blocks: list[int], adapter: str | None = None,
            **params: object) -> generate_pb2.Request:
    r = generate_pb2.Request(id=rid, inputs=prompt, blocks=blocks, add_special_tokens=True)
    r.stopping_parameters.max_new_tokens = max_new
    for k, v in params.items():
        if k == "stop":
            r.stopping_parameters.stop_sequences.extend(v)
        elif k == "ignore_eos":
            r.stopping_parameters.ignore_eos_token = bool(v)
        else:
            setattr(r.parameters, k, v)
    if adapter:
        r.adapter_id = adapter
    return r
