"""Step-time and load-time model of one engine iteration (a roofline in three terms).

    step = overhead + max(weight_read, compute_per_token * work) + kv_read_per_token * context
    work = tokens + lora_compute_per_rank * sum(rank of each token's adapter)

`tokens` = prompt tokens prefilled this step + one token per decoding request; `context` = context
tokens the decoding requests attend over (prompt + generated). Small batches are memory bound (the
weights are streamed once per step), large ones compute bound. Prefill attention (quadratic) is left
out: at the scaled prompt lengths it is under 1% of the linear work.

An adapter load moves its true size over the host link: load = overhead + bytes / h2d bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

from chameleon.sim.profile import Profile


@dataclass(frozen=True, slots=True)
class CostModel:
    profile: Profile

    def step_time(self, tokens: int, lora_rank_tokens: int = 0, context_tokens: int = 0) -> float:
        """Duration (s) of one iteration; 0 when there is no work at all."""
        if tokens <= 0:
            return 0.0
        p = self.profile
        work = tokens + p.lora_compute_per_rank * lora_rank_tokens
        return (p.step_overhead_s + max(p.weight_read_s, p.compute_s_per_token * work)
                + p.kv_read_s_per_token * context_tokens)

    def load_time(self, nbytes: int) -> float:
        """Host-to-device copy of one adapter."""
        if nbytes <= 0:
            return 0.0
        return self.profile.load_overhead_s + nbytes / self.profile.h2d_bytes_per_s

    def unloaded_ttft(self, rank: int, input_tokens: int) -> float:
        """An idle engine: load the adapter (not cached), then one prefill step that emits token 1."""
        load = self.load_time(self.profile.bytes_for_rank(rank))
        return load + self.step_time(input_tokens, input_tokens * rank)

    def prefill_time(self, input_tokens: int, rank: int = 0) -> float:
        """A prefill step alone (lower bound of the prefill part of any TTFT)."""
        return self.step_time(input_tokens, input_tokens * rank)
