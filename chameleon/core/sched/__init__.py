"""Schedulers, selected by name with `make_scheduler`."""

from __future__ import annotations

from dataclasses import fields

from chameleon.core.sched.base import BatchBudget, Plan, ScheduleContext, Scheduler, SchedulerLimits
from chameleon.core.sched.config import MlqConfig
from chameleon.core.sched.fifo import FifoScheduler, SjfScheduler
from chameleon.core.sched.mlq import ChameleonScheduler, StaticQueuesScheduler

SCHEDULERS = ("chameleon", "fifo", "sjf", "static4")


def make_scheduler(name: str, predictor=None, max_batch_size: int = 256, max_prefill_tokens: int = 4096,
                   **cfg) -> Scheduler:
    """name: chameleon | fifo | sjf | static4. Remaining keyword arguments: MlqConfig fields
    (chameleon, static4) or `include_input` (sjf). predictor: an OutputPredictor (default online)."""
    limits = SchedulerLimits(max_batch_size=max_batch_size, max_prefill_tokens=max_prefill_tokens)
    if name in ("chameleon", "static4"):
        known = {f.name for f in fields(MlqConfig)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown {name} scheduler options {unknown}; known: {sorted(known)}")
        cls = ChameleonScheduler if name == "chameleon" else StaticQueuesScheduler
        return cls(MlqConfig(**cfg), predictor=predictor, limits=limits)
    if name == "fifo" and not cfg:
        return FifoScheduler(predictor=predictor, limits=limits)
    if name == "sjf" and set(cfg) <= {"include_input"}:
        return SjfScheduler(predictor=predictor, limits=limits, **cfg)
    if name in ("fifo", "sjf"):
        raise ValueError(f"unknown {name} scheduler options {sorted(cfg)}")
    raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")


__all__ = ["SCHEDULERS", "BatchBudget", "ChameleonScheduler", "FifoScheduler", "MlqConfig", "Plan",
           "ScheduleContext", "Scheduler", "SchedulerLimits", "SjfScheduler", "StaticQueuesScheduler",
           "make_scheduler"]
