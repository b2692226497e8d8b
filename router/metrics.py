"""Prometheus metrics of one router process (a registry per instance; nothing global).

Request metrics carry TGI's names (`tgi_*`, what a TGI dashboard reads). TGI's counters have no
`_total` suffix, so counters are written by hand in the text format; histograms come from
prometheus_client. Engine state (queues, cache, pool, headroom) is read from `Engine.stats()` at
scrape time by router.metrics_engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from router.engine.types import FinalEvent
from router.metrics_engine import EngineStatsCollector
from router.metrics_ie import InferenceExtensionCollector

_DURATION = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_STEP = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Counters:
    """Monotonic counters written in TGI's style (`# TYPE tgi_request_count counter`, no `_total`)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._help: dict[str, str] = {}

    def declare(self, name: str, help_text: str) -> None:
        self._help[name] = help_text

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, name: str, **labels: str) -> float:
        return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        for name, help_text in self._help.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            samples = [(lab, v) for (n, lab), v in sorted(self._values.items()) if n == name]
            if not samples and name in _UNLABELLED:
                samples = [((), 0.0)]
            for labels, value in samples:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")
        return "\n".join(lines) + "\n"


_UNLABELLED = {"tgi_request_count", "tgi_request_success", "chameleon_request_cancelled"}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class RouterMetrics:
    def __init__(
        self,
        engine_stats: Callable[[], Mapping[str, Any]] | None = None,
        block_size: Callable[[], int] = lambda: 1,
        model_name: str = "",
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counters = _Counters()
        self.counters.declare("tgi_request_count", "Requests received")
        self.counters.declare("tgi_request_success", "Requests that finished")
        self.counters.declare("tgi_request_failure", "Requests refused or failed, by error type")
        self.counters.declare("chameleon_request_cancelled", "Requests the client cancelled before the end")
        h = self._histogram
        self.duration = h("tgi_request_duration", "End-to-end generation time (s)", _DURATION)
        self.validation = h(
            "tgi_request_validation_duration", "Validation and tokenization time (s)", _DURATION
        )
        self.queue = h("tgi_request_queue_duration", "Time from arrival to admission (s)", _DURATION)
        self.inference = h("tgi_request_inference_duration", "Time from admission to the end (s)", _DURATION)
        self.per_token = h(
            "tgi_request_mean_time_per_token_duration", "Inference time per generated token (s)", _PER_TOKEN
        )
        self.generated = h("tgi_request_generated_tokens", "Generated tokens per request", _TOKENS)
        self.input_length = h("tgi_request_input_length", "Prompt tokens per request", _TOKENS)
        self.batch_inference = Histogram("tgi_batch_inference_duration", "Batch step time, router side (s)",
                                         ["method"], buckets=_STEP, registry=self.registry)
        self.batch_forward = Histogram("tgi_batch_forward_duration", "Batch forward time, shard side (s)",
                                       ["method"], buckets=_STEP, registry=self.registry)
        if engine_stats is not None:
            self.registry.register(EngineStatsCollector(engine_stats, block_size))
            # the Gateway API Inference Extension's model-server series (router/metrics_ie.py)
            self.registry.register(InferenceExtensionCollector(engine_stats, block_size, lambda: model_name))

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, buckets=buckets, registry=self.registry)

    def observe_batch(self, method: str, inference_s: float, forward_s: float) -> None:
        """One Prefill or Decode step (`method` "prefill" | "decode"); the engine calls this through
        `Engine.step_observers` when it offers that hook."""
        self.batch_inference.labels(method=method).observe(inference_s)
        self.batch_forward.labels(method=method).observe(forward_s)

    def request_started(self) -> None:
        self.counters.inc("tgi_request_count")

    def validation_done(self, seconds: float) -> None:
        self.validation.observe(seconds)

    def request_failed(self, kind: str) -> None:
        self.counters.inc("tgi_request_failure", err=kind)

    def request_cancelled(self) -> None:
        self.counters.inc("chameleon_request_cancelled")

    def request_succeeded(self, final: FinalEvent, total_s: float) -> None:
        self.counters.inc("tgi_request_success")
        self.duration.observe(total_s)
        self.queue.observe(final.queue_s)
        self.inference.observe(final.inference_s)
        if final.generated_tokens > 0:
            self.per_token.observe(final.inference_s / final.generated_tokens)
        self.generated.observe(final.generated_tokens)
        self.input_length.observe(final.input_length)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return self.counters.render().encode() + generate_latest(self.registry)
