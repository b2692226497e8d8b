"""`chameleon bench-ray`: `chameleon bench`'s open-loop replay over HTTP (TGI `/generate_stream`),
for an endpoint that speaks only HTTP: Ray Serve's proxy in front of `chameleon serve-ray`.

Same workload (`chameleon.tools.bench.workload.plan`: trace lengths, Zipf-like popularity, the same
requests for the same seed) and statistics (`stats.summarise`) as `chameleon bench`. Cache figures
come from every replica's own router: `serve-ray` writes each replica's router URL into
`<workdir>/<replica>/endpoint.json`; hits, misses and adapter loads are summed over replicas.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from chameleon.sim.report import json_safe
from chameleon.tools.bench.cli import add_workload_flags, format_summary, options
from chameleon.tools.bench.stats import RequestRecord, summarise
from chameleon.tools.bench.workload import load_records, plan, population, prompt_text
from chameleon.tools.cliargs import EnvArgumentParser, prepare_outputs
from chameleon.workload import TraceError, WorkItem

COUNTERS = ("chameleon_cache_hits_total", "chameleon_cache_misses_total", "chameleon_adapter_loads_total",
            "chameleon_cache_prefetches_total")
REPLICA_HEADER = "x-chameleon-replica"  # serve-ray's answers name their replica (ray_serve.py; no ray here)
# per replica, where a request's time went (summed series; `/prefill` = the prefill steps' histogram)
BREAKDOWN = ("chameleon_adapter_load_seconds_total", "tgi_request_queue_duration_sum",
             "tgi_request_queue_duration_count", "tgi_request_input_length_sum",
             "tgi_batch_inference_duration_sum/prefill", "tgi_batch_inference_duration_sum/decode")


def build_parser() -> EnvArgumentParser:
    p = EnvArgumentParser(prog="chameleon bench-ray", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="HTTP endpoint (Ray Serve's proxy)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/chameleon-ray"),
                   help="serve-ray's --workdir: where the replicas' router URLs are (cache figures)")
    p.add_argument("--rate", type=float, required=True, help="requests/s (Poisson)")
    p.add_argument("--duration", type=float, default=60.0, help="replay requests arriving in this many s")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="then cancel what still runs")
    p.add_argument("--json", default=None, help="write the summary and every request here")
    add_workload_flags(p)
    return p


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def replica_series(workdir: Path) -> dict[str, dict[str, float]]:
    """COUNTERS and BREAKDOWN of each replica whose endpoint.json is under `workdir`, by its folder name
    (the Ray replica id)."""
    out: dict[str, dict[str, float]] = {}
    for ep in sorted(workdir.glob("*/endpoint.json")):
        url = json.loads(ep.read_text())["http"]
        with urllib.request.urlopen(url + "/metrics", timeout=30) as reply:
            text = reply.read().decode()
        values = dict.fromkeys((*COUNTERS, *BREAKDOWN), 0.0)
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                name = f"{s.name}/{s.labels['method']}" if "method" in s.labels else s.name
                if name in values:
                    values[name] += s.value
        out[ep.parent.name] = values
    return out


def replica_counters(workdir: Path) -> dict[str, float]:
    """Sum of COUNTERS over the replicas whose endpoint.json is under `workdir`."""
    per = replica_series(workdir).values()
    return {k: sum(v[k] for v in per) for k in COUNTERS}


def breakdown(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
              routed: dict[str, int]) -> dict[str, dict[str, float | None]]:
    """Per replica over the run: requests (finished there, and as routed by the response header),
    adapter loads and their mean cost, mean queueing (arrival to admission), prefill seconds per prompt
    token (prefill steps' time / prompt tokens), and the time of its prefill and decode steps."""
    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    out: dict[str, dict[str, float | None]] = {}
    for rid, now in after.items():
        d = {k: now[k] - before.get(rid, {}).get(k, 0.0) for k in now}
        loads = d["chameleon_adapter_loads_total"]
        out[rid] = {"requests": d["tgi_request_queue_duration_count"], "routed": float(routed.get(rid, 0)),
                    "loads": loads,
                    "load_s_mean": ratio(d["chameleon_adapter_load_seconds_total"], loads),
                    "load_s_total": d["chameleon_adapter_load_seconds_total"],
                    "queue_s_mean": ratio(d["tgi_request_queue_duration_sum"],
                                          d["tgi_request_queue_duration_count"]),
                    "prefill_s_total": d["tgi_batch_inference_duration_sum/prefill"],
                    "decode_s_total": d["tgi_batch_inference_duration_sum/decode"],
                    "prefill_s_per_token": ratio(d["tgi_batch_inference_duration_sum/prefill"],
                                                 d["tgi_request_input_length_sum"])}
    return out


async def stream_one(session: aiohttp.ClientSession, url: str, item: WorkItem, rec: RequestRecord,
                     start: float, seed: int, replicas: dict[int, str] | None = None) -> None:
    """Replay `item` into `rec`; `replicas[item.id]` = the replica that answered (serve-ray's header)."""
    params: dict[str, Any] = {"max_new_tokens": item.output_tokens, "do_sample": True, "temperature": 1.0,
                              "seed": seed * 1_000_003 + item.id, "truncate": item.input_tokens,
                              "adapter_id": item.adapter_id}
    body = {"inputs": prompt_text(item.id, item.input_tokens, seed), "parameters": params}
    await asyncio.sleep(max(0.0, start + item.arrival - time.perf_counter()))
    sent = time.perf_counter()
    rec.sent_s, last = sent - start, None
    try:
        async with session.post(url + "/generate_stream", json=body) as reply:
            if replicas is not None and REPLICA_HEADER in reply.headers:
                replicas[item.id] = reply.headers[REPLICA_HEADER]
            if reply.status != 200:
                rec.error = f"HTTP {reply.status}"
                return
            async for line in reply.content:
                if not line.startswith(b"data:"):
                    continue
                event, now = json.loads(line[5:]), time.perf_counter()
                if "error" in event:
                    rec.error = str(event.get("error_type", "error"))
                    return
                if last is None:
                    rec.ttft_s = now - sent
                else:
                    rec.gaps_s.append(now - last)
                last = now
                rec.generated_tokens += 1
                details = event.get("details") or {}
                rec.stop_reason = str(details.get("finish_reason", rec.stop_reason))
                rec.prompt_tokens = int(details.get("input_length", rec.prompt_tokens) or 0)
        rec.e2e_s = time.perf_counter() - sent
    except (aiohttp.ClientError, ValueError) as exc:
        rec.error = type(exc).__name__


async def replay(url: str, items: Sequence[WorkItem], seed: int, drain_timeout_s: float,
                 replicas: dict[int, str] | None = None) -> list[RequestRecord]:
    records = [RequestRecord(w.id, w.adapter_id, w.input_tokens, w.output_tokens, w.arrival) for w in items]
    start = time.perf_counter() + 0.2
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.ensure_future(stream_one(session, url, w, r, start, seed, replicas))
                 for w, r in zip(items, records, strict=True)]
        last = max(w.arrival for w in items)
        wait = max(0.0, start + last + drain_timeout_s - time.perf_counter())
        _, pending = await asyncio.wait(tasks, timeout=wait)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for r in records:
        if r.error is None and r.ttft_s is None:
            r.error = "cancelled" if r.e2e_s is None else "no token"
    return records


