"""Profiles by name: the shipped ones, or a profile JSON path."""

from __future__ import annotations

from collections.abc import Callable

from chameleon.sim.paper_a40 import build as a40_llama7b
from chameleon.sim.profile import Profile

SHIPPED: dict[str, Callable[[], Profile]] = {"a40-llama7b": a40_llama7b}


def load_profile(name_or_path: str) -> Profile:
    """`a40-llama7b` (the shipped paper profile: the paper's testbed, derivations in its `sources`; the
    test suite recomputes the calibration) or a path to a profile JSON."""
    if name_or_path in SHIPPED:
        return SHIPPED[name_or_path]()
    return Profile.load(name_or_path)
