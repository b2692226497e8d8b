"""Chameleon's non-preemptive multi-level-queue scheduler (work in progress: interface only)."""

from __future__ import annotations

from chameleon.predictor import OutputPredictor
from chameleon.sched.base import Plan, ScheduleContext, Scheduler, SchedulerLimits
from chameleon.sched.config import MlqConfig


class ChameleonScheduler(Scheduler):
    name = "chameleon"

    def __init__(self, config: MlqConfig | None = None, predictor: OutputPredictor | None = None,
                 limits: SchedulerLimits | None = None) -> None:
        super().__init__(predictor=predictor, limits=limits)
        self.config = config if config is not None else MlqConfig()

    def schedule(self, now: float, ctx: ScheduleContext) -> Plan:
        raise NotImplementedError


class StaticQueuesScheduler(ChameleonScheduler):
    name = "static4"
