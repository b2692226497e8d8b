"""`chameleon shard MODEL_DIR --uds-path PATH`: one shard rank serving generate.v3 on unix://PATH-RANK.

Rank and world come from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, as torchrun sets them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chameleon.core.memory import ADAPTER_DTYPE_POLICIES
from chameleon.tools.cliargs import EnvArgumentParser
from chameleon.tools.logs import setup_logging
from shard.server.adapter_manager import parse_lora_adapters
from shard.server.plain_v3 import PROTOCOLS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from shard.server.servicer import ShardCore

log = logging.getLogger("shard")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon shard", description=__doc__)
    p.add_argument("model_dir", type=Path, help="Hugging Face model folder (config.json, tokenizer, "
                   "safetensors)")
    p.add_argument("--uds-path", required=True, help="socket path prefix; this rank listens on "
                   "unix://PATH-RANK")
    p.add_argument("--lora-adapters", default="", help="adapters loaded at warmup: name=path,... "
                   "(TGI's LORA_ADAPTERS format)")
    p.add_argument("--adapter-dir", type=Path, default=None, help="folder whose subfolders <id>/ are "
                   "PEFT adapters loaded on first use by id")
    p.add_argument("--memory-budget", type=int, default=4 * 1024**3, help="bytes this rank may use on CPU "
                   "for serving tensors (weights + activation reserve + page pool; the interpreter is not "
                   "counted); ignored on CUDA")
    p.add_argument("--memory-fraction", type=float, default=0.9, help="fraction of free CUDA memory to use")
    p.add_argument("--adapter-pages", type=int, default=None, help="pool pages kept for adapters the shard "
                   "loads itself (plain-TGI mode); default: what --lora-adapters need, plus room for the 8 "
                   "largest adapters of --adapter-dir (10%%..50%% of the pool)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="weight and KV dtype; 'auto': bfloat16 on "
                   "CUDA, float32 on CPU")
    p.add_argument("--adapter-dtype", choices=ADAPTER_DTYPE_POLICIES, default="auto", help="dtype LoRA "
                   "adapters are stored in, in the page pool: 'auto' keeps an adapter saved in bfloat16 or "
                   "float16 in that 16-bit dtype when the model runs in float32 on CPU with one rank "
                   "(lossless: the C kernel widens it to float32 exactly; half the pages and half the bytes "
                   "a decode step reads), else the model dtype; 'model' converts every adapter to the model "
                   "dtype")
    p.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if CUDA is "
                   "available, else cpu)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block (pool page)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    p.add_argument("--protocol", choices=PROTOCOLS, default="chameleon.v1", help="'generate.v3': serve only "
                   "TGI generate.v3, as an unmodified TGI text-generation-server does (no "
                   "chameleon.v1.AdapterService, no headroom or other Chameleon fields in replies; adapters "
                   "named in requests are loaded by the shard itself); for testing and for routers that "
                   "speak only v3")
    p.add_argument("--json-output", action="store_true", help="log one JSON object per line")
    _add_gpu_flags(p)
    return p


KERNEL_BACKENDS = ("auto", "torch", "cpu-kernels", "triton")  # shard.model.runner.BACKENDS + auto


def _add_gpu_flags(p: EnvArgumentParser) -> None:
    """Execution flags: which kernels run the model, and the decode CUDA graphs."""
    p.add_argument("--kernel-backend", choices=KERNEL_BACKENDS, default="auto", help="how the model's "
                   "operations run: 'auto' = the Triton kernels on CUDA (torch ops if triton does not "
                   "import), the C kernels on CPU (torch ops if they cannot load); 'torch' = torch ops "
                   "everywhere; 'cpu-kernels' / 'triton' insist on those kernels")
    p.add_argument("--cuda-graph-max-batch", type=int, default=64, help="decode CUDA graphs for batches of "
                   "up to this many sequences (padded to 1, 2, 4, then multiples of 8), captured at Warmup; "
                   "0 turns them off; used on CUDA with the triton backend and one rank")



def eos_token_ids(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """EOS ids from generation_config.json, config.json and the tokenizer."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        f = model_dir / name
        if f.is_file():
            value = json.loads(f.read_text()).get("eos_token_id")
            ids |= set(value) if isinstance(value, list) else ({value} if value is not None else set())
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids)


