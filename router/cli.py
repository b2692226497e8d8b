"""`chameleon router`: the process clients talk to (fmaas gRPC on 8033, TGI + OpenAI HTTP on 3000).

Every flag also reads its UPPER_CASE environment variable (chameleon.tools.cliargs). No torch is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from chameleon.core.headroom import DEFAULT_HEADROOM, DEFAULT_HEADROOM_FRACTION, HeadroomTarget
from chameleon.core.limits import Limits, derive_limits, read_max_position_embeddings
from chameleon.tools.cliargs import EnvArgumentParser
from chameleon.tools.logs import setup_logging
from chameleon.tools.mlqargs import add_mlq_flags, mlq_options
from router.api.auth import Secret, TlsFiles
from router.engine.config import ADAPTER_CACHES, SCHEDULERS, EngineConfig
from router.engine.entry import Engine
from router.engine.startup import StartupError
from router.server import ServerConfig, serve
from router.tokenize import RouterTokenizer

log = logging.getLogger("chameleon.router")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _add_connection_flags(p: EnvArgumentParser) -> None:
    p.add_argument("--master-shard-uds-path", required=True,
                   help="unix socket of shard rank 0 (the others are found through it)")
    p.add_argument("--tokenizer", required=True, type=Path, metavar="MODEL_DIR",
                   help="model folder: tokenizer.json, tokenizer_config.json (chat template), config.json")
    p.add_argument("--adapter-dir", type=Path, default=None, help="PEFT adapters, one folder per name")
    p.add_argument("--model-id", default="",
                   help="served model name (/info, /v1/models); default: the model folder name")
    p.add_argument("--hostname", default="0.0.0.0", help="address both servers listen on")
    p.add_argument("--port", type=int, default=3000, help="HTTP port (TGI and OpenAI routes)")
    p.add_argument("--grpc-port", type=int, default=8033,
                   help="gRPC port (fmaas.GenerationService, chameleon.v1.AdapterAdmin, health, reflection)")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the shards")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to let requests finish on stop")


def _add_limit_flags(p: EnvArgumentParser) -> None:
    p.add_argument("--max-concurrent-requests", type=_positive, default=128,
                   help="requests in flight before new ones get 429 / RESOURCE_EXHAUSTED")
    p.add_argument("--max-input-tokens", type=_positive, default=None,
                   help="longest prompt; default: max-total-tokens - 1 (at most --max-batch-prefill-tokens)")
    p.add_argument("--max-total-tokens", type=_positive, default=None,
                   help="longest prompt + generation; default: config.json's max_position_embeddings, at "
                   "most 4096 (TGI's rule); both are capped by the shards' page pool")
    p.add_argument("--max-batch-prefill-tokens", type=_positive, default=None,
                   help="prompt tokens in one prefill batch; default: max-input-tokens + 50")
    p.add_argument("--max-batch-size", type=_positive, default=None)
    p.add_argument("--max-stop-sequences", type=int, default=4)
    p.add_argument("--max-top-n-tokens", type=int, default=5)
    p.add_argument("--max-new-tokens-default", type=_positive, default=100,
                   help="max_new_tokens when a request gives none (capped by max-total-tokens)")
    p.add_argument("--max-client-batch-size", type=_positive, default=128,
                   help="most requests in one batched fmaas Generate or Tokenize call (TGI's name for its "
                   "HTTP batch limit); a batch is admitted all-or-nothing, so one larger than the free "
                   "concurrency slots gets RESOURCE_EXHAUSTED")
    p.add_argument("--max-request-bytes", type=_positive, default=2 << 20,
                   help="largest request body (HTTP) or message (gRPC), checked before tokenization")
    p.add_argument("--unknown-adapter", choices=("error", "base"), default="error",
                   help="an unknown adapter id: refuse the request, or serve the base model (TGI's fallback)")


def _api_key(text: str) -> Secret | None:
    """An empty key (e.g. `API_KEY=` in a compose file) means no key."""
    return Secret(text) if text else None


def _add_security_flags(p: EnvArgumentParser) -> None:
    p.add_argument("--api-key", type=_api_key, default=None,
                   help="require this key on both APIs (HTTP 'Authorization: Bearer KEY', gRPC metadata "
                   "'authorization: Bearer KEY' or 'x-api-key'); /health, /metrics and grpc health stay "
                   "open. Prefer the environment variable: a command line is visible in ps")
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain: serve gRPC over TLS")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, default=None,
                   help="PEM CA bundle: require client certificates it signed on gRPC (mutual TLS)")


def _memory_headroom(text: str) -> HeadroomTarget:
    try:
        return HeadroomTarget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_memory_flags(p: EnvArgumentParser) -> None:
    p.add_argument("--memory-headroom", type=_memory_headroom, default=DEFAULT_HEADROOM,
                   metavar="BYTES|FRACTION",
                   help="free memory every shard rank keeps for co-tenants and activation spikes, measured "
                        "(CUDA: the device; CPU: the cgroup's limit, else the host): bytes (2GiB, 512M, "
                        "1073741824) or a fraction of the rank's total memory (0.1); below it the adapter "
                        "cache's page budget shrinks and the shards release pool memory, above it the "
                        f"budget grows back; 0 = off (default: {DEFAULT_HEADROOM_FRACTION:g})")


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon router", description=__doc__.splitlines()[0])
    _add_connection_flags(p)
    _add_limit_flags(p)
    _add_security_flags(p)
    _add_memory_flags(p)
    p.add_argument("--scheduler", choices=SCHEDULERS, default="chameleon")
    p.add_argument("--adapter-cache", choices=ADAPTER_CACHES, default="chameleon")
    p.add_argument("--seed", type=int, default=0, help="seed of the engine's random choices")
    p.add_argument("--json-output", action="store_true", help="log one JSON object per line")
    p.add_argument("--log-level", default="INFO")
    add_mlq_flags(p)
    return p


def model_limits(args: argparse.Namespace) -> Limits:
    """The flags' limits, the unset ones derived from MODEL_DIR/config.json (chameleon.core.limits; no
    config.json = TGI's default of 4096 positions). ValueError when a flag contradicts the model."""
    try:
        max_pos = read_max_position_embeddings(args.tokenizer)
    except FileNotFoundError:
        max_pos = None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {args.tokenizer / 'config.json'}: {exc}") from exc
    return derive_limits(max_pos, args.max_input_tokens, args.max_total_tokens, args.max_batch_prefill_tokens)


