"""OpenAI-style routes over a fake engine: answer and chunk shapes, model = adapter, chat template, the
adapter management routes (vLLM's names)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.router_api.fakes import ServedRouter


def _post(router: ServedRouter, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(router.http + path, json=body, timeout=30)


def _chunks(resp: requests.Response) -> list[Any]:
    lines = [line for line in resp.text.split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[5:]) for line in lines[:-1]]


def test_completion_shape_and_model_as_adapter(router: ServedRouter):
    out = _post(
        router, "/v1/completions", {"model": "beta", "prompt": "hello", "max_tokens": 2, "temperature": 0}
    )
    body = out.json()
    assert body["object"] == "text_completion" and body["model"] == "beta" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": " t0 t1", "finish_reason": "length", "logprobs": None}]
    n_in = len(router.engine.requests[0].input_ids)
    assert body["usage"] == {"prompt_tokens": n_in, "completion_tokens": 2, "total_tokens": n_in + 2}
    req = router.engine.requests[0]
    assert (req.adapter_id, req.params.do_sample) == ("beta", False)


@pytest.mark.parametrize("model", ["tiny-model", "tgi", "dummy", None])
def test_base_model_names_mean_no_adapter(router: ServedRouter, model: str | None):
    body = {"prompt": "hello", "max_tokens": 1, **({"model": model} if model else {})}
    assert _post(router, "/v1/completions", body).status_code == 200
    assert router.engine.requests[0].adapter_id is None


def test_completion_stream_chunks(router: ServedRouter):
    chunks = _chunks(
        _post(router, "/v1/completions", {"model": "alpha", "prompt": "hi", "max_tokens": 2, "stream": True})
    )
    assert [c["choices"][0]["text"] for c in chunks] == [" t0", " t1", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_chat_completion_renders_the_template(router: ServedRouter):
    body = {
        "model": "alpha",
        "max_tokens": 2,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }
    out = _post(router, "/v1/chat/completions", body).json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": " t0 t1"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    text = router.engine.requests[0].text
    # the template writes a leading <|im_start|> (the bos token); it is kept since encoding adds none
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert router.engine.requests[0].params.do_sample is True  # OpenAI default: temperature 1, sampling


def test_chat_stream_and_logprobs(router: ServedRouter):
    body = {
        "model": "alpha",
        "max_tokens": 2,
        "stream": True,
        "logprobs": True,
        "top_logprobs": 2,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Hi"}],
    }
    chunks = _chunks(_post(router, "/v1/chat/completions", body))
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:3]] == [" t0", " t1", ""]
    assert chunks[0]["object"] == "chat.completion.chunk"
    lp = chunks[0]["choices"][0]["logprobs"]["content"][0]
    assert (lp["token"], lp["logprob"], len(lp["top_logprobs"])) == (" t0", -0.5, 2)
    assert chunks[2]["choices"][0]["finish_reason"] == "length"
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": "hi"}, "`messages` must be a list"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "`n` must be 1"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "`tools`"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "gamma"}, "unknown adapter 'gamma'"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "`top_p` must be > 0.0 and < 1.0"),
    ],
)
def test_chat_validation(router: ServedRouter, body: dict[str, Any], message: str):
    resp = _post(router, "/v1/chat/completions", body)
    assert resp.status_code == 422, resp.text
    assert message in resp.json()["error"]
    assert router.engine.requests == []


def test_completion_validation(router: ServedRouter):
    resp = _post(router, "/v1/completions", {"prompt": ["a", "b"]})
    assert resp.status_code == 422 and "exactly one string" in resp.json()["error"]
    resp = _post(router, "/v1/completions", {"prompt": "a", "max_tokens": 500})
    assert resp.status_code == 422 and "must be <= 96" in resp.json()["error"]


def test_models_lists_base_and_adapters(router: ServedRouter):
    data = requests.get(router.http + "/v1/models", timeout=10).json()["data"]
    assert [m["id"] for m in data] == ["tiny-model", "alpha", "beta"]
    assert all(m["object"] == "model" for m in data)


def test_load_and_unload_adapter(router: ServedRouter):
    resp = _post(router, "/v1/load_lora_adapter", {"lora_name": "alpha"})
    assert resp.status_code == 200 and resp.text.startswith("Success: LoRA adapter 'alpha' added")
    assert "alpha" in router.engine.admin.resident
    resp = _post(router, "/v1/unload_lora_adapter", {"lora_name": "alpha"})
    assert resp.status_code == 200 and resp.text.startswith("Success: LoRA adapter 'alpha' removed")
    assert "alpha" not in router.engine.admin.resident


def test_adapter_management_errors(router: ServedRouter, tok_dir):
    assert _post(router, "/v1/load_lora_adapter", {"lora_name": "gamma"}).status_code == 404
    resp = _post(router, "/v1/load_lora_adapter", {"lora_name": "../alpha"})
    assert resp.status_code == 422 and "not a plain name" in resp.json()["error"]
    resp = _post(router, "/v1/load_lora_adapter", {"lora_name": "alpha", "lora_path": "/etc"})
    assert resp.status_code == 422 and "`lora_path` must be omitted or equal" in resp.json()["error"]
    ok = _post(
        router, "/v1/load_lora_adapter", {"lora_name": "alpha", "lora_path": str(tok_dir / "adapters/alpha")}
    )
    assert ok.status_code == 200
    router.engine.admin.busy.add("alpha")
    resp = _post(router, "/v1/unload_lora_adapter", {"lora_name": "alpha"})
    assert resp.status_code == 409 and "in use" in resp.json()["error"]
