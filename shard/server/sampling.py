"""Next-token choice: logits processors (penalties, temperature, top-k, top-p, typical-p) and the
greedy / seeded-sampling choice, per request, applied to one batch step.

Semantics follow TGI's NextTokenChooser: penalties apply in greedy and sampling mode; the warpers
(temperature, top-k, top-p, typical-p) apply only when `do_sample` is true; greedy is the argmax.
Proto3 zero values mean "unset" (temperature 0 -> 1.0, top_p 0 -> 1.0, repetition_penalty 0 -> 1.0).
Each sampling request owns a host (CPU) `torch.Generator` seeded from its `seed`: a sampled step draws
one uniform number from it and picks the token on the logits' device by inverse CDF (`sample_index`), so
a request reproduces its tokens whatever batch it shares (generator state travels with the request
through filter/concat) and on whatever device the logits live (no per-device generator to keep).
Every tensor the processors create lives on the logits' device.

TGIS's EOS shaping (`EosShaping`) comes first, before penalties and warpers, as in TGIS: EOS is masked
out while fewer than `min_new_tokens` tokens are generated, then the exponential decay length penalty
raises the EOS score. A row with active shaping never takes the plain-greedy fast path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from shard.model.backend import TorchBackend

if TYPE_CHECKING:
    from chameleon_pb import generate_pb2

    from shard.model.backend import Backend

TORCH_OPS = TorchBackend()


@dataclass(frozen=True, slots=True)
class SamplingParams:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    seed: int = 0

    @classmethod
    def from_pb(cls, p: generate_pb2.NextTokenChooserParameters) -> SamplingParams:
        """From a generate.v3 NextTokenChooserParameters; validates ranges (ValueError on bad input)."""
        params = cls(
            do_sample=bool(p.do_sample),
            temperature=float(p.temperature) or 1.0,
            top_k=int(p.top_k),
            top_p=float(p.top_p) or 1.0,
            typical_p=float(p.typical_p) or 1.0,
            repetition_penalty=float(p.repetition_penalty) or 1.0,
            frequency_penalty=float(p.frequency_penalty),
            seed=int(p.seed),
        )
        params.validate()
        return params

    def validate(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.typical_p <= 1:
            raise ValueError(f"typical_p must be in (0, 1], got {self.typical_p}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not math.isfinite(self.frequency_penalty):
            raise ValueError("frequency_penalty must be finite")

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: no per-row processing needed."""
        return not self.do_sample and not self.has_penalties


EOS_LOGIT_BOUND = 1e30  # a boosted EOS score stays finite (softmax and logsumexp stay defined)


@dataclass(frozen=True, slots=True)
class EosShaping:
    """TGIS's min_new_tokens EOS mask and exponential decay length penalty for one request.

    With `generated` tokens produced so far (the step chooses token number generated + 1): while
    generated < min_new_tokens every EOS logit is -inf; after that, when decay > 1 and generated >
    start, each finite EOS score s becomes s + |s| * (decay ** (generated - start) - 1)
    (transformers' ExponentialDecayLengthPenalty as TGIS applies it), bounded by +-EOS_LOGIT_BOUND.
    """

    eos_ids: tuple[int, ...]
    min_new_tokens: int = 0
    start: int = 0
    decay: float = 1.0

    @classmethod
    def build(cls, eos_ids: tuple[int, ...], min_new_tokens: int, start: int,
              decay: float) -> EosShaping | None:
        """None when nothing applies (no EOS id, or no minimum and no penalty)."""
        if not math.isfinite(decay) or decay < 0:
            raise ValueError(f"length penalty decay must be finite and >= 0 (<= 1: off), got {decay}")
        shaping = cls(tuple(sorted(eos_ids)), max(min_new_tokens, 0), max(start, 0), decay)
        return shaping if eos_ids and (min_new_tokens > 0 or decay > 1.0) else None

    def active(self, generated: int) -> bool:
        return generated < self.min_new_tokens or (self.decay > 1.0 and generated > self.start)

    def apply(self, row: torch.Tensor, generated: int) -> torch.Tensor:
        """Shape the EOS logits of one row [V] in place (on the row's device); returns it."""
        ids = torch.tensor(self.eos_ids, dtype=torch.long, device=row.device)
        ids = ids[ids < row.numel()]
        if generated < self.min_new_tokens:
            row[ids] = -math.inf
        elif self.decay > 1.0 and generated > self.start:
            try:
                grow = self.decay ** (generated - self.start) - 1.0
            except OverflowError:
                grow = math.inf
            score = row[ids]
            boosted = score + score.abs() * min(grow, EOS_LOGIT_BOUND)
            boosted = boosted.clamp(-EOS_LOGIT_BOUND, EOS_LOGIT_BOUND)
            row[ids] = torch.where(torch.isfinite(score), boosted, score)
        return row


