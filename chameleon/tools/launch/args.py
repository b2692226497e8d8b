"""`chameleon launch` flags. Every flag also reads its upper-case environment variable (TGI style).

Flags fall in three groups: the launcher's own (model, ranks, sockets, timeouts), flags forwarded to
the router, and flags forwarded to every shard rank. Forwarded flags whose value is unset here are not
passed at all, so the child's own default (or its own environment variable) applies.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chameleon.core.memory import ADAPTER_DTYPE_POLICIES
from chameleon.tools.cliargs import EnvArgumentParser
from chameleon.tools.mlqargs import MLQ_FLAGS

SCHEDULERS = ("chameleon", "fifo", "sjf")
ADAPTER_CACHES = ("chameleon", "lru", "fairshare", "none")


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A flag the launcher accepts and hands on to a child process unchanged."""

    flag: str
    to: str  # "router", "shard" or "both"
    kind: type | None = str  # None = boolean switch
    choices: tuple[str, ...] | None = None
    help: str = ""

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


FORWARDED: tuple[Forwarded, ...] = (
    Forwarded("--lora-adapters", "shard", help="adapters to preload on every rank: name=path,..."),
    Forwarded("--memory-budget", "shard", int, help="bytes of device memory a rank may use"),
    Forwarded("--dtype", "shard", choices=("auto", "float32", "bfloat16", "float16"),
              help="weight and KV dtype ('auto': bfloat16 on CUDA, float32 on CPU)"),
    Forwarded("--adapter-dtype", "shard", choices=ADAPTER_DTYPE_POLICIES,
              help="LoRA adapters in the pool: 'auto' keeps bf16/fp16 files in 16 bits on a float32 CPU "
              "shard with one rank (lossless), 'model' converts them to the model dtype"),
    Forwarded("--kernel-backend", "shard", choices=("auto", "torch", "cpu-kernels", "triton"),
              help="kernels that run the model: 'auto' = Triton on CUDA, the C kernels on CPU"),
    Forwarded("--cuda-graph-max-batch", "shard", int,
              help="decode CUDA graphs for batches up to this size (0: off)"),
    Forwarded("--hostname", "router", help="address the router's HTTP and gRPC servers bind"),
    Forwarded("--max-concurrent-requests", "router", int, help="requests in flight before 'overloaded'"),
    Forwarded("--max-input-tokens", "router", int,
              help="longest prompt accepted; default: max-total-tokens - 1 (at most the prefill budget)"),
    Forwarded("--max-total-tokens", "router", int, help="longest prompt + generation accepted; default: "
              "config.json's max_position_embeddings, at most 4096 (TGI's rule)"),
    Forwarded("--max-batch-prefill-tokens", "router", int,
              help="prompt tokens in one prefill batch; default: max-input-tokens + 50"),
    Forwarded("--scheduler", "router", choices=SCHEDULERS, help="request scheduler"),
    Forwarded("--adapter-cache", "router", choices=ADAPTER_CACHES, help="adapter cache policy"),
    Forwarded("--json-output", "both", None, help="one JSON object per log line (all processes)"),
    Forwarded("--tls-cert", "router", help="PEM certificate chain: the router serves gRPC over TLS"),
    Forwarded("--tls-key", "router", help="PEM private key of --tls-cert"),
    Forwarded("--tls-client-ca", "router", help="PEM CA: the router's gRPC requires client certificates"),
    Forwarded("--memory-headroom", "router", str,
              help="BYTES|FRACTION: free memory each rank keeps for co-tenants (measured); below it the "
              "adapter cache shrinks and the shards release pool memory (router's default: 0.05 of total)"),
    # the MLQ scheduler's settings (chameleon.tools.mlqargs), handed to the router as given
    *(Forwarded(f.flag, "router", f.kind, f.choices, f.help) for f in MLQ_FLAGS),
)