def engine_config(args: argparse.Namespace, limits: Limits | None = None) -> EngineConfig:
    """The engine's settings; `limits` None = derive them now (model_limits)."""
    limits = limits or model_limits(args)
    return EngineConfig(
        master_shard_uds_path=args.master_shard_uds_path, model_dir=args.tokenizer, model_id=args.model_id,
        adapter_dir=args.adapter_dir, scheduler=args.scheduler, adapter_cache=args.adapter_cache,
        max_concurrent_requests=args.max_concurrent_requests, max_input_tokens=limits.max_input_tokens,
        max_total_tokens=limits.max_total_tokens, max_batch_prefill_tokens=limits.max_batch_prefill_tokens,
        max_batch_size=args.max_batch_size, connect_timeout_s=args.connect_timeout, seed=args.seed,
        memory_headroom=_headroom_or_off(args.memory_headroom), mlq=mlq_options(args))


def _headroom_or_off(target: HeadroomTarget) -> HeadroomTarget | None:
    return None if target.nbytes == 0 and target.fraction == 0 else target


def server_config(args: argparse.Namespace) -> ServerConfig:
    """Raises ValueError when the TLS flags are incomplete or name missing files."""
    return ServerConfig(
        api_key=args.api_key, tls=TlsFiles.from_flags(args.tls_cert, args.tls_key, args.tls_client_ca),
        hostname=args.hostname, port=args.port, grpc_port=args.grpc_port, model_name=args.model_id,
        adapter_dir=args.adapter_dir, max_request_bytes=args.max_request_bytes,
        max_stop_sequences=args.max_stop_sequences, max_top_n_tokens=args.max_top_n_tokens,
        max_new_tokens_default=args.max_new_tokens_default, unknown_adapter=args.unknown_adapter,
        max_client_batch_size=args.max_client_batch_size,
        drain_timeout_s=args.drain_timeout)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args.json_output, args.log_level, process="router")
    if args.adapter_dir is not None and not args.adapter_dir.is_dir():
        print(f"chameleon router: --adapter-dir {args.adapter_dir} is not a folder", file=sys.stderr)
        return 2
    try:
        server = server_config(args)
        tokenizer = RouterTokenizer(args.tokenizer)
        limits = model_limits(args)
        engine = Engine(engine_config(args, limits))
    except (OSError, ValueError) as exc:
        print(f"chameleon router: {exc}", file=sys.stderr)
        return 2
    source = "derived from config.json" if limits.derived else "from flags"
    log.info("limits %s: %s", source, limits.describe(),
             extra={"event": "limits", "derived": list(limits.derived)})
    try:
        asyncio.run(serve(engine, tokenizer, server))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