class RowSampler:
    """Per-request sampler state: parameters, EOS shaping and the request's own random generator."""

    __slots__ = ("eos", "generator", "params")

    def __init__(self, params: SamplingParams, eos: EosShaping | None = None) -> None:
        self.params = params
        self.eos = eos
        self.generator: torch.Generator | None = None  # host RNG: one uniform draw per sampled step
        if params.do_sample:
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(params.seed)

    def plain_at(self, generated: int) -> bool:
        """True when this step's choice is the argmax of the raw logits (the fast path may skip it)."""
        return self.params.plain_greedy and (self.eos is None or not self.eos.active(generated))

    def penalize(self, logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Repetition penalty (CTRL style) and frequency penalty (TGI: normalized counts) over
        `history` (every prompt and generated token so far, int64, on the logits' device). logits: [V]."""
        p = self.params
        if p.repetition_penalty != 1.0 and history.numel():
            seen = history.unique()
            score = logits[seen]
            logits[seen] = torch.where(score < 0, score * p.repetition_penalty, score / p.repetition_penalty)
        if p.frequency_penalty != 0.0 and history.numel():
            freq = torch.bincount(history, minlength=logits.numel()).to(logits.dtype) / history.numel()
            logits -= p.frequency_penalty * freq
        if p.has_penalties:  # an extreme (valid) penalty may overflow: keep every logit finite
            big = torch.finfo(logits.dtype).max
            logits.clamp_(-big, big)
        return logits

    def warp(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.temperature != 1.0:
            # shifted so the largest logit is 0: a tiny temperature (1e-45 is a valid float) then sends
            # the others to -inf instead of the best to +inf, and softmax stays finite (same probabilities)
            logits = (logits - logits.max()) / p.temperature
        if p.top_k > 0:
            logits = top_k_filter(logits, p.top_k)
        if p.top_p < 1.0:
            logits = top_p_filter(logits, p.top_p)
        if p.typical_p < 1.0:
            logits = typical_filter(logits, p.typical_p)
        return logits

    def choose(self, logits: torch.Tensor) -> int:
        if not self.params.do_sample:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float(), dim=-1)
        return sample_index(probs, float(torch.rand((), dtype=torch.float64, generator=self.generator)))


def sample_index(probs: torch.Tensor, u: float) -> int:
    """The token drawn from probs [V] (on any device) by the uniform number u in [0, 1): the first token
    whose cumulative probability exceeds u * total (kept below the total, so u near 1 draws the last
    token of positive probability). A token of probability 0 is never drawn (should a parallel cumsum's
    rounding land on one, the most likely token is taken instead)."""
    cdf = probs.cumsum(-1)
    total = cdf[-1:]
    below = torch.minimum(total * u, torch.nextafter(total, torch.zeros_like(total)))
    pick = torch.searchsorted(cdf, below, right=True).clamp_(max=probs.numel() - 1)  # [1]
    pick = torch.where(probs[pick] > 0, pick, probs.argmax().unsqueeze(0))
    return int(pick)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.numel())
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, -math.inf)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass reaches top_p (>= 1 token)."""
    sorted_logits, order = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove = cum <= (1 - top_p)
    remove[-1] = False
    return logits.masked_fill(remove.scatter(0, order, remove), -math.inf)


def typical_filter(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al.), as transformers' TypicalLogitsWarper."""
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp * logp.exp()).nansum()
    shifted = (-logp - entropy).abs()
    sorted_shifted, order = torch.sort(shifted, descending=False)
    cum = logits[order].softmax(-1).cumsum(-1)
    last = min(int((cum < mass).sum()), shifted.numel() - 1)
    remove = sorted_shifted > sorted_shifted[last]
    remove[0] = False
    return logits.masked_fill(remove.scatter(0, order, remove), -math.inf)


@dataclass(frozen=True, slots=True)
class StepChoice:
    """One step's choice for every row of a batch."""

    next_ids: list[int]
    logprobs: list[float]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


def choose_tokens(logits: torch.Tensor, samplers: list[RowSampler], histories: list[torch.Tensor],
                  top_n: list[int], generated: list[int] | None = None,
                  ops: Backend = TORCH_OPS) -> StepChoice:
    """Pick the next token of every row. logits: [S, V] float; histories[i]: int64 token ids of row i;
    generated[i]: tokens row i has generated so far (None: all 0), for its EOS shaping; `ops`: the
    runner's backend (its lse_argmax).

    Logprobs are taken after EOS shaping, penalties and warpers (what the token was chosen from), as in
    TGI/TGIS.
    """
    logits = logits.float()
    done = generated if generated is not None else [0] * len(samplers)
    rows = [i for i, s in enumerate(samplers) if not s.plain_at(done[i])]
    if rows:
        logits = logits.clone()
        for i in rows:
            s = samplers[i]
            if s.eos is not None:
                s.eos.apply(logits[i], done[i])
            row = s.penalize(logits[i], histories[i])
            logits[i] = s.warp(row) if s.params.do_sample else row
    lse, next_ids = ops.lse_argmax(logits)  # [S]; logprob = logit - lse, without a [S, V] log_softmax
    for i in rows:
        next_ids[i] = samplers[i].choose(logits[i])
    picked_ids = torch.tensor(next_ids, dtype=torch.long, device=logits.device)
    picked = logits.gather(1, picked_ids.unsqueeze(1)).squeeze(1)
    chosen = (picked - lse).tolist()
    top_ids: list[list[int]] = [[] for _ in samplers]
    top_lps: list[list[float]] = [[] for _ in samplers]
    n_max = max(top_n, default=0)
    if n_max > 0:
        vals, idx = torch.topk(logits, min(n_max, logits.shape[1]), dim=-1)
        vals = vals - lse.unsqueeze(1)
        for i, n in enumerate(top_n):
            top_ids[i], top_lps[i] = idx[i, :n].tolist(), vals[i, :n].tolist()
    return StepChoice(next_ids, chosen, top_ids, top_lps)
