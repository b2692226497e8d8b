"""Entry point of `chameleon launch` (see supervisor.py for the lifecycle)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from chameleon.tools.launch.args import LaunchArgs, parse_args
from chameleon.tools.launch.limits import router_limits
from chameleon.tools.launch.plan import build_plan, connect_host, resolve_model
from chameleon.tools.launch.procs import LaunchError
from chameleon.tools.launch.supervisor import ProgressFactory, Supervisor, Timeouts, no_progress
from chameleon.tools.logs import setup_logging

log = logging.getLogger("chameleon.tools.launch")


def _bars(total: int, desc: str) -> AbstractContextManager[Any]:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="proc", disable=None, leave=False)


def _announce(args: LaunchArgs, model: str) -> None:
    if args.shards_only:
        log.info("shard group of %d rank(s) serving %s on %s-0..%d", args.num_shard, model,
                 args.shard_uds_path, args.num_shard - 1, extra={"event": "serving"})
        return
    host = connect_host(None)
    log.info("Chameleon is serving %s on http://%s:%d (TGI + OpenAI routes, /metrics) and gRPC %s:%d "
             "(fmaas.GenerationService) with %d shard(s)", model, host, args.port, host, args.grpc_port,
             args.num_shard, extra={"event": "serving", "http_port": args.port, "grpc_port": args.grpc_port,
                                    "num_shard": args.num_shard})


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    setup_logging(json_output=args.json_output, process="launcher")
    try:
        model_dir, adapter_dir = resolve_model(args)
    except LaunchError as exc:
        log.error("%s", exc)
        return 1
    if not args.shards_only:
        try:
            limits = router_limits(args.router_flags, model_dir)
        except ValueError as exc:
            log.error("cannot start: %s", exc)
            return 2
        log.info("limits %s: %s", "derived from config.json" if limits.derived else "from flags",
                 limits.describe(), extra={"event": "limits", "derived": list(limits.derived)})
    plan = build_plan(args, model_dir, adapter_dir)
    progress: ProgressFactory = no_progress if args.json_output else _bars
    # The router drains for --drain-timeout itself; the launcher allows it a little more to close.
    timeouts = Timeouts(startup=args.startup_timeout, drain=args.drain_timeout + 15.0, stop=args.stop_timeout)
    supervisor = Supervisor(plan, timeouts, max_restarts=args.max_restarts, progress=progress,
                            on_serving=lambda: _announce(args, str(model_dir)))
    return supervisor.run()