def _device(arg: str | None) -> str:
    import torch

    if arg:
        return arg
    if not torch.cuda.is_available():
        return "cpu"
    # ranks beyond the device count share GPUs (then gloo, shard.model.dist.process_group_backend)
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def check_inputs(args: argparse.Namespace) -> dict[str, Path]:
    """Model folder, --adapter-dir and --lora-adapters exist; returns the named adapters."""
    if not (args.model_dir / "config.json").is_file():
        raise SystemExit(f"chameleon shard: {args.model_dir} has no config.json (not a model folder)")
    if args.adapter_dir is not None and not args.adapter_dir.is_dir():
        raise SystemExit(f"chameleon shard: --adapter-dir {args.adapter_dir} is not a folder")
    try:
        named = parse_lora_adapters(args.lora_adapters)
    except ValueError as exc:
        raise SystemExit(f"chameleon shard: {exc}") from None
    missing = [f"{n}={p}" for n, p in named.items() if not (p / "adapter_config.json").is_file()]
    if missing:
        raise SystemExit(f"chameleon shard: --lora-adapters {', '.join(missing)}: no adapter_config.json")
    return named


def build_core(args: argparse.Namespace) -> ShardCore:
    """Load the model, tokenizer and adapters of this rank (DistContext from the environment)."""
    import torch
    from transformers import AutoTokenizer

    from shard.model.dist import DistContext
    from shard.model.runner import ModelRunner, resolve_dtype
    from shard.server.adapter_manager import AdapterManager
    from shard.server.headroom import DeviceMemory
    from shard.server.servicer import ShardCore, ShardOptions

    named = check_inputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    dist = DistContext.from_env(device=device)
    adapter_dtype = getattr(args, "adapter_dtype", "auto")
    dtype = resolve_dtype(args.dtype, device)
    backend = getattr(args, "kernel_backend", "auto")
    try:
        runner = ModelRunner(args.model_dir, dtype=dtype, device=device, dist=dist,
                             block_size=args.block_size, adapter_dtype=adapter_dtype,
                             backend=None if backend == "auto" else backend,
                             cuda_graph_max_batch=getattr(args, "cuda_graph_max_batch", 64))
    except ValueError as exc:  # e.g. --kernel-backend triton where triton cannot run
        raise SystemExit(f"chameleon shard: {exc}") from None
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir))
    options = ShardOptions(uds_path=args.uds_path, memory=DeviceMemory(torch.device(device),
                           args.memory_budget), adapter_pages=args.adapter_pages,
                           memory_fraction=args.memory_fraction, dtype_name=str(dtype).removeprefix("torch."),
                           adapter_dtype=adapter_dtype)
    manager = AdapterManager(runner.adapter_store, named, args.adapter_dir)
    return ShardCore(runner, tokenizer, eos_token_ids(args.model_dir, tokenizer), manager, options)


def openmp_waits_passively() -> None:
    """Process setting, made by each shard process entry before torch's import (which loads OpenMP):
    torch's OpenMP workers sleep as soon as a torch op ends (OMP_WAIT_POLICY=PASSIVE) instead of spinning
    for a while. The C kernels (shard.model.cpu_kernels) run on their own worker threads between torch
    ops; a spinning OpenMP worker holds the core they need: on a 2-core host a prefill ran 25-40% and a
    decode forward 13-43% slower for it. An explicit OMP_WAIT_POLICY in the environment wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str]) -> int:
    openmp_waits_passively()  # first: before anything imports torch
    args = build_parser().parse_args(list(argv))
    setup_logging(json_output=args.json_output, process=f"shard-{os.environ.get('RANK', '0')}")
    if args.block_size < 1 or args.memory_budget < 1:
        raise SystemExit("chameleon shard: --block-size and --memory-budget must be positive")
    if args.cuda_graph_max_batch < 0:
        raise SystemExit("chameleon shard: --cuda-graph-max-batch must be >= 0 (0 = off)")
    from shard.server.server import serve

    core = build_core(args)
    try:
        serve(core, protocol=args.protocol)
    finally:
        core.runner.dist.shutdown()
    return 0
