"""Incremental detokenization never splits UTF-8; stopping criteria end with the right reason."""

from __future__ import annotations

from types import SimpleNamespace

from chameleon_pb import generate_pb2

from shard.server.detok import DetokState, next_piece
from shard.server.stopping import EOS, LENGTH, STOP_SEQUENCE, StoppingCriteria


def _stream(tokenizer, prompt: str, text: str) -> list[str]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = list(prompt_ids)
    state = DetokState.for_prompt(len(ids))
    pieces = []
    for t in out_ids:
        ids.append(t)
        pieces.append(next_piece(tokenizer, ids, state))
    return pieces


def test_multibyte_characters_are_never_split(byte_tokenizer):
    text = "héllo wörld 世界 🙂 done"
    out_ids = byte_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(out_ids) > len(text.encode()) // 2  # multibyte characters really span several tokens
    pieces = _stream(byte_tokenizer, "hello world", text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # some token ended inside a character and was held back


def test_ascii_streams_one_piece_per_token(byte_tokenizer):
    pieces = _stream(byte_tokenizer, "the", " quick brown fox")
    assert "".join(pieces) == " quick brown fox"
    assert all(pieces)


def _params(max_new: int, stops=(), ignore_eos=False, min_new=0):
    return SimpleNamespace(max_new_tokens=max_new, stop_sequences=list(stops), ignore_eos_token=ignore_eos,
                           chameleon=SimpleNamespace(min_new_tokens=min_new))


def test_max_new_tokens_gives_length():
    s = StoppingCriteria.from_pb(_params(3), [2])
    assert [s.check(5, "a"), s.check(6, "b"), s.check(7, "c")] == [None, None, LENGTH]


def test_eos_and_ignore_eos():
    assert StoppingCriteria.from_pb(_params(5), [2]).check(2, "") == EOS
    assert StoppingCriteria.from_pb(_params(5, ignore_eos=True), [2]).check(2, "") is None


def test_stop_sequence_split_over_tokens():
    s = StoppingCriteria.from_pb(_params(50, ["STOP"]), [2])
    assert [s.check(10 + i, p) for i, p in enumerate(["ab", "ST", "O"])] == [None, None, None]
    assert s.check(9, "P!") == STOP_SEQUENCE


def test_min_new_tokens_holds_off_eos_and_stop_sequences():
    s = StoppingCriteria.from_pb(_params(10, ["X"], min_new=3), [2])
    assert [s.check(2, ""), s.check(5, "X")] == [None, None]  # tokens 1 and 2: below the minimum
    assert s.check(2, "") == EOS  # token 3 reaches it
    s = StoppingCriteria.from_pb(_params(10, ["X"], min_new=3), [2])
    assert [s.check(5, "X"), s.check(6, "a")] == [None, None]
    assert s.check(7, "b") is None  # the early "X" does not match late: it does not end in the new piece
    assert s.check(8, "X") == STOP_SEQUENCE


def test_stop_sequence_split_over_tokens_after_the_minimum():
    s = StoppingCriteria.from_pb(_params(10, ["STOP"], min_new=2), [2])
    assert [s.check(5, "ST"), s.check(6, "OP")] == [None, STOP_SEQUENCE]


def test_min_new_tokens_from_the_real_proto():
    p = generate_pb2.StoppingCriteriaParameters(max_new_tokens=4, stop_sequences=["z"])
    p.chameleon.min_new_tokens = 2
    s = StoppingCriteria.from_pb(p, [2])
    assert (s.min_new_tokens, s.check(2, "z"), s.check(2, "z")) == (2, None, EOS)
