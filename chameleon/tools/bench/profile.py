"""Measure a `chameleon.sim` cost profile on a running system, so `chameleon simulate --profile` models
this machine. Everything is timed from the client over gRPC on an otherwise idle system:

- prefill: TTFT of base-model prompts of several lengths -> least-squares line: intercept =
  `step_overhead_s`, slope = `compute_s_per_token`;
- decode: the median inter-token gap of a lone short request -> `weight_read_s` (the step floor);
  the gap's growth with context -> `kv_read_s_per_token`;
- LoRA compute: cached rank-R adapter TTFT minus base TTFT -> `lora_compute_per_rank`;
- adapter loads: AdapterAdmin Unload + Load of one adapter per rank (the router reports `load_ns`) ->
  line of seconds vs bytes: slope = 1 / `h2d_bytes_per_s`, intercept = `load_overhead_s`;
- memory: the pool (pages x page bytes) and device budget from /metrics; adapter true sizes from
  ListAdapters.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import grpc
from chameleon_pb import chameleon_pb2, chameleon_pb2_grpc

from chameleon.sim.profile import Profile
from chameleon.tools.bench import scrape
from chameleon.tools.bench.loadgen import ServerInfo, grpc_address, replay
from chameleon.workload import WorkItem

PREFILL_LENGTHS = (16, 64, 128, 256)
MEMORY_GAUGES = ("chameleon_pool_pages_total", "chameleon_pool_page_bytes")


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope); needs two distinct x values."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        raise ValueError("a line needs at least two distinct points")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - slope * mx, slope


async def _ttft(target: str, n_in: int, n_out: int, adapter: str | None, reps: int) -> tuple[float, float]:
    """Median TTFT and median inter-token gap of `reps` lone requests."""
    ttft, gaps = [], []
    for i in range(reps):
        rec = (await replay(target, [WorkItem(900_000 + i, 0.0, adapter, n_in, n_out)], channels=1))[0]
        if not rec.ok:
            raise RuntimeError(f"profile request ({n_in} tokens, adapter {adapter}) failed: {rec.error}")
        ttft.append(rec.ttft_s or 0.0)
        gaps += rec.gaps_s
    return statistics.median(ttft), statistics.median(gaps) if gaps else 0.0


async def _loads(target: str, info: ServerInfo) -> list[tuple[int, float]]:
    """(bytes, seconds) of a cold load of one adapter of each rank."""
    per_rank: dict[int, tuple[str, int]] = {}
    for adapter_id, rank, nbytes in info.adapters:
        per_rank.setdefault(rank, (adapter_id, nbytes))
    out: list[tuple[int, float]] = []
    async with grpc.aio.insecure_channel(grpc_address(target)) as ch:
        admin = chameleon_pb2_grpc.AdapterAdminStub(ch)
        for adapter_id, nbytes in per_rank.values():
            await admin.UnloadAdapter(chameleon_pb2.OffloadAdapterRequest(adapter_id=adapter_id))
            resp = await admin.LoadAdapter(chameleon_pb2.LoadAdapterRequest(adapter_id=adapter_id))
            out.append((nbytes, resp.load_ns / 1e9))
            await admin.UnloadAdapter(chameleon_pb2.OffloadAdapterRequest(adapter_id=adapter_id))
    return out


async def measure(target: str, metrics_url: str, info: ServerInfo, *, length_scale: float,
                  reps: int = 3, name: str = "measured") -> Profile:
    """Profile of the running system (see the module docstring for what is measured and how)."""
    lengths = [n for n in PREFILL_LENGTHS if n + 8 <= info.max_total_tokens] or [1, 2]
    pre = [await _ttft(target, n, 8, None, reps) for n in lengths]
    overhead, per_token = fit_line([float(n) for n in lengths], [t for t, _ in pre])
    per_token = max(per_token, 1e-6)
    # A step costs at least the lone decode gap: the overhead is capped there, the rest is the floor.
    overhead = min(max(overhead, 0.0), pre[0][1])
    decode_floor = max(pre[0][1] - overhead, per_token)
    kv_read = max(0.0, (pre[-1][1] - pre[0][1]) / max(1, lengths[-1] - lengths[0]))
    loads = await _loads(target, info)
    load_overhead, load_slope = fit_line([float(b) for b, _ in loads], [s for _, s in loads]) \
        if len({b for b, _ in loads}) > 1 else (0.0, loads[0][1] / loads[0][0])
    big = max(info.adapters, key=lambda a: a[1]) if info.adapters else None
    lora = 0.0
    if big is not None:
        n = lengths[min(2, len(lengths) - 1)]
        await _ttft(target, n, 2, big[0], 1)                    # load it: the next one is cached
        cached, _ = await _ttft(target, n, 8, big[0], reps)
        lora = max(0.0, (cached - pre[min(2, len(pre) - 1)][0]) / (per_token * n * big[1]))
    mem = scrape.snapshot(metrics_url, names=MEMORY_GAUGES) or {}
    return _profile(name, info, mem, overhead=overhead, per_token=per_token, decode_floor=decode_floor,
                    kv_read=kv_read, lora=lora, load_overhead=max(load_overhead, 0.0),
                    load_bw=1.0 / max(load_slope, 1e-12), length_scale=length_scale)


def _profile(name: str, info: ServerInfo, mem: dict[str, float], *, overhead: float, per_token: float,
             decode_floor: float, kv_read: float, lora: float, load_overhead: float, load_bw: float,
             length_scale: float, block_size: int = 16) -> Profile:
    page = int(mem.get("chameleon_pool_page_bytes", 0)) or block_size * 4096
    pool = int(mem.get("chameleon_pool_pages_total", 0)) * page or page * 1024
    sizes: dict[int, list[int]] = {}
    for _, rank, nbytes in info.adapters:
        sizes.setdefault(rank, []).append(nbytes)
    adapter_bytes = {r: int(statistics.median(v)) for r, v in sizes.items()} or {8: page}
    return Profile(
        name=name, device_memory_bytes=pool + page, weights_bytes=page, activation_reserve_bytes=0,
        kv_bytes_per_token=max(1, page // block_size), block_size=block_size, adapter_bytes=adapter_bytes,
        step_overhead_s=overhead, weight_read_s=decode_floor, compute_s_per_token=per_token,
        lora_compute_per_rank=lora, kv_read_s_per_token=kv_read, h2d_bytes_per_s=load_bw,
        load_overhead_s=load_overhead, length_scale=length_scale, ref_input_tokens=0, ref_ttft_s={},
        sources={
            "step_overhead_s": "measured: intercept of base-model TTFT vs prompt length, capped at the "
                               "lone decode gap",
            "compute_s_per_token": "measured: slope of base-model TTFT vs prompt length",
            "weight_read_s": "measured: median decode gap of a lone short request minus the overhead",
            "kv_read_s_per_token": "measured: growth of the decode gap with context length",
            "lora_compute_per_rank": "measured: cached largest-rank adapter TTFT minus base TTFT",
            "h2d_bytes_per_s": "measured: AdapterAdmin Load of one adapter per rank (load_ns), slope",
            "load_overhead_s": "measured: intercept of the same line",
            "device_memory_bytes": "the page pool as reported on /metrics (+ one page standing for "
                                   "weights and activations, which are outside the pool)",
            "adapter_bytes": "true sizes from AdapterAdmin.ListAdapters",
            "length_scale": "the bench's length scale",
        },
    )
