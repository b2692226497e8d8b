"""Output-length predictors: what the scheduler believes a request will generate.

The paper uses a BERT proxy model (~80% accurate). Here the production predictor is cheap online
statistics; `OraclePredictor` and `NoisyOraclePredictor` let experiments inject perfect or degraded
knowledge. Every prediction is clamped to [1, max_new_tokens].
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import deque

from chameleon.core.request import Request


def _clamp(value: float, req: Request) -> int:
    return max(1, min(round(value), max(1, req.max_new_tokens)))


class OutputPredictor(ABC):
    """predict() must be deterministic given the same history; observe() feeds finished requests."""

    @abstractmethod
    def predict(self, req: Request) -> int:
        """Predicted number of generated tokens, in [1, req.max_new_tokens]."""

    def observe(self, adapter_id: str | None, output_tokens: int) -> None:  # noqa: B027 (optional hook)
        """A request of `adapter_id` finished after generating `output_tokens` tokens."""


class OnlinePredictor(OutputPredictor):
    """Mean of the last `window` outputs of the same adapter; falls back to the global mean, then to
    `default_output` when nothing has been observed. Needs `min_samples` per adapter before trusting it.
    """

    def __init__(self, window: int = 64, min_samples: int = 4, default_output: int = 128) -> None:
        if window < 1 or min_samples < 1 or default_output < 1:
            raise ValueError("window, min_samples and default_output must all be >= 1")
        self.window = window
        self.min_samples = min_samples
        self.default_output = default_output
        self._per: dict[str | None, tuple[deque[int], list[int]]] = {}
        self._global: deque[int] = deque(maxlen=window * 4)
        self._global_sum = 0

    def observe(self, adapter_id: str | None, output_tokens: int) -> None:
        hist, total = self._per.setdefault(adapter_id, (deque(), [0]))
        hist.append(output_tokens)
        total[0] += output_tokens
        if len(hist) > self.window:
            total[0] -= hist.popleft()
        if len(self._global) == self._global.maxlen:
            self._global_sum -= self._global[0]
        self._global.append(output_tokens)
        self._global_sum += output_tokens

    def predict(self, req: Request) -> int:
        entry = self._per.get(req.adapter_id)
        if entry is not None and len(entry[0]) >= self.min_samples:
            return _clamp(entry[1][0] / len(entry[0]), req)
        if self._global:
            return _clamp(self._global_sum / len(self._global), req)
        return _clamp(self.default_output, req)


class OraclePredictor(OutputPredictor):
    """Perfect knowledge: the request's true output length (max_new_tokens when unknown)."""

    def predict(self, req: Request) -> int:
        true = req.true_output_tokens
        return _clamp(req.max_new_tokens if true is None else true, req)


class NoisyOraclePredictor(OutputPredictor):
    """Right with probability `p`; otherwise off by a factor drawn log-uniformly in [2, max_factor],
    too long or too short with equal odds. The draw depends only on (seed, request id), so results do
    not depend on the order of calls.
    """

    def __init__(self, p: float, seed: int = 0, max_factor: float = 8.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"accuracy p must be in [0, 1], got {p}")
        if max_factor < 2.0:
            raise ValueError(f"max_factor must be >= 2, got {max_factor}")
        self.p = p
        self.seed = seed
        self.max_factor = max_factor

    def predict(self, req: Request) -> int:
        true = req.max_new_tokens if req.true_output_tokens is None else req.true_output_tokens
        rng = random.Random(self.seed * 1_000_003 + req.id)
        if rng.random() < self.p:
            return _clamp(true, req)
        factor = 2.0 * (self.max_factor / 2.0) ** rng.random()
        return _clamp(true * factor if rng.random() < 0.5 else true / factor, req)


def make_predictor(name: str, p: float = 0.8, seed: int = 0) -> OutputPredictor:
    """name: online | oracle | noisy (noisy oracle with accuracy p)."""
    if name == "online":
        return OnlinePredictor()
    if name == "oracle":
        return OraclePredictor()
    if name == "noisy":
        return NoisyOraclePredictor(p, seed)
    raise ValueError(f"unknown predictor {name!r}; choose one of: online, oracle, noisy")
