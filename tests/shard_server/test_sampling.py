"""Logits processors and token choice."""

from __future__ import annotations

import math

import pytest
import torch

from shard.server.sampling import (
    EosShaping,
    RowSampler,
    SamplingParams,
    choose_tokens,
    sample_index,
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


EOS = 3
NO_HISTORY = [torch.empty(0, dtype=torch.long)]


def _eos_first(v: int = 8) -> torch.Tensor:
    logits = torch.zeros(1, v)
    logits[0, EOS], logits[0, 5] = 4.0, 1.0
    return logits


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(do_sample=True, seed=3, top_k=2)])
def test_min_new_tokens_masks_eos_even_on_the_greedy_fast_path(params):
    eos = EosShaping.build((EOS,), min_new_tokens=2, start=0, decay=1.0)
    s = RowSampler(params, eos)
    assert not s.plain_at(0) and not s.plain_at(1) and s.plain_at(2) == params.plain_greedy
    for generated in (0, 1):
        c = choose_tokens(_eos_first(), [s], NO_HISTORY, [2], [generated])
        assert c.next_ids[0] != EOS and EOS not in c.top_ids[0]
        masked = _eos_first()[0]
        masked[EOS] = -math.inf
        if not params.do_sample:  # the logprob is taken from the masked logits
            assert c.logprobs[0] == pytest.approx(float(torch.log_softmax(masked, -1)[5]))
    if not params.do_sample:
        assert choose_tokens(_eos_first(), [s], NO_HISTORY, [0], [2]).next_ids[0] == EOS


def test_eos_mask_leaves_other_rows_alone():
    shaped = RowSampler(SamplingParams(), EosShaping.build((EOS,), 5, 0, 1.0))
    plain = RowSampler(SamplingParams())
    logits = torch.cat([_eos_first(), _eos_first()])
    c = choose_tokens(logits, [shaped, plain], NO_HISTORY * 2, [0, 0], [0, 0])
    assert c.next_ids == [5, EOS]


@pytest.mark.parametrize("score", [-2.0, 1.5])
def test_length_penalty_raises_the_eos_score_as_specified(score):
    shaping = EosShaping.build((EOS,), min_new_tokens=0, start=4, decay=1.5)
    row = torch.full((8,), 0.25)
    row[EOS] = score
    assert not shaping.active(4) and shaping.active(7)
    out = shaping.apply(row.clone(), 7)
    assert float(out[EOS]) == pytest.approx(score + abs(score) * (1.5 ** 3 - 1))
    assert torch.equal(out[:EOS], row[:EOS]) and torch.equal(out[EOS + 1:], row[EOS + 1:])
    assert float(out[EOS]) > score


def test_length_penalty_makes_greedy_stop_earlier():
    logits = torch.zeros(1, 8)
    logits[0, EOS], logits[0, 5] = -1.0, 2.5  # EOS is far behind
    s = RowSampler(SamplingParams(), EosShaping.build((EOS,), 0, 2, 2.0))
    picks = [choose_tokens(logits, [s], NO_HISTORY, [0], [g]).next_ids[0] for g in range(6)]
    # EOS score -1 + (2^k - 1), k = generated - 2, beats 2.5 from k = 3, i.e. once 5 tokens are generated
    assert picks == [5, 5, 5, 5, 5, EOS]


def test_length_penalty_overflow_stays_finite():
    shaping = EosShaping.build((EOS,), 0, 0, 10.0)
    out = shaping.apply(_eos_first()[0], 10_000)
    assert torch.isfinite(out).all() and int(out.argmax()) == EOS
    c = choose_tokens(_eos_first(), [RowSampler(SamplingParams(do_sample=True, temperature=0.5), shaping)],
                      NO_HISTORY, [1], [10_000])
    assert c.next_ids == [EOS] and math.isfinite(c.logprobs[0])


def test_shaping_is_off_without_minimum_or_penalty_and_bad_decay_is_refused():
    assert EosShaping.build((EOS,), 0, 5, 1.0) is None
    assert EosShaping.build((), 4, 0, 2.0) is None
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="decay"):
            EosShaping.build((EOS,), 0, 0, bad)


@pytest.mark.parametrize("temperature", [1.4e-45, 1e-38, 1e-30, 1e30, 3.4e38])
def test_extreme_temperatures_sample_without_nan(temperature: float) -> None:
    """Any finite temperature > 0 passes validation; the step must not fail on it (a failed step
    would fail the whole batch). A tiny one picks the argmax; a huge one samples near-uniformly."""
    logits = torch.randn(2, 300, generator=torch.Generator().manual_seed(3)) * 8
    samplers = [RowSampler(SamplingParams(do_sample=True, temperature=temperature, seed=i)) for i in range(2)]
    choice = choose_tokens(logits, samplers, [torch.empty(0, dtype=torch.long)] * 2, [3, 3])
    assert all(math.isfinite(x) for x in choice.logprobs)
    if temperature < 1e-20:
        assert choice.next_ids == logits.argmax(-1).tolist()


@pytest.mark.parametrize("penalty", [1.2e-38, 1e-30, 1e30, 3.4e38])
def test_extreme_repetition_penalties_keep_logits_finite(penalty: float) -> None:
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(5)) * 8
    sampler = RowSampler(SamplingParams(do_sample=True, repetition_penalty=penalty, seed=1))
    choice = choose_tokens(logits, [sampler], [torch.arange(0, 300, 2)], [2])
    assert all(math.isfinite(x) for x in choice.logprobs)


def test_sample_index_is_the_inverse_cdf_and_never_draws_zero_probability() -> None:
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    grid = [sample_index(probs, (k + 0.5) / 1000) for k in range(1000)]  # evenly spread uniforms
    assert [grid.count(i) for i in range(5)] == [100, 0, 600, 300, 0]
    assert sample_index(probs, 0.0) == 0 and sample_index(probs, 1.0 - 2 ** -53) == 3
    assert sample_index(torch.tensor([0.0, 0.0, 1.0]), 0.0) == 2
