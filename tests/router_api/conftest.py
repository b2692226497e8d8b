"""Fixtures of the router API tests: a small trained tokenizer folder and a router over a fake engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tests.router_api.fakes import FakeEngine, ServedRouter
from tests.router_api.real import RealSystem, start_system

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello router.",
    "Adapters serve many tenants; the cache keeps them warm.",
] * 20


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (trained in well under a second) with a chat template."""
    out = tmp_path_factory.mktemp("router-tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHAT_TEMPLATE})
    )
    return out


@pytest.fixture(scope="module")
def served(tok_dir: Path) -> Iterator[ServedRouter]:
    router = ServedRouter(FakeEngine(), tok_dir, max_request_bytes=4096, adapter_dir=tok_dir / "adapters")
    yield router
    router.close()


@pytest.fixture
def router(served: ServedRouter) -> ServedRouter:
    """The module's router with a fresh engine script and records."""
    eng = served.engine
    eng.requests.clear()
    eng.cancelled.clear()
    eng.finished.clear()
    eng.script = type(eng.script)()
    eng.healthy = True
    eng.admin.resident.clear()
    eng.admin.busy.clear()
    return served


@pytest.fixture(scope="package")
def real_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="package")
def system(tiny_assets: Path, real_loop: asyncio.AbstractEventLoop) -> Iterator[RealSystem]:
    """One real router + shard pair (and a reference shard) for every end-to-end test of this package."""
    with start_system(tiny_assets, real_loop) as real:
        yield real
