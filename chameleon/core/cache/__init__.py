"""Adapter-cache policies, selected by name with `make_cache`."""

from __future__ import annotations

from chameleon.core.cache.base import AdapterCache, CacheEntry
from chameleon.core.cache.policies import ChameleonCache, FairShareCache, LruCache, NoCache, ScoreCache

CACHE_POLICIES = ("chameleon", "lru", "fairshare", "none")


def make_cache(name: str, window_s: float = 300.0) -> AdapterCache:
    """name: chameleon | lru | fairshare | none (S-LoRA). window_s: frequency window in seconds."""
    classes: dict[str, type[AdapterCache]] = {
        "chameleon": ChameleonCache, "lru": LruCache, "fairshare": FairShareCache, "none": NoCache,
    }
    if name not in classes:
        raise ValueError(f"unknown adapter cache {name!r}; choose one of: {', '.join(CACHE_POLICIES)}")
    return classes[name](window_s=window_s)


__all__ = ["CACHE_POLICIES", "AdapterCache", "CacheEntry", "ChameleonCache", "FairShareCache", "LruCache",
           "NoCache", "ScoreCache", "make_cache"]
