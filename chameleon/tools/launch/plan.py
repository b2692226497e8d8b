"""What the launcher starts: the shard ranks and the router, as command lines + environments.

Shard rank R runs `chameleon shard MODEL --uds-path PREFIX` with RANK=R, WORLD_SIZE=N, MASTER_ADDR,
MASTER_PORT (as torchrun sets them) and listens on `PREFIX-R`; the router is pointed at `PREFIX-0`
and discovers the other ranks through ServiceDiscovery.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chameleon.tools.launch.args import LaunchArgs
from chameleon.tools.launch.procs import LaunchError, ProcSpec

log = logging.getLogger("chameleon.tools.launch")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (for the torch.distributed rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def chameleon_command(sub: str) -> tuple[str, ...]:
    """`chameleon SUB` run by this very interpreter, so children use the launcher's installation."""
    return (sys.executable, "-m", "chameleon", sub)


def connect_host(hostname: str | None) -> str:
    """Where to reach a server bound to `hostname` from this machine."""
    if not hostname or hostname == "0.0.0.0":
        return "127.0.0.1"
    return "::1" if hostname == "::" else hostname


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """The resolved processes. `shards(port)` gives a fresh group for each (re)start: the rendezvous
    port may change between starts, everything else stays the same."""

    shards: Callable[[int], tuple[ProcSpec, ...]]
    router: ProcSpec | None  # None = shards only
    master_port: int | None  # None = pick a free port at each shard-group start

    def shard_group(self) -> tuple[ProcSpec, ...]:
        return self.shards(self.master_port if self.master_port is not None else free_port())


def _router_hostname(flags: tuple[str, ...]) -> str | None:
    return flags[flags.index("--hostname") + 1] if "--hostname" in flags[:-1] else None


def build_plan(args: LaunchArgs, model_dir: Path, adapter_dir: Path | None) -> LaunchPlan:
    prefix = args.shard_uds_path
    adapters = ("--adapter-dir", str(adapter_dir)) if adapter_dir is not None else ()

    def shards(master_port: int) -> tuple[ProcSpec, ...]:
        return tuple(
            ProcSpec(
                name=f"shard-{rank}",
                argv=(*chameleon_command("shard"), str(model_dir), "--uds-path", prefix, *adapters,
                      *args.shard_flags),
                env={"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(args.num_shard),
                     "MASTER_ADDR": args.master_addr, "MASTER_PORT": str(master_port)},
                unix_socket=f"{prefix}-{rank}")
            for rank in range(args.num_shard))

    router = ProcSpec(
        name="router",
        argv=(*chameleon_command("router"), "--master-shard-uds-path", f"{prefix}-0",
              "--tokenizer", str(model_dir), "--port", str(args.port), "--grpc-port", str(args.grpc_port),
              "--drain-timeout", f"{args.drain_timeout:g}", *adapters, *args.router_flags),
        env=dict(args.router_env),
        tcp=(connect_host(_router_hostname(args.router_flags)), args.port))
    return LaunchPlan(shards=shards, router=None if args.shards_only else router,
                      master_port=args.master_port)


def resolve_model(args: LaunchArgs) -> tuple[Path, Path | None]:
    """(model folder, adapter folder). No --model-id: the demo assets, built on first use."""
    if args.model_id is not None:
        return args.model_id, args.adapter_dir
    demo = args.demo_dir
    if not (demo / "manifest.json").is_file():  # written last by demo-assets: absent = not complete
        log.info("no --model-id: building the demo model and adapters in %s (first use only)", demo)
        done = subprocess.run([*chameleon_command("demo-assets"), str(demo)], stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not (demo / "manifest.json").is_file():
            raise LaunchError(f"building the demo assets in {demo} failed (exit {done.returncode}); "
                               "run `chameleon demo-assets DIR` to see why, or pass --model-id")
    adapters = args.adapter_dir or (demo / "adapters" if (demo / "adapters").is_dir() else None)
    return demo / "model", adapters
