"""Weighted Request Size and the sliding window of recent requests the MLQ refresh learns from."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from operator import attrgetter


@dataclass(frozen=True, slots=True)
class Sample:
    """One request as the refresh sees it: WRS inputs (output_tokens = predicted), its quota charge
    `need`, and for finished requests the service time."""

    t: float
    input_tokens: int
    output_tokens: int
    adapter_tokens: int
    need: int
    service_s: float | None = None


class WrsModel:
    """WRS = (a*In/MaxIn + b*Out/MaxOut) * max(AdapterSize/MaxAdapterSize, base_factor).

    Maxima are taken over the sample window at each refresh and raised (never lowered) by every
    classified request in between, so WRS stays within [0, 1]. Adapter sizes are in KV-token
    equivalents. When no adapter was seen in the window the adapter factor is 1 for everyone.
    """

    def __init__(self, a: float = 0.4, b: float = 0.6, base_factor: float = 0.05) -> None:
        self.a, self.b, self.base_factor = a, b, base_factor
        self.max_in = self.max_out = self.max_adapter = 0
        self._since: list[int] | None = None  # maxima observed since `mark()`

    def observe(self, input_tokens: int, output_tokens: int, adapter_tokens: int) -> None:
        self.max_in = max(self.max_in, input_tokens)
        self.max_out = max(self.max_out, output_tokens)
        self.max_adapter = max(self.max_adapter, adapter_tokens)
        if self._since is not None:
            since = self._since
            since[0], since[1] = max(since[0], input_tokens), max(since[1], output_tokens)
            since[2] = max(since[2], adapter_tokens)

    def mark(self) -> None:
        """Start remembering the maxima of what is observed from now on (see `reset_to`)."""
        self._since = [0, 0, 0]

    def reset_to(self, maxima: tuple[int, int, int] | None) -> None:
        """The maxima of a window taken at `mark()` time (None: it was empty, keep the current ones),
        raised by everything observed since: as if `reset` had run at the mark."""
        since, self._since = self._since or [0, 0, 0], None
        if maxima is not None:
            self.max_in, self.max_out, self.max_adapter = map(max, maxima, since)

    def reset(self, samples: list[Sample]) -> None:
        """Recompute the maxima over `samples` (keeps the old ones when there are none)."""
        if samples:
            self.max_in = max(map(attrgetter("input_tokens"), samples))
            self.max_out = max(map(attrgetter("output_tokens"), samples))
            self.max_adapter = max(map(attrgetter("adapter_tokens"), samples))

    def wrs(self, input_tokens: int, output_tokens: int, adapter_tokens: int) -> float:
        size = self.a * input_tokens / max(self.max_in, 1) + self.b * output_tokens / max(self.max_out, 1)
        if self.max_adapter <= 0:
            return size
        return size * max(adapter_tokens / self.max_adapter, self.base_factor)

    def of(self, s: Sample) -> float:
        return self.wrs(s.input_tokens, s.output_tokens, s.adapter_tokens)


class SampleWindow:
    """Arrivals and completions of the last `window_s` seconds (at most `max_samples` of each)."""

    def __init__(self, window_s: float, max_samples: int) -> None:
        self.window_s = window_s
        self.arrivals: deque[Sample] = deque(maxlen=max_samples)
        self.completions: deque[Sample] = deque(maxlen=max_samples)

    def prune(self, now: float) -> None:
        horizon = now - self.window_s
        for dq in (self.arrivals, self.completions):
            while dq and dq[0].t < horizon:
                dq.popleft()

    def span_s(self, now: float) -> float:
        """Seconds the arrival samples cover (at least 1 s, so rates stay finite)."""
        return max(now - self.arrivals[0].t, 1.0) if self.arrivals else 1.0