class HiddenValue:
    """A flag value that prints as `***` (help defaults, reprs): the API key."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class LaunchArgs:
    """Everything `chameleon launch` was asked for, after command line + environment."""

    model_id: Path | None
    adapter_dir: Path | None
    demo_dir: Path
    num_shard: int
    shard_uds_path: str
    master_addr: str
    master_port: int | None
    port: int
    grpc_port: int
    json_output: bool
    startup_timeout: float
    drain_timeout: float
    stop_timeout: float
    max_restarts: int
    shards_only: bool
    router_flags: tuple[str, ...]
    shard_flags: tuple[str, ...]
    # Extra environment of the router process: secrets go there, never on a command line (ps).
    router_env: tuple[tuple[str, str], ...] = ()


def default_num_shard(environ: Mapping[str, str]) -> int:
    """One rank per visible CUDA device when CUDA_VISIBLE_DEVICES is set (as TGI does), else 1."""
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return max(1, len(visible))


def default_demo_dir(environ: Mapping[str, str]) -> Path:
    """Where `chameleon demo-assets` caches the default demo build (shared with the test suite)."""
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "chameleon" / "assets" / "smollm2-seed0"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser(environ: Mapping[str, str]) -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon launch", description=(
        "Start the shard ranks and the router, and supervise them: a dead shard group is restarted "
        "and the router reconnects; SIGINT/SIGTERM drain in-flight requests before stopping."))
    p.add_argument("--model-id", type=Path, default=None,
                   help="local Hugging Face model folder; none = the demo model (built on first use)")
    p.add_argument("--adapter-dir", type=Path, default=None,
                   help="folder of PEFT adapters, each served under its folder name (router + shards); "
                   "with the demo model, its 100 adapters")
    p.add_argument("--demo-dir", type=Path, default=default_demo_dir(environ),
                   help="where the demo model and adapters live (built here when missing)")
    p.add_argument("--num-shard", type=_positive, default=default_num_shard(environ),
                   help="tensor-parallel ranks")
    p.add_argument("--shard-uds-path", default="/tmp/chameleon-server",
                   help="socket prefix: rank R listens on PATH-R")
    p.add_argument("--master-addr", default="127.0.0.1", help="torch.distributed rendezvous address")
    p.add_argument("--master-port", type=int, default=None,
                   help="torch.distributed rendezvous port (default: a free port per shard-group start)")
    p.add_argument("--port", type=int, default=3000, help="router HTTP port (TGI + OpenAI routes)")
    p.add_argument("--grpc-port", type=int, default=8033, help="router gRPC port (fmaas + admin)")
    _add_child_flags(p)
    _add_timeouts(p)
    return p


def _add_child_flags(p: EnvArgumentParser) -> None:
    """Flags handed on to the router or the shards (FORWARDED, secrets, free-form extras)."""
    for fwd in FORWARDED:
        if fwd.kind is None:
            p.add_argument(fwd.flag, action="store_true", help=f"{fwd.help} (to {fwd.to})")
        else:
            p.add_argument(fwd.flag, type=fwd.kind, choices=fwd.choices, default=None,
                           help=f"{fwd.help} (to {fwd.to})")
    p.add_argument("--shards-only", action="store_true",
                   help="supervise the shard group only, no router (the router runs elsewhere, e.g. in "
                   "its own container)")
    p.add_argument("--api-key", type=HiddenValue, default=None,
                   help="key the router requires on both APIs (handed over in its environment as API_KEY, "
                   "never on its command line); prefer setting API_KEY yourself")
    p.add_argument("--router-args", default="", help="extra router flags, one shell-quoted string")
    p.add_argument("--shard-args", default="", help="extra shard flags, one shell-quoted string")


def _add_timeouts(p: EnvArgumentParser) -> None:
    p.add_argument("--startup-timeout", type=float, default=600.0,
                   help="seconds a shard group or the router may take to start listening")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds the router may take to finish in-flight requests on shutdown (passed to it)")
    p.add_argument("--stop-timeout", type=float, default=10.0,
                   help="seconds a process gets after SIGTERM before SIGKILL")
    p.add_argument("--max-restarts", type=int, default=10,
                   help="shard-group restarts before the launcher gives up")


def _forwarded_flags(ns: argparse.Namespace, target: str) -> tuple[str, ...]:
    out: list[str] = []
    for fwd in FORWARDED:
        if fwd.to not in (target, "both"):
            continue
        value = getattr(ns, fwd.dest)
        if fwd.kind is None:
            out += [fwd.flag] if value else []
        elif value is not None:
            out += [fwd.flag, str(value)]
    return tuple(out)


def parse_args(argv: Sequence[str]) -> LaunchArgs:
    """Parse the command line (+ environment, read now). Bad values exit with a usage error."""
    parser = build_parser(os.environ)
    ns = parser.parse_args(list(argv))
    if ns.model_id is not None and not (ns.model_id / "config.json").is_file():
        parser.error(f"--model-id {ns.model_id}: no config.json there; give a local Hugging Face "
                     "model folder, or leave it out to serve the demo model")
    if ns.adapter_dir is not None and not ns.adapter_dir.is_dir():
        parser.error(f"--adapter-dir {ns.adapter_dir}: not a folder")
    for name, value in (("--router-args", ns.router_args), ("--shard-args", ns.shard_args)):
        try:
            shlex.split(value)
        except ValueError as exc:
            parser.error(f"{name} {value!r}: {exc}")
    return LaunchArgs(
        model_id=ns.model_id, adapter_dir=ns.adapter_dir, demo_dir=ns.demo_dir, num_shard=ns.num_shard,
        shard_uds_path=ns.shard_uds_path, master_addr=ns.master_addr, master_port=ns.master_port,
        port=ns.port, grpc_port=ns.grpc_port, json_output=ns.json_output,
        startup_timeout=ns.startup_timeout, drain_timeout=ns.drain_timeout, stop_timeout=ns.stop_timeout,
        max_restarts=ns.max_restarts, shards_only=ns.shards_only,
        router_flags=_forwarded_flags(ns, "router") + tuple(shlex.split(ns.router_args)),
        shard_flags=_forwarded_flags(ns, "shard") + tuple(shlex.split(ns.shard_args)),
        router_env=(("API_KEY", ns.api_key.value),) if ns.api_key is not None else (),
    )
