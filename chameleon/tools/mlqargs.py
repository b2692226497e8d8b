"""The MLQ scheduler's settings as command-line flags (router and launcher share this list).

Each flag maps to one `chameleon.core.sched.MlqConfig` field; unset flags keep the MlqConfig default,
so only what an operator sets reaches the scheduler. Every flag reads its upper-case environment
variable (e.g. MLQ_SLO_S) through `chameleon.tools.cliargs.EnvArgumentParser`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from chameleon.core.sched import MlqConfig
from chameleon.tools.cliargs import boolean


@dataclass(frozen=True, slots=True)
class MlqFlag:
    flag: str
    field: str
    kind: Callable[[str], object]
    help: str
    choices: tuple[str, ...] | None = None


MLQ_FLAGS: tuple[MlqFlag, ...] = (
    MlqFlag("--mlq-slo-s", "slo_s", float, "TTFT SLO (s) the MLQ sizes its queue quotas for (M/M/1); "
            "default 5; also the starvation bound's basis"),
    MlqFlag("--mlq-refresh-s", "t_refresh_s", float, "seconds between queue refreshes (K-means + quotas); "
            "default 300 (the paper's T_refresh)"),
    MlqFlag("--mlq-refresh-requests", "refresh_requests", int,
            "refresh early after this many arrivals since the last refresh; default 1000"),
    MlqFlag("--mlq-k-max", "k_max", int, "most queues the K-means may choose (the paper's K_max); default 4"),
    MlqFlag("--mlq-size-stat", "size_stat", str, "a queue's request size in the quota formula: mean "
            "(default), max (the paper's largest request) or pNN (e.g. p90)"),
    MlqFlag("--mlq-need", "need", str, "quota charge of a request: reserved (In + max_new_tokens + adapter, "
            "default) or predicted (the paper's In + Out_pred + adapter)", ("reserved", "predicted")),
    MlqFlag("--mlq-prefill-share", "prefill_share", str, "each queue's share of the per-step prefill "
            "budget: offered (default), quota, or none (the paper: memory quotas only)",
            ("offered", "quota", "none")),
    MlqFlag("--mlq-starve-factor", "starve_factor", float, "starvation bound: a queue head that waited "
            "more than this x the expected wait (moving mean of admission waits), or longer than the "
            "SLO, is admitted first, within memory; 0 = off; default 3"),
    MlqFlag("--mlq-compute-fcfs", "compute_fcfs", float, "admit in arrival order while at least this share "
            "of recent steps were stopped by the per-step prefill budget (compute binds, not memory); "
            "back to the queues below half of it; 0 = off; default 0.3"),
    MlqFlag("--mlq-backfill", "backfill_lookahead", int, "while a starved head does not fit, offer this "
            "many younger queued requests for backfilling: one goes now only if it cannot delay the head or "
            "any request ahead of it (counted in steps, by max_new_tokens), its adapter is resident and its "
            "queue's quota covers it; default 16; 0 = off"),
    MlqFlag("--mlq-backfill-evict", "backfill_evict", boolean, "on: a backfilled request may evict idle "
            "cached adapters to fit; off (default): only free pages, the cache is never shrunk to "
            "backfill"),
)


def add_mlq_flags(p: argparse.ArgumentParser) -> None:
    """Add every MLQ flag (default None = the MlqConfig default)."""
    for f in MLQ_FLAGS:
        p.add_argument(f.flag, type=f.kind, default=None, choices=f.choices, help=f.help)


def mlq_options(args: argparse.Namespace) -> tuple[tuple[str, object], ...]:
    """(MlqConfig field, value) of the flags that were set. ValueError when MlqConfig refuses them."""
    values = ((f.field, getattr(args, f.flag[2:].replace("-", "_"), None)) for f in MLQ_FLAGS)
    opts = tuple((name, v) for name, v in values if v is not None)
    MlqConfig(**dict(opts))  # validate now: a bad value is a usage error, not a failure at first request
    return opts
