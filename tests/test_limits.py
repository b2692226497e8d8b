"""Limits derived from config.json by TGI's launcher rule (chameleon.core.limits), the router's and the
launcher's use of it, and the startup errors for flags that contradict the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chameleon.core.limits import MAX_DEFAULT, derive_limits, read_max_position_embeddings
from chameleon.tools.launch.limits import flag_value, router_limits


def test_short_model_gets_its_own_context():
    lim = derive_limits(2048)
    assert (lim.max_total_tokens, lim.max_input_tokens, lim.max_batch_prefill_tokens) == (2048, 2047, 2097)
    assert set(lim.derived) == {"max_total_tokens", "max_input_tokens", "max_batch_prefill_tokens"}
    assert "max_position_embeddings=2048" in lim.describe()


def test_long_model_is_capped_at_tgis_default():
    lim = derive_limits(32768)
    assert (lim.max_total_tokens, lim.max_input_tokens, lim.max_batch_prefill_tokens) == \
        (MAX_DEFAULT, MAX_DEFAULT - 1, MAX_DEFAULT - 1 + 50)


def test_no_max_position_embeddings_means_the_default():
    assert derive_limits(None).max_total_tokens == MAX_DEFAULT == 4096


def test_given_flags_are_kept_and_the_rest_derived_from_them():
    lim = derive_limits(2048, max_total_tokens=1000)
    assert (lim.max_total_tokens, lim.max_input_tokens, lim.max_batch_prefill_tokens) == (1000, 999, 1049)
    assert lim.derived == ("max_input_tokens", "max_batch_prefill_tokens")
    lim = derive_limits(2048, max_batch_prefill_tokens=256)  # the prefill budget caps the derived input
    assert (lim.max_total_tokens, lim.max_input_tokens, lim.max_batch_prefill_tokens) == (2048, 256, 256)
    lim = derive_limits(32768, max_input_tokens=8000)  # a long prompt asked for: the model's full context
    assert (lim.max_total_tokens, lim.max_input_tokens, lim.max_batch_prefill_tokens) == (32768, 8000, 8050)
    lim = derive_limits(2048, 100, 200, 300)
    assert (lim.max_input_tokens, lim.max_total_tokens, lim.max_batch_prefill_tokens, lim.derived) == \
        (100, 200, 300, ())


@pytest.mark.parametrize(("max_pos", "kwargs", "words"), [
    (2048, {"max_total_tokens": 4096}, ["--max-total-tokens 4096", "max_position_embeddings is 2048"]),
    (2048, {"max_input_tokens": 2048}, ["--max-input-tokens 2048", "below 2048"]),
    (2048, {"max_input_tokens": 500, "max_total_tokens": 500}, ["--max-input-tokens 500", "smaller than"]),
    (None, {"max_input_tokens": 5000}, ["--max-input-tokens 5000", "max-total-tokens 4096 (derived",
                                        "no max_position_embeddings"]),
    (2048, {"max_input_tokens": 300, "max_batch_prefill_tokens": 200}, ["--max-batch-prefill-tokens 200",
                                                                        "max-input-tokens 300"]),
])
def test_contradictions_name_the_limit(max_pos: int | None, kwargs: dict[str, int], words: list[str]):
    with pytest.raises(ValueError) as err:
        derive_limits(max_pos, **kwargs)
    for word in words:
        assert word in str(err.value)


def _model(tmp_path: Path, config: dict[str, object]) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_config_json_reading(tmp_path: Path):
    assert read_max_position_embeddings(_model(tmp_path, {"max_position_embeddings": 2048})) == 2048
    assert read_max_position_embeddings(_model(tmp_path, {"max_seq_len": 1024})) == 1024
    assert read_max_position_embeddings(_model(tmp_path, {"hidden_size": 8})) is None
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_max_position_embeddings(tmp_path)


def test_launcher_reads_the_router_flags_last_wins(tmp_path: Path):
    flags = ("--max-total-tokens", "1000", "--port", "1", "--max-total-tokens=900")
    assert flag_value(flags, "--max-total-tokens") == 900 and flag_value(flags, "--max-input-tokens") is None
    lim = router_limits(flags, _model(tmp_path, {"max_position_embeddings": 2048}))
    assert (lim.max_total_tokens, lim.max_input_tokens) == (900, 899)
    with pytest.raises(ValueError, match="max_position_embeddings is 2048"):
        router_limits(("--max-total-tokens", "3000"), tmp_path)
    with pytest.raises(ValueError, match="not an integer"):
        router_limits(("--max-total-tokens", "lots"), tmp_path)


def test_warmup_requests_stay_within_the_input_limit_and_the_model():
    from router.engine.startup import warmup_request

    req = warmup_request(2047, 2097, 2048, None)
    assert [r.truncate for r in req.batch.requests] == [2047, 50]
    assert all(r.stopping_parameters.max_new_tokens >= 1 for r in req.batch.requests)
    req = warmup_request(None, 4096, None, None, max_positions=2048)  # no input limit: the model's
    assert max(r.truncate for r in req.batch.requests) == 2047
    assert sum(r.truncate for r in req.batch.requests) == 4096


def test_router_refuses_flags_that_contradict_the_model(tok_dir_with_config: Path,
                                                         capsys: pytest.CaptureFixture[str]):
    from router.cli import build_parser, engine_config, main

    base = ["--master-shard-uds-path", "/tmp/none-0", "--tokenizer", str(tok_dir_with_config)]
    assert main([*base, "--max-total-tokens", "4096"]) == 2
    err = capsys.readouterr().err
    assert "--max-total-tokens 4096" in err and "max_position_embeddings is 2048" in err
    eng = engine_config(build_parser().parse_args(base))
    assert (eng.max_total_tokens, eng.max_input_tokens, eng.max_batch_prefill_tokens) == (2048, 2047, 2097)


@pytest.fixture
def tok_dir_with_config(tiny_assets: Path) -> Path:
    return tiny_assets / "model"


def test_shard_warmup_cuts_requests_to_the_model():
    from chameleon_pb import generate_pb2

    from shard.server.warmup import warmup_batch_with_blocks

    reqs = [generate_pb2.Request(id=i, inputs="x", truncate=t) for i, t in enumerate((4096, 10))]
    pb = generate_pb2.Batch(id=0, requests=reqs, size=2, max_tokens=4096)
    out = warmup_batch_with_blocks(pb, [4096, 10], 16, 10_000, max_positions=2048)
    assert out is not None and [r.truncate for r in out.requests] == [2047, 10]
    assert len(out.requests[0].blocks) == 128  # 2047 + 1 tokens in 16-token blocks


def test_launcher_refuses_contradicting_flags_before_starting_anything(tmp_path: Path):
    import os
    import subprocess
    import sys

    (tmp_path / "m").mkdir()
    model = _model(tmp_path / "m", {"max_position_embeddings": 2048})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAX_")}
    out = subprocess.run([sys.executable, "-m", "chameleon", "launch", "--model-id", str(model),
                          "--max-input-tokens", "3000", "--shard-uds-path", str(tmp_path / "s")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "--max-input-tokens 3000" in out.stderr and "max_position_embeddings is 2048" in out.stderr
    assert "Chameleon is serving" not in out.stderr and not (tmp_path / "s-0").exists()
