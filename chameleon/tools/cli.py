"""The `chameleon` command. Subcommands live in their own modules and are reached by module name at
call time, so `import chameleon` stays light and the policy core stays the leaf of the import graph.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Subcommand:
    name: str
    target: str  # "module:function"; the function takes argv (list[str]) and returns an exit code
    summary: str


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("launch", "chameleon.tools.launch:main",
               "start shard ranks and the router, and supervise them"),
    Subcommand("router", "router.cli:main", "run the router (client APIs + serving loop)"),
    Subcommand("shard", "shard.cli:main", "run one shard rank (generate.v3 server)"),
    Subcommand("demo-assets", "shard.demo_assets.cli:main",
               "build the demo model (SmolLM2-135M) and 100 LoRA adapters, or --tiny ones"),
    Subcommand("simulate", "chameleon.tools.simulate:main",
               "replay a trace through the discrete-event simulator"),
    Subcommand("bench-shard", "shard.bench:main", "shard tokens/s: base, multi-LoRA, transformers+PEFT"),
    Subcommand("bench", "chameleon.tools.bench.cli:main",
               "open-loop load generator against a running system"),
    Subcommand("bench-compare", "chameleon.tools.bench.compare:main",
               "launch each policy config and compare"),
    Subcommand("soak", "chameleon.tools.bench.soak:main",
               "long run with a shard restart; reports losses and memory"),
    Subcommand("simulate-replicas", "chameleon.scale.simulate:main",
               "simulate N replicas behind adapter-affinity or Ray's default routing"),
    Subcommand("serve-ray", "chameleon.scale.ray_cli:main",
               "deploy N replicas (router + shard group each) on Ray Serve with adapter-affinity routing"),
    Subcommand("bench-ray", "chameleon.scale.bench_http:main",
               "chameleon bench's replay over HTTP against serve-ray's endpoint, cache figures per replica"),
)


def _usage() -> str:
    width = max(len(s.name) for s in SUBCOMMANDS)
    lines = ["usage: chameleon <command> [options]", "", "commands:"]
    lines += [f"  {s.name:<{width}}  {s.summary}" for s in SUBCOMMANDS]
    lines += ["", "`chameleon <command> --help` explains every flag of a command."]
    return "\n".join(lines)


def dispatch(name: str, argv: Sequence[str]) -> int:
    sub = next((s for s in SUBCOMMANDS if s.name == name), None)
    if sub is None:
        print(f"chameleon: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = sub.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"chameleon {name}: not part of this version yet ({module_name} is missing)",
                  file=sys.stderr)
        else:
            print(f"chameleon {name}: not available in this installation ({exc.name} is missing; "
                  "the shard commands need `pip install chameleon-serve[shard]`)", file=sys.stderr)
        return 2
    return int(getattr(module, func_name)(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from chameleon import __version__

        print(__version__)
        return 0
    return dispatch(args[0], args[1:])


def router_main() -> int:
    """Entry point of the `chameleon-router` console script (the container entrypoint)."""
    return dispatch("router", sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