def run(args) -> dict[str, Any]:
    info = _get(args.url + "/info")
    models = _get(args.url + "/v1/models")["data"]
    served = [(m["id"], int(m["rank"])) for m in models if "rank" in m]
    pop = population(served, args.adapters)
    max_total = int(info["max_total_tokens"])
    trace = load_records(args)  # --trace or --workload; resolves the popularity exponent first
    opts = options(args, args.rate, args.duration)
    items = plan(trace, pop, opts, max_total, max_total - 1)
    if not items:
        raise ValueError("no request arrives within --duration at this rate")
    before, replicas = replica_series(args.workdir), {}
    records = asyncio.run(replay(args.url, items, args.seed, args.drain_timeout, replicas))
    after = replica_series(args.workdir)
    d = {k: sum(v[k] for v in after.values()) - sum(v[k] for v in before.values()) for k in COUNTERS}
    routed: dict[str, int] = {}
    for rid in replicas.values():
        routed[rid] = routed.get(rid, 0) + 1
    looked = d["chameleon_cache_hits_total"] + d["chameleon_cache_misses_total"]
    summary = {"rate": args.rate, "duration_s": args.duration, **summarise(records, args.slo_s),
               "cache_hit_rate": d["chameleon_cache_hits_total"] / looked if looked else None,
               "adapter_loads_per_request": (d["chameleon_adapter_loads_total"] / len(records)),
               "replicas": len(after), "per_replica": breakdown(before, after, routed)}
    return {"summary": summary, "records": records, "replica_of": replicas}


def format_breakdown(b: dict[str, float | None]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.1f} ms"

    return (f"requests {b['requests']:.0f} (routed {b['routed']:.0f})  loads {b['loads']:.0f} "
            f"(mean {ms(b['load_s_mean'])}, total {b['load_s_total']:.2f} s)  "
            f"queue mean {ms(b['queue_s_mean'])}  "
            f"prefill {b['prefill_s_total']:.2f} s, {ms(b['prefill_s_per_token'])}/token  "
            f"decode {b['decode_s_total']:.2f} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        if not args.trace:
            raise ValueError("--trace is required")
        prepare_outputs(files=(args.json,))
        out = run(args)
    except (ValueError, TraceError, OSError, KeyError) as exc:
        print(f"chameleon bench-ray: {exc}", file=sys.stderr)
        return 2
    s = out["summary"]
    print(format_summary(s))
    print(f"adapter loads per request {s['adapter_loads_per_request']:.3f} over {s['replicas']} replicas")
    for rid, b in s["per_replica"].items():
        print(f"  {rid}: {format_breakdown(b)}")
    if args.json:
        where = out["replica_of"]
        doc = {"summary": json_safe(s),
               "requests": [json_safe({**asdict(r), "replica": where.get(r.id)}) for r in out["records"]]}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0
