"""The eviction policies: Chameleon's cost-aware score, FairShare, LRU and S-LoRA's no-cache."""

from __future__ import annotations

from collections.abc import Container

from chameleon.core.cache.base import AdapterCache, CacheEntry


class ScoreCache(AdapterCache):
    """score = F*frequency + R*recency + S*size, each normalised to [0, 1] across the candidates;
    the lowest score is evicted first (small, rarely and long-ago used adapters are cheap to reload).

    Normalisation (our choice): frequency / max frequency (window counts); recency =
    (last_used - oldest) / (newest - oldest), 1.0 when all are equal; size = nbytes / max nbytes.
    Ties break by older last use, then adapter id.
    """

    name = "score"

    def __init__(self, f: float, r: float, s: float, window_s: float = 300.0) -> None:
        super().__init__(window_s)
        if min(f, r, s) < 0:
            raise ValueError(f"score weights must be >= 0, got F={f} R={r} S={s}")
        self.weights = (f, r, s)

    def scores(self, idle: list[CacheEntry], now: float) -> dict[str, float]:
        if not idle:
            return {}
        freq = {e.adapter_id: self.frequency(e.adapter_id, now) for e in idle}
        max_f = max(freq.values()) or 1
        oldest = min(e.last_used for e in idle)
        span = max(e.last_used for e in idle) - oldest
        max_s = max(e.spec.nbytes for e in idle) or 1
        f, r, s = self.weights
        out = {}
        for e in idle:
            recency = (e.last_used - oldest) / span if span > 0 else 1.0
            out[e.adapter_id] = f * freq[e.adapter_id] / max_f + r * recency + s * e.spec.nbytes / max_s
        return out

    def _order(self, idle: list[CacheEntry], now: float) -> list[CacheEntry]:
        sc = self.scores(idle, now)
        return sorted(idle, key=lambda e: (sc[e.adapter_id], e.last_used, e.adapter_id))


class ChameleonCache(ScoreCache):
    """The paper's weights: F=0.45, R=0.10, S=0.45."""

    name = "chameleon"

    def __init__(self, window_s: float = 300.0, f: float = 0.45, r: float = 0.10, s: float = 0.45) -> None:
        super().__init__(f, r, s, window_s)


class FairShareCache(ScoreCache):
    """Equal weights F=R=S=1/3 (the paper's 'FairShare' baseline)."""

    name = "fairshare"

    def __init__(self, window_s: float = 300.0) -> None:
        super().__init__(1 / 3, 1 / 3, 1 / 3, window_s)


class LruCache(AdapterCache):
    """Least recently used idle entry first."""

    name = "lru"

    def _order(self, idle: list[CacheEntry], now: float) -> list[CacheEntry]:
        return sorted(idle, key=lambda e: (e.last_used, e.adapter_id))


class NoCache(AdapterCache):
    """S-LoRA: adapters of the running batch and of queued requests are resident (queued ones are
    prefetched); an adapter is dropped as soon as no running request uses it and no queued request
    waits for it. Among idle (necessarily queued-for or prefetched) entries, LRU order."""

    name = "none"
    drops_idle = True

    def keep_idle(self, entry: CacheEntry, queued: Container[str]) -> bool:
        return entry.adapter_id in queued

    def _order(self, idle: list[CacheEntry], now: float) -> list[CacheEntry]:
        return sorted(idle, key=lambda e: (e.last_used, e.adapter_id))
