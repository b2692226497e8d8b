"""`chameleon router` argument handling, the router tokenizer and chat template rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.chat_template import ChatTemplate, ChatTemplateError
from router.cli import build_parser, engine_config, main, server_config
from router.tokenize import RouterTokenizer


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch, tok_dir: Path):
    monkeypatch.setenv("MAX_CONCURRENT_REQUESTS", "7")
    monkeypatch.setenv("UNKNOWN_ADAPTER", "base")
    args = build_parser().parse_args(
        [
            "--master-shard-uds-path",
            "/tmp/s-0",
            "--tokenizer",
            str(tok_dir),
            "--port",
            "3100",
            "--scheduler",
            "sjf",
        ]
    )
    eng, srv = engine_config(args), server_config(args)
    assert (eng.max_concurrent_requests, eng.scheduler, eng.model_dir) == (7, "sjf", tok_dir)
    assert (srv.port, srv.grpc_port, srv.unknown_adapter, srv.max_stop_sequences) == (3100, 8033, "base", 4)


def test_bad_folders_exit_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["--master-shard-uds-path", "/tmp/s-0", "--tokenizer", str(tmp_path)]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
    assert (
        main(
            [
                "--master-shard-uds-path",
                "/tmp/s-0",
                "--tokenizer",
                str(tmp_path),
                "--adapter-dir",
                str(tmp_path / "missing"),
            ]
        )
        == 2
    )
    assert "is not a folder" in capsys.readouterr().err


def test_encoding_offsets_and_truncation(tok_dir: Path):
    tok = RouterTokenizer(tok_dir)
    enc = tok.encode("hello world")
    assert len(enc.ids) == len(enc.tokens) == len(enc.offsets) == tok.count("hello world")
    assert "".join("hello world"[a:b] for a, b in enc.offsets) == "hello world"
    cut = enc.truncated(2)
    assert cut.ids == enc.ids[-2:] and cut.offsets == enc.offsets[-2:]
    assert tok.decode(enc.ids) == "hello world"


def test_leading_bos_is_not_doubled(tmp_path: Path, tok_dir: Path):
    """A template that writes the BOS itself, over a tokenizer that adds one: the prompt keeps one."""
    data = json.loads((tok_dir / "tokenizer.json").read_text())
    bos = next(t for t in data["added_tokens"] if t["content"] == "<|im_start|>")
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {
            "<|im_start|>": {"id": "<|im_start|>", "ids": [bos["id"]], "tokens": ["<|im_start|>"]}
        },
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": "<|im_start|>", "chat_template": "{{ bos_token }}{{ messages[0]['content'] }}"}
        )
    )
    tok = RouterTokenizer(tmp_path)
    assert tok.render_chat([{"role": "user", "content": "hi"}]) == "hi"
    assert tok.encode("hi").ids[0] == bos["id"]


def test_chat_template_errors_are_actionable():
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}"
        "{% endif %}{{ messages[0]['content'] }}",
        bos_token=None,
        eos_token=None,
    )
    assert (
        template.render(
            [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        )
        == "ab"
    )
    with pytest.raises(ChatTemplateError, match="first must be user"):
        template.render([{"role": "system", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="only text parts"):
        template.render([{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(ChatTemplateError, match="cannot be empty"):
        template.render([])


def test_default_template_is_chatml():
    out = ChatTemplate(None, bos_token=None, eos_token=None).render([{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
