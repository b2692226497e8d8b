"""chameleon.scale.prompt_size: prompt text of TGI and OpenAI bodies, and chars -> tokens."""

from __future__ import annotations

import json

import pytest

from chameleon.scale.prompt_size import PromptSizer, prompt_chars


def test_prompt_chars_of_tgi_and_openai_bodies():
    assert prompt_chars("/generate", json.dumps({"inputs": "hello"}).encode()) == 5
    assert prompt_chars("/generate_stream", json.dumps({"inputs": "hé"}).encode()) == 2
    assert prompt_chars("/v1/completions", json.dumps({"prompt": ["ab", "cde"]}).encode()) == 5
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url"}]
    chat = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": parts}]}
    assert prompt_chars("/v1/chat/completions?x=1", json.dumps(chat).encode()) == 10
    for path, body in (("/generate", b"not json"), ("/generate", b"[1]"), ("/generate", b'{"inputs": 3}'),
                       ("/v1/chat/completions", b'{"messages": []}'), ("/generate", b"\xff")):
        assert prompt_chars(path, body) is None


def test_sizer_scales_chars_by_the_ratio_of_the_means():
    sizer = PromptSizer(weight=0.5)
    assert sizer.tokens(40, [10.0]) is None  # no prompt seen yet
    sizer.observe(40)
    assert sizer.tokens(40, [0.0, 0.0]) is None  # the replicas have not reported a mean
    assert sizer.tokens(None, [10.0]) is None
    assert sizer.tokens(80, [10.0, 0.0]) == pytest.approx(20.0)  # 4 chars per token; unknown means ignored
    sizer.observe(120)  # plain mean of the first 1/weight prompts: 80
    assert sizer.tokens(80, [8.0, 12.0]) == pytest.approx(10.0)
    for _ in range(50):  # then a moving average: follows a change of language or model
        sizer.observe(20)
    assert sizer.tokens(20, [10.0]) == pytest.approx(10.0, rel=1e-6)
