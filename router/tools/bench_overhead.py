"""Router overhead: `python -m router.tools.bench_overhead --model-dir DIR [--adapter-dir DIR]`.

1. TTFT added by the engine: the same one-token request, alternately through `Engine.generate` (time
   to the first TokenEvent) and straight to the shard with the engine's own client (Prefill RPC
   round trip, run between two loop steps on pages borrowed from the engine's pool). Median of each
   and of the difference.
2. Scheduling step with N queued requests: `scheduler.schedule()` timed on every iteration while the
   live engine drains a backlog of N requests submitted at once; and the loop's whole host time per
   iteration outside shard RPCs (schedule, batch building, adapter sync, prefetch, event routing).
The shard is the one at --master-shard-uds-path, or one spawned here (`chameleon shard`) by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from chameleon.tools.cliargs import EnvArgumentParser
from router.engine.config import EngineConfig
from router.engine.direct import direct_generate
from router.engine.entry import Engine
from router.engine.types import GenerateParams, GenerateRequest, TokenEvent


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="python -m router.tools.bench_overhead", description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="model folder (config.json, tokenizer.json)")
    p.add_argument("--adapter-dir", type=Path, default=None, help="PEFT adapters by folder name")
    p.add_argument("--master-shard-uds-path", default=None, help="a running shard's rank-0 socket; "
                   "default: spawn one")
    p.add_argument("--memory-budget", type=int, default=1_500_000_000, help="spawned shard's budget")
    p.add_argument("--repeats", type=int, default=200, help="TTFT pairs to measure")
    p.add_argument("--queued", type=int, default=1000, help="backlog for the scheduling-step figure")
    p.add_argument("--scheduler", default="chameleon", help="chameleon|fifo|sjf")
    p.add_argument("--adapter-cache", default="chameleon", help="chameleon|lru|fairshare|none")
    p.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog. " * 4)
    return p


def _spawn(model_dir: Path, adapter_dir: Path | None, budget: int) -> tuple[subprocess.Popen, str]:
    prefix = Path(tempfile.mkdtemp(prefix="bo-", dir="/tmp")) / "s"
    cmd = [sys.executable, "-m", "chameleon", "shard", str(model_dir), "--uds-path", str(prefix),
           "--memory-budget", str(budget)]
    if adapter_dir is not None:
        cmd += ["--adapter-dir", str(adapter_dir)]
    with (prefix.parent / "shard.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"{prefix}-0"


async def ttft_pairs(engine: Engine, req: GenerateRequest, repeats: int) -> dict[str, float]:
    """Alternate engine and direct runs of `req` (max_new_tokens 1); medians in milliseconds."""
    loop, info = engine.loop, engine.info
    assert loop is not None and info is not None and engine.client is not None  # started
    via_engine, direct = [], []
    n_pages = -(-(len(req.input_ids) + req.params.max_new_tokens) // info.block_size)
    for i in range(repeats):
        t0 = time.perf_counter()
        async for ev in engine.generate(req):
            if isinstance(ev, TokenEvent):
                via_engine.append(time.perf_counter() - t0)

        async def shard_alone(pages: list[int], i: int = i) -> float:
            res = await direct_generate(engine.client, req, pages, info.block_size,  # type: ignore[arg-type]
                                        rid=2**62 + i, batch_id=2**62 + i)
            return res.ttft_s

        direct.append(await loop.with_kv_pages(n_pages, shard_alone))
    diffs = [a - b for a, b in zip(via_engine, direct, strict=True)]
    return {"engine_ttft_ms_p50": 1e3 * statistics.median(via_engine),
            "shard_ttft_ms_p50": 1e3 * statistics.median(direct),
            "added_ms_p50": 1e3 * statistics.median(diffs)}


async def schedule_backlog(engine: Engine, req: GenerateRequest, queued: int) -> dict[str, object]:
    """Submit `queued` requests at once, let the engine drain them; schedule() times in ms."""
    loop = engine.loop
    assert loop is not None  # started
    loop.samples(clear=True)
    streams = [engine.generate(req) for _ in range(queued)]

    async def drain(s: object) -> None:
        async for _ in s:
            pass

    t0 = time.perf_counter()
    await asyncio.gather(*(drain(s) for s in streams))
    drain_s = time.perf_counter() - t0
    samples = loop.samples()
    out: dict[str, object] = {"queued": queued, "iterations": len(samples["schedule"]), "drain_s": drain_s}
    steps = samples["schedule"]
    if steps:  # where the slowest steps were: the first ones take the burst (and a refresh starts)
        out["schedule_ms_first3"] = [round(1e3 * x, 3) for x in steps[:3]]
        out["schedule_ms_top5"] = [round(1e3 * x, 3) for x in sorted(steps, reverse=True)[:5]]
        out["schedule_max_at_iteration"] = steps.index(max(steps))
    for name, raw in samples.items():
        ordered = sorted(raw)
        out[f"{name}_ms_p50"] = 1e3 * statistics.median(ordered)
        out[f"{name}_ms_p99"] = 1e3 * ordered[int(0.99 * (len(ordered) - 1))]
        out[f"{name}_ms_max"] = 1e3 * ordered[-1]
    return out


async def run(a: argparse.Namespace) -> dict[str, object]:
    proc = None
    uds = a.master_shard_uds_path
    if uds is None:
        proc, uds = _spawn(a.model_dir, a.adapter_dir, a.memory_budget)
    try:
        cfg = EngineConfig(master_shard_uds_path=uds, model_dir=a.model_dir, adapter_dir=a.adapter_dir,
                           scheduler=a.scheduler, adapter_cache=a.adapter_cache,
                           max_concurrent_requests=max(128, a.queued + 1),
                           max_batch_prefill_tokens=1024)
        engine = Engine(cfg)
        await engine.start()
        tok = Tokenizer.from_file(str(a.model_dir / "tokenizer.json"))
        ids = tuple(tok.encode(a.prompt).ids)
        one = GenerateRequest(text=a.prompt, input_ids=ids, params=GenerateParams(max_new_tokens=1))
        await ttft_pairs(engine, one, 10)  # warm both paths
        out: dict[str, object] = {"ttft": await ttft_pairs(engine, one, a.repeats)}
        two = GenerateRequest(text=a.prompt, input_ids=ids, params=GenerateParams(max_new_tokens=2))
        out["schedule"] = await schedule_backlog(engine, two, a.queued)
        out["scheduler"], out["prompt_tokens"] = cfg.scheduler, len(ids)
        await engine.stop()
        return out
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
