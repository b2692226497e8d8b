"""Logits processors and token choice."""

from __future__ import annotations

import math

import pytest
import torch

from shard.server.sampling import (
    RowSampler,
    SamplingParams,
    choose_tokens,
    top_k_filter,
    top_p_filter,
    typical_filter,
)


def _logits(seed: int = 0, v: int = 50) -> torch.Tensor:
    return torch.randn(v, generator=torch.Generator().manual_seed(seed))


def test_greedy_is_argmax_and_logprob_matches():
    logits = torch.stack([_logits(0), _logits(1)])
    samplers = [RowSampler(SamplingParams()), RowSampler(SamplingParams())]
    c = choose_tokens(logits, samplers, [torch.empty(0, dtype=torch.long)] * 2, [0, 3])
    assert c.next_ids == logits.argmax(-1).tolist()
    lp = torch.log_softmax(logits, -1)
    assert c.logprobs[0] == pytest.approx(float(lp[0, c.next_ids[0]]))
    assert c.top_ids[0] == [] and c.top_ids[1] == lp[1].topk(3).indices.tolist()


def test_seeded_sampling_reproduces_and_top_k_1_is_greedy():
    logits = _logits(3).unsqueeze(0)
    hist = [torch.empty(0, dtype=torch.long)]

    def run(params: SamplingParams) -> list[int]:
        s = RowSampler(params)
        return [choose_tokens(logits, [s], hist, [0]).next_ids[0] for _ in range(20)]

    a = run(SamplingParams(do_sample=True, seed=7, temperature=2.0))
    assert a == run(SamplingParams(do_sample=True, seed=7, temperature=2.0))
    assert a != run(SamplingParams(do_sample=True, seed=8, temperature=2.0))
    assert run(SamplingParams(do_sample=True, seed=1, top_k=1)) == [int(logits.argmax())] * 20


def test_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.1)).tolist() == [True, False, False, False]
    kept = torch.isfinite(typical_filter(logits, 0.5))
    assert kept.any() and not kept.all()


def test_penalties_lower_seen_tokens():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0])
    hist = torch.tensor([0, 1, 1])
    rep = RowSampler(SamplingParams(repetition_penalty=2.0)).penalize(logits.clone(), hist)
    assert rep.tolist() == [1.0, -2.0, 0.5, 0.0]
    freq = RowSampler(SamplingParams(frequency_penalty=1.5)).penalize(logits.clone(), hist)
    assert freq.tolist() == pytest.approx([2.0 - 1.5 / 3, -1.0 - 3.0 / 3, 0.5, 0.0])


def test_penalty_changes_greedy_choice():
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    s = RowSampler(SamplingParams(repetition_penalty=1.5))
    assert choose_tokens(logits, [s], [torch.tensor([0])], [0]).next_ids == [1]


@pytest.mark.parametrize("field,value", [("temperature", -1.0), ("top_p", 1.5), ("typical_p", 2.0),
                                         ("repetition_penalty", -0.5), ("frequency_penalty", math.inf)])
def test_bad_parameters_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).validate()
