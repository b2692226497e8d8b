"""A miniature of the server's batch bookkeeping, to drive ModelRunner through a realistic scenario:
prefill, decode, a mixed prefill+decode step (concatenation of two batches), filtering and a chunked
prefill, with scattered (shuffled) block ids and adapters in scattered pages."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shard.model.runner import ForwardBatch, ModelRunner
from tests.shard_model.tiny import ADAPTERS

BLOCK = 4
MAX_TOKENS = 40


@dataclass
class Seq:
    name: str
    adapter: str | None
    tokens: list[int]                 # every token so far (prompt + generated)
    blocks: list[int]
    in_kv: int = 0                    # tokens whose K/V are in the cache
    written: set[int] = field(default_factory=set)

    def slots(self, start: int, end: int) -> list[int]:
        return [self.blocks[p // BLOCK] * BLOCK + p % BLOCK for p in range(start, end)]


@dataclass(frozen=True)
class Record:
    """Logits of one sequence after one step: for the reference comparison and TP vs single."""

    name: str
    adapter: str | None
    tokens: tuple[int, ...]           # the tokens whose last logits these are
    logits: torch.Tensor              # [vocab]


class Harness:
    def __init__(self, runner: ModelRunner, root: Path, seed: int = 0) -> None:
        self.runner, self.rng = runner, random.Random(seed)
        self.free = list(range(1, runner.num_pages))
        self.rng.shuffle(self.free)  # scattered, non-contiguous page ids
        self.adapter_pages: dict[str, list[int]] = {}
        for spec in ADAPTERS:
            path = root / "adapters" / spec.name
            pages = [self.free.pop() for _ in range(runner.adapter_store.pages_needed(path))]
            runner.adapter_store.load(spec.name, path, pages)
            self.adapter_pages[spec.name] = pages
        self.records: list[Record] = []

    def seq(self, name: str, adapter: str | None, prompt_len: int) -> Seq:
        prompt = [self.rng.randrange(3, self.runner.vocab_size) for _ in range(prompt_len)]
        blocks = [self.free.pop() for _ in range(MAX_TOKENS // BLOCK)]
        return Seq(name, adapter, prompt, blocks)

    def step(self, seqs: list[Seq], chunk: dict[str, int] | None = None, all_logits: bool = False) -> None:
        """One forward over the pending tokens of `seqs` (chunk[name] caps a prefill chunk), then greedy."""
        chunk = chunk or {}
        news = []
        for s in seqs:
            end = min(len(s.tokens), s.in_kv + chunk.get(s.name, len(s.tokens)))
            news.append((s, s.tokens[s.in_kv:end], end))
        fb = ForwardBatch.build([n for _, n, _ in news], [e for _, _, e in news], [s.blocks for s in seqs],
                                BLOCK, [s.adapter for s in seqs], [all_logits] * len(seqs))
        out = self.runner.forward(fb)
        for i, (s, _new, end) in enumerate(news):
            s.written.update(s.slots(s.in_kv, end))
            s.in_kv = end
            self.records.append(Record(s.name, s.adapter, tuple(s.tokens[:end]), out.last_logits[i].clone()))
            if all_logits:
                for j in range(len(_new) - 1):
                    toks = tuple(s.tokens[:end - len(_new) + j + 1])
                    self.records.append(Record(s.name, s.adapter, toks, out.all_logits[i][j].clone()))
            if end == len(s.tokens):
                s.tokens.append(int(out.last_logits[i].argmax()))

    def scenario(self) -> list[Seq]:
        a = [self.seq("s0", None, 7), self.seq("s1", "a8", 3), self.seq("s2", "a128", 5),
             self.seq("s3", "a16", 6), self.seq("s4", "a32", 4)]
        b = [self.seq("s5", "b8", 5), self.seq("s6", "a64", 9), self.seq("s7", "b16", 2),
             self.seq("s8", "b128", 6), self.seq("s9", None, 3), self.seq("s10", "a8", 1)]
        late = self.seq("s11", "a128", 10)
        self.step(a, all_logits=True)             # prefill batch A (prompt logits too)
        for _ in range(2):
            self.step(a)                          # decode A
        self.step(a + b)                          # concatenation: decode A + prefill B in one forward
        for _ in range(2):
            self.step(a + b)
        kept = [s for i, s in enumerate(a + b) if i not in (1, 4, 7)]  # FilterBatch
        self.step([*kept, late], chunk={"s11": 6})  # decode + first prefill chunk
        self.step([*kept, late])                  # decode + second chunk (attends to cached context)
        for _ in range(2):
            self.step([*kept, late])
        return a + b + [late]
