"""`chameleon serve-ray`: start (or join, with --address) a Ray cluster and deploy N Chameleon replicas
behind Ray Serve's HTTP proxy, with adapter-affinity routing (or Ray's default). Runs until SIGINT or
SIGTERM, then deletes the application and, when it started Ray itself, stops Ray.

Needs the `ray` extra: pip install "chameleon-serve[ray]".
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from chameleon.core.affinity import DEFAULT_MISS_WEIGHT, AffinityConfig
from chameleon.scale.replica_proc import GroupSpec
from chameleon.tools.cliargs import EnvArgumentParser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon serve-ray", description=__doc__)
    p.add_argument("--replicas", type=_positive, default=2, help="replicas (router + shard group each)")
    p.add_argument("--model-id", type=Path, default=None,
                   help="model folder of every replica (default: the demo model, as chameleon launch)")
    p.add_argument("--adapter-dir", type=Path, default=None, help="PEFT adapters, one folder per name")
    p.add_argument("--num-shard", type=_positive, default=1, help="tensor-parallel ranks per replica")
    p.add_argument("--address", default=None, help="join this Ray cluster (default: start a local one)")
    p.add_argument("--hostname", default="127.0.0.1", help="address Ray Serve's HTTP proxy binds")
    p.add_argument("--port", type=int, default=8000, help="Ray Serve's HTTP port (TGI + OpenAI routes)")
    p.add_argument("--routing", choices=("affinity", "default"), default="affinity",
                   help="adapter-affinity request router, or Ray Serve's default (power of two choices)")
    p.add_argument("--cpus-per-rank", type=float, default=1.0, help="Ray CPUs declared per shard rank")
    p.add_argument("--gpus-per-rank", type=float, default=0.0, help="Ray GPUs declared per shard rank")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of a local Ray cluster (default: what the replicas declare, at least 1)")
    p.add_argument("--object-store-mb", type=int, default=100, help="object store of a local Ray cluster")
    p.add_argument("--max-ongoing-requests", type=_positive, default=128,
                   help="requests in flight per replica")
    p.add_argument("--stats-period", type=float, default=1.0, help="seconds between routing-stats reports")
    p.add_argument("--load-factor", type=float, default=1.25, help="affinity load bound: x the mean load")
    p.add_argument("--load-slack", type=int, default=4, help="affinity load bound: at least mean + this")
    p.add_argument("--miss-weight", type=float, default=DEFAULT_MISS_WEIGHT,
                   help="affinity: rank by estimated TTFT, an adapter load counted this many times its "
                        "measured cost (0: resident adapter first, pure affinity within the load bound)")
    p.add_argument("--launch-args", default="",
                   help="extra `chameleon launch` flags, one shell-quoted string")
    p.add_argument("--startup-timeout", type=float, default=600.0,
                   help="seconds for a replica to get healthy")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/chameleon-ray"),
                   help="replicas' socket folders and launcher logs (short: unix socket paths)")
    return p


def config_from(args: argparse.Namespace):  # -> RayServeConfig (imported with ray)
    from chameleon.scale.ray_serve import RayServeConfig

    group = GroupSpec(model_id=str(args.model_id.resolve()) if args.model_id else None,
                      adapter_dir=str(args.adapter_dir.resolve()) if args.adapter_dir else None,
                      num_shard=args.num_shard, launch_args=tuple(shlex.split(args.launch_args)),
                      startup_timeout_s=args.startup_timeout)
    names = (args.model_id.name, str(args.model_id)) if args.model_id else ()
    return RayServeConfig(group=group, replicas=args.replicas, routing=args.routing,
                          cpus_per_rank=args.cpus_per_rank, gpus_per_rank=args.gpus_per_rank,
                          max_ongoing_requests=args.max_ongoing_requests, stats_period_s=args.stats_period,
                          load_factor=args.load_factor, load_slack=args.load_slack,
                          miss_weight=args.miss_weight, workdir=str(args.workdir), base_names=names)


def _start_ray(args: argparse.Namespace, cfg) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.address:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
        return
    declared = int(cfg.replicas * cfg.group.num_shard * cfg.cpus_per_rank + 0.999)
    ray.init(num_cpus=args.num_cpus or max(1, declared), num_gpus=None if cfg.gpus_per_rank else 0,
             include_dashboard=False, object_store_memory=args.object_store_mb << 20, log_to_driver=False)


def last_replica_error(workdir: Path) -> str:
    """The last ERROR line of the replicas' launch logs (`WORKDIR/<replica>/launch.log`) from the router or a
    rank (else the launcher's), for a deploy that failed: Ray reports only that the deployment did not
    start, the launch log says why."""
    logs = sorted(Path(workdir).glob("*/launch.log"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
        causes = [line for line in errors if "[launcher]" not in line]  # the router's or a rank's reason
        if errors:
            return f"; {log}: {(causes or errors)[-1]}"
    return f"; the replicas' logs: {workdir}/*/launch.log"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        AffinityConfig(args.load_factor, args.load_slack, args.miss_weight)
    except ValueError as exc:
        parser.error(f"--load-factor/--load-slack/--miss-weight: {exc}")
    if args.model_id is not None and not (args.model_id / "config.json").is_file():
        parser.error(f"--model-id {args.model_id}: no config.json there")
    if args.adapter_dir is not None and not args.adapter_dir.is_dir():
        parser.error(f"--adapter-dir {args.adapter_dir}: not a folder")
    try:
        import ray
        from ray import serve

        from chameleon.scale.ray_serve import build_app
    except ModuleNotFoundError as exc:
        print(f"chameleon serve-ray: {exc.name} is missing; install the extra: "
              "pip install 'chameleon-serve[ray]'", file=sys.stderr)
        return 2
    cfg = config_from(args)
    stop = threading.Event()
    _start_ray(args, cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.hostname, "port": args.port})
        try:
            serve.run(build_app(cfg), name="chameleon", route_prefix="/")
        except RuntimeError as exc:  # Ray Serve: "Deploying application chameleon failed: ..."
            why = last_replica_error(args.workdir)
            print(f"chameleon serve-ray: the replicas did not start ({exc}){why}", file=sys.stderr)
            return 1
        print(f"chameleon serve-ray: {cfg.replicas} replicas ({cfg.routing} routing) at "
              f"http://{args.hostname}:{args.port}", flush=True)
        stop.wait()
    finally:
        serve.delete("chameleon")
        if not args.address:  # a cluster we joined keeps running (and its Serve instance)
            serve.shutdown()
        ray.shutdown()
    return 0
