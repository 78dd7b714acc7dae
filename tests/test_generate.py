"""The per-sequence token logic (`Generation`) on its own: no engine, logits made by hand.

Whatever drives it (today one engine call per token on a worker context, later a batching
scheduler), a Generation must give the same tokens, text and ending for the same logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_cli.core.generate import Generation, StopMatcher
from rwkv_cli.core.sampling import Sampler, SamplingParams
from rwkv_cli.core.tokenizer import BytesTokenizer


def pointing_at(byte: int) -> np.ndarray:
    logits = np.zeros(256, np.float32)
    logits[byte] = 1.0
    return logits


def greedy_generation(max_tokens: int, stops=(), eos=None) -> Generation:
    return Generation(
        Sampler(256, SamplingParams(temperature=0)), BytesTokenizer().decoder(), eos, max_tokens,
        stops,
    )


def drive(generation: Generation, script: bytes) -> tuple[list[int], list[str]]:
    """Feed the script's bytes as greedy logits; returns the tokens to feed and the pieces."""
    fed, pieces = [], []
    for byte in script:
        token = generation.step(pointing_at(byte))
        piece = generation.take_text()
        if piece:
            pieces.append(piece)
        if token is None:
            break
        fed.append(token)
    return fed, pieces


def test_length_ends_without_feeding_the_last_token():
    generation = greedy_generation(4)
    fed, pieces = drive(generation, b"abcdef")
    assert generation.done and generation.finish_reason == "length"
    assert generation.tokens == list(b"abcd") and fed == list(b"abc")
    assert generation.fed_tokens == 3
    assert "".join(pieces) == generation.completion == "abcd"


def test_stop_string_across_tokens_is_cut_and_never_released():
    generation = greedy_generation(20, stops=["lo w"])
    _, pieces = drive(generation, b"hello world")
    assert generation.finish_reason == "stop"
    assert generation.completion == "hel" and "".join(pieces) == "hel"
    assert generation.tokens == list(b"hello w")  # sampled up to the stop's last character


def test_held_back_text_is_released_when_the_stop_is_ruled_out():
    generation = greedy_generation(20, stops=["abc"])
    generation.step(pointing_at(ord("a")))
    generation.step(pointing_at(ord("b")))
    assert generation.take_text() == ""  # "ab" could still become "abc"
    generation.step(pointing_at(ord("x")))
    assert generation.take_text() == "abx"


def test_end_of_text_token_ends_and_is_not_fed():
    generation = greedy_generation(20, eos=0)
    fed, _ = drive(generation, b"hi\x00more")
    assert generation.finish_reason == "eos" and generation.completion == "hi"
    assert generation.tokens == [104, 105, 0] and fed == [104, 105]


def test_cancel_keeps_what_was_generated_and_flushes_a_partial_character():
    generation = greedy_generation(20)
    euro = "€".encode()
    drive(generation, b"a" + euro[:2])
    generation.cancel()
    assert generation.finish_reason == "cancelled"
    assert generation.completion == "a\ufffd" and generation.fed_tokens == 3
    assert generation.step(pointing_at(65)) is None  # done: no more tokens


def test_zero_max_tokens_is_done_before_any_step():
    generation = Generation(None, BytesTokenizer().decoder(), None, 0)
    assert generation.done and generation.finish_reason == "length" and generation.completion == ""


def test_interleaved_generations_are_independent():
    """Two sequences advanced alternately, as a batching scheduler would, give what each gives
    alone."""
    scripts = [b"one two three", b"dragons fly high"]
    alone = []
    for script in scripts:
        generation = greedy_generation(12, stops=["three"])
        drive(generation, script)
        alone.append((generation.tokens, generation.completion, generation.finish_reason))
    batch = [greedy_generation(12, stops=["three"]) for _ in scripts]
    for position in range(max(len(s) for s in scripts)):
        for generation, script in zip(batch, scripts):
            if not generation.done and position < len(script):
                generation.step(pointing_at(script[position]))
    assert [(g.tokens, g.completion, g.finish_reason) for g in batch] == alone


@pytest.mark.parametrize(
    "text, stops, held",
    [("hello wo", ["world"], 2), ("hello", ["world"], 0), ("a\n", ["\n\n", "\nUser:"], 1),
     ("abab", ["abc"], 2), ("", ["x"], 0)],
)
def test_stop_matcher_holds_back_only_what_could_start_a_stop(text, stops, held):
    assert StopMatcher(stops).held_back(text) == held


def test_stop_matcher_finds_the_earliest_stop():
    assert StopMatcher(["three", "two"]).find("one two three") == 4
    assert StopMatcher(["x"]).find("abc") is None
