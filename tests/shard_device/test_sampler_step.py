"""The sampler's tensor code (EOS shaping, penalties, temperature, top-k, top-p, typical-p, seeded
sampling, logprobs, top-n) and a whole generation step (Batch from generate.v3 requests, prefill with
prompt logprobs as the router's Warmup sends it, decode, adapters) on fake CUDA tensors: no op mixes
devices, and the tokens, logprobs and texts equal a CPU run's (a seed gives the same tokens on any
device: the request's host generator draws one uniform number per step)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from chameleon_pb import generate_pb2
from transformers import AutoTokenizer

from shard.model.dist import DistContext
from shard.model.runner import ModelRunner
from shard.server.batch import Batch, BatchContext
from shard.server.sampling import EosShaping, RowSampler, SamplingParams, choose_tokens
from shard.server.step import StepEnv, generate_step
from tests.shard_device.fake_cuda import CUDA, fake_cuda, host

V = 300
EOS = 3


def _samplers() -> list[RowSampler]:
    return [
        RowSampler(SamplingParams()),
        RowSampler(SamplingParams(repetition_penalty=1.3, frequency_penalty=0.4)),
        RowSampler(SamplingParams(do_sample=True, seed=11, temperature=0.7, top_k=40, top_p=0.9,
                                  repetition_penalty=1.1)),
        RowSampler(SamplingParams(do_sample=True, seed=12, typical_p=0.8, frequency_penalty=0.2),
                   EosShaping.build((EOS,), 3, 0, 1.0)),
        RowSampler(SamplingParams(do_sample=True, seed=13), EosShaping.build((EOS,), 0, 1, 1.5)),
    ]


def _choices(device: str | torch.device) -> list[tuple[list[int], list[float], list[list[int]]]]:
    samplers, out = _samplers(), []
    gen = torch.Generator().manual_seed(5)
    histories = [torch.randint(0, V, (n,), generator=gen).to(device) for n in (0, 9, 14, 6, 3)]
    for step in range(4):
        logits = (torch.randn(len(samplers), V, generator=gen) * 4).to(device)
        c = choose_tokens(logits, samplers, histories, [0, 3, 5, 0, 2], [step] * len(samplers))
        out.append((c.next_ids, c.logprobs, c.top_ids))
    return out


def test_sampler_tensor_code_stays_on_the_device_and_matches_cpu() -> None:
    with fake_cuda() as mode:
        got = _choices(CUDA)
    assert mode.checked > 100
    want = _choices("cpu")
    for (ids, lps, tops), (ids_w, lps_w, tops_w) in zip(got, want, strict=True):
        assert ids == ids_w and tops == tops_w
        assert lps == pytest.approx(lps_w, rel=1e-6, abs=1e-6)


def _request(rid: int, prompt: str, blocks: list[int], adapter: str | None, **params) -> generate_pb2.Request:
    r = generate_pb2.Request(id=rid, inputs=prompt, blocks=blocks, prefill_logprobs=True, top_n_tokens=2)
    r.stopping_parameters.max_new_tokens = 6
    r.stopping_parameters.ignore_eos_token = True
    for key, value in params.items():
        setattr(r.parameters, key, value)
    if adapter is not None:
        r.adapter_id = adapter
    return r


def _generate(root: Path, device: str | torch.device) -> list[list[generate_pb2.Generation]]:
    """A prefill of four requests (greedy, penalties, two seeded samplers; base and adapters) and decode
    steps until they finish; the generations of every step."""
    runner = ModelRunner(root / "model", dtype=torch.float32, device=device, dist=DistContext.single(),
                         backend="torch")
    adapters = sorted(p.name for p in (root / "adapters").iterdir())[:3]
    pages = {a: runner.adapter_store.pages_needed(root / "adapters" / a) for a in adapters}
    kv_pages = 9
    runner.allocate_pool(kv_pages + sum(pages.values()))
    start = kv_pages
    for a in adapters:
        runner.adapter_store.load(a, root / "adapters" / a, list(range(start, start + pages[a])))
        start += pages[a]
    tok = AutoTokenizer.from_pretrained(str(root / "model"))
    ctx = BatchContext(tok, frozenset({2}), runner.block_size, runner.num_pages, 2048)
    requests = [
        _request(1, "def main():", [1, 2], None),
        _request(2, "import os\nimport sys", [3, 4], adapters[0], repetition_penalty=1.4,
                 frequency_penalty=0.5),
        _request(3, "class Queue:", [5, 6], adapters[1], do_sample=True, seed=7, temperature=0.8, top_k=20,
                 top_p=0.9),
        _request(4, "return x", [7, 8], adapters[2], do_sample=True, seed=8, typical_p=0.7),
    ]
    env = StepEnv(runner, tok, frozenset(tok.all_special_ids))
    batch: Batch | None = Batch.from_pb(generate_pb2.Batch(id=1, requests=requests), ctx)
    steps = []
    while batch is not None:
        result = generate_step(env, batch)
        steps.append(result.generations)
        batch = result.next_batch
    return steps


def _summary(gens: list[generate_pb2.Generation]) -> list[tuple]:
    return [(g.request_id, list(g.tokens.ids), list(g.tokens.texts), list(g.prefill_tokens.ids),
             [list(t.ids) for t in g.top_tokens], g.generated_text.text) for g in gens]


def test_generation_steps_stay_on_the_device_and_match_cpu(tiny_assets: Path) -> None:
    with fake_cuda() as mode:
        got = _generate(tiny_assets, CUDA)
    assert mode.checked > 1000
    want = _generate(tiny_assets, "cpu")
    assert len(got) == len(want) == 6
    for step, step_w in zip(got, want, strict=True):
        assert _summary(step) == _summary(step_w)
        for g, w in zip(step, step_w, strict=True):
            assert list(g.tokens.logprobs) == pytest.approx(list(w.tokens.logprobs), rel=1e-4, abs=1e-4)
            assert list(g.prefill_tokens.logprobs) == pytest.approx(list(w.prefill_tokens.logprobs), rel=1e-4,
                                                                    abs=1e-4, nan_ok=True)


def test_host_copies_are_plain_tensors() -> None:
    with fake_cuda():
        x = torch.ones(2, device=CUDA)
    assert host(x).device.type == "cpu"
