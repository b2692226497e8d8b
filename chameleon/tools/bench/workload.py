"""The requests a bench run replays: the trace's lengths (scaled, capped at the served model's limits),
adapters assigned as the simulator does (chameleon.workload: uniform over rank classes, power law
within a class), Poisson arrivals at a rate or the trace's own timestamps, cut at a duration.

Same (trace, adapters, options, seed) -> same requests: every configuration of a comparison replays
exactly the same list, and a higher rate replays the same requests, only closer together.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from chameleon.workload import (
    AdapterInfo,
    LengthScale,
    TraceError,
    TraceRecord,
    WorkItem,
    WorkloadOptions,
    build_workload,
    make_workload,
    read_trace,
)

DEFAULT_LENGTH_SCALE = 1 / 16   # Azure conversation (mean 1155 in / 211 out) -> ~72 / ~13 tokens
# A synthetic class's lengths are in the simulator's A40 units (the Azure trace x 1/6); x 6 puts them in
# trace units, so the same --length-scale gives the same request sizes as the trace (chat ~75 / ~15).
WORKLOAD_TO_TRACE = 6
WORKLOAD_REQUESTS = 20_000

# Short common English words: one token each for byte-level BPE vocabularies with a leading space.
_WORD_TEXT = (
    "the of and to in is was for on are with as at be by this had not but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just those "
    "people how too little state good very make world still own see men work long get here "
    "between both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three"
)
_WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class BenchOptions:
    rate: float | None          # requests/s; None = the trace's own rate (trace arrivals only)
    duration_s: float           # replay requests arriving in [0, duration)
    arrivals: str = "poisson"   # poisson | trace
    length_scale: float = DEFAULT_LENGTH_SCALE
    max_input: int = 0          # 0 = the server's limit only
    max_output: int = 0
    exponent: float = 1.0
    base_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"--duration must be > 0 seconds, got {self.duration_s}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"--rate must be > 0 requests/s, got {self.rate}")


def population(adapters: Sequence[tuple[str, int]], n: int) -> list[AdapterInfo]:
    """`n` served adapters (id, rank), as even as possible over the rank classes: within each class
    the adapters in name order, the first the most popular. Fewer than asked -> a clear error."""
    by_rank: dict[int, list[str]] = {}
    for adapter_id, rank in sorted(adapters):
        by_rank.setdefault(rank, []).append(adapter_id)
    if n > len(adapters) or n < 1:
        raise ValueError(f"--adapters {n}: the server offers {len(adapters)} adapters; "
                         f"ask for 1..{len(adapters)}")
    chosen: list[AdapterInfo] = []
    ranks = sorted(by_rank)
    k = 0
    while len(chosen) < n:
        for rank in ranks:
            if k < len(by_rank[rank]) and len(chosen) < n:
                chosen.append(AdapterInfo(by_rank[rank][k], rank))
        k += 1
    return sorted(chosen, key=lambda a: (a.rank, a.adapter_id))


def lengths(opts: BenchOptions, max_total: int, max_new: int) -> LengthScale:
    """The trace-length scaling of a run: the options' scale and caps, within the server's limits."""
    if max_total < 2 or max_new < 1:
        raise ValueError(f"server limits too small: max_total={max_total}, max_new={max_new}")
    cap_in = min(max_total - 1, opts.max_input) if opts.max_input else max_total - 1
    cap_out = min(max_new, opts.max_output) if opts.max_output else max_new
    return LengthScale(opts.length_scale, opts.length_scale, cap_in, cap_out)


def plan(records: Sequence[TraceRecord], adapters: Sequence[AdapterInfo], opts: BenchOptions,
         max_total: int, max_new: int) -> list[WorkItem]:
    """Items arriving within the duration; lengths scaled and capped (`lengths`); an item whose prompt +
    output would pass max_total gets a shorter output. Items are the first records of the trace."""
    need = len(records) if opts.rate is None or opts.arrivals == "trace" \
        else min(len(records), math.ceil(opts.rate * opts.duration_s * 2) + 16)
    wopts = WorkloadOptions(rate=opts.rate, arrivals=opts.arrivals, scale=lengths(opts, max_total, max_new),
                            exponent=opts.exponent, base_fraction=opts.base_fraction, limit=need,
                            seed=opts.seed)
    items = [w for w in build_workload(records, adapters, wopts) if w.arrival < opts.duration_s]
    return [w if w.input_tokens + w.output_tokens <= max_total
            else WorkItem(w.id, w.arrival, w.adapter_id, w.input_tokens, max(1, max_total - w.input_tokens))
            for w in items]


def prompt_text(item_id: int, n_tokens: int, seed: int = 0) -> str:
    """A distinct prompt with at least `n_tokens` tokens for common tokenizers; the client asks the
    server to truncate it to exactly `n_tokens` (`truncate_input_tokens`)."""
    rng = random.Random(seed * 1_000_003 + item_id)
    return " ".join(rng.choice(_WORDS) for _ in range(n_tokens + 8))


def load_records(args) -> list[TraceRecord]:
    """The records a bench replays: `--trace`, or the synthetic class `--workload` (lengths x
    WORKLOAD_TO_TRACE). A workload also sets the arrivals (bursty: its on/off timestamps, warped to
    --rate) and the popularity exponent when --popularity-exponent is not given."""
    if getattr(args, "workload", None) and args.trace:
        raise ValueError("give --trace or --workload, not both")
    if getattr(args, "workload", None):
        w = make_workload(args.workload, WORKLOAD_REQUESTS, args.seed)
        args.arrivals = w.arrivals
        if args.popularity_exponent is None:
            args.popularity_exponent = w.exponent
        k = WORKLOAD_TO_TRACE
        return [TraceRecord(r.timestamp, r.input_tokens * k, r.output_tokens * k) for r in w.records]
    if not args.trace:
        raise TraceError("--trace or --workload is required (e.g. "
                         "../shared/data/traces/azure_llm_2023_conv.csv)")
    if args.popularity_exponent is None:
        args.popularity_exponent = 1.0
    return read_trace(args.trace)
