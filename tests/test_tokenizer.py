"""Tokenizers: round trips, incremental UTF-8-safe decoding, the auto choice and its errors."""

from __future__ import annotations

import pytest
from models import END_OF_TEXT

from rwkv_cli.core.tokenizer import (
    TOKENIZER_20B_URL,
    BytesTokenizer,
    HFTokenizer,
    WorldTokenizer,
    check_tokenizer_name,
    find_20b_tokenizer,
    load_tokenizer,
)

TEXTS = [
    "Hello, world!",
    "naïve café — 世界 🎉🐉 emoji and CJK",
    "\n\nUser: hi\n\nAssistant:",
    "tabs\tand  spaces   and trailing ",
    "",
]


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return WorldTokenizer()


@pytest.fixture(scope="module")
def bpe(bpe_tokenizer_json) -> HFTokenizer:
    """A tiny byte-level BPE in the 20B file's form (the real one: test_shared_tokenizer_20b.py)."""
    return HFTokenizer(bpe_tokenizer_json)


def stream(tokenizer, tokens) -> list:
    decoder = tokenizer.decoder()
    pieces = [decoder.feed(t) for t in tokens]
    pieces.append(decoder.flush())
    return pieces


def test_bytes_tokenizer_maps_each_byte_to_its_value():
    tok = BytesTokenizer()
    assert tok.encode("A\u00e9") == [65, 0xC3, 0xA9]
    assert tok.vocab_size == 256
    assert tok.decode([65, 0xC3, 0xA9]) == "A\u00e9"


@pytest.mark.parametrize("text", TEXTS)
def test_bytes_round_trip(text):
    tok = BytesTokenizer()
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_world_round_trip(world, text):
    assert world.decode(world.encode(text)) == text


def test_world_encodes_like_the_reference_greedy_match(world):
    # Known ids of the rwkv_vocab_v20230424 vocabulary: "Hello" is 33155, "\n\n" is 261.
    assert world.encode("Hello") == [33155]
    assert world.encode("\n\n") == [261]
    assert world.vocab_size == 65536
    assert world.eos_token == 0


def test_world_byte_tokens_have_their_raw_bytes(world):
    # 🎉 is split into tokens that end inside the character; their bytes must be exact.
    tokens = world.encode("🎉")
    assert world.decode_bytes(tokens) == "🎉".encode()
    assert len(tokens) > 1


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_round_trip_matches_the_tokenizers_library(bpe, text):
    tokens = bpe.encode(text)
    assert bpe.decode(tokens) == text
    assert bpe.decode(tokens) == bpe._hf.decode(tokens)


def test_bpe_merges_make_tokens_of_several_bytes(bpe):
    tokens = bpe.encode("The dragon flew over the hills")
    assert len(tokens) < len("The dragon flew over the hills")
    assert max(len(bpe.token_bytes(t)) for t in tokens) > 1


def test_bpe_vocabulary_and_end_of_text(bpe):
    assert bpe.vocab_size == len(bpe._hf.get_vocab(with_added_tokens=True))
    assert bpe.eos_token == bpe._hf.token_to_id(END_OF_TEXT) == 0
    assert bpe.token_bytes(0) == END_OF_TEXT.encode()
    assert bpe.name == "bpe-tokenizer.json"


def test_incremental_decoder_never_splits_a_character(world):
    text = "🐉 dragons 世界 🎉"
    pieces = stream(world, world.encode(text))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # Some token ended mid-character, so some piece was held back as empty.
    assert "" in pieces[:-1]


def test_incremental_decoder_on_bytes_holds_partial_characters():
    tok = BytesTokenizer()
    decoder = tok.decoder()
    data = "€".encode()
    assert decoder.feed(data[0]) == ""
    assert decoder.pending == data[:1]
    assert decoder.feed(data[1]) == ""
    assert decoder.feed(data[2]) == "€"
    assert decoder.pending == b""


def test_incremental_decoder_flush_replaces_an_unfinished_character():
    tok = BytesTokenizer()
    decoder = tok.decoder()
    assert decoder.feed(0xE2) == ""
    assert decoder.flush() == "\ufffd"


def test_bpe_incremental_decoding_concatenates_to_text(bpe):
    text = "naïve café — 世界 🎉🐉 and 龍 🦄, unseen in training"
    pieces = stream(bpe, bpe.encode(text))
    assert "".join(pieces) == text
    # the unseen characters are single-byte tokens: pieces were held back mid-character
    assert "" in pieces[:-1]


def test_auto_picks_by_vocabulary_size(tmp_path, monkeypatch):
    assert load_tokenizer("auto", 256).name == "bytes"
    assert load_tokenizer("auto", 65536).name == "world"
    with pytest.raises(ValueError, match="n_vocab=1000"):
        load_tokenizer("auto", 1000)


def test_auto_20b_without_the_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="20B_tokenizer.json") as info:
        load_tokenizer("auto", 50277, tmp_path / "model.bin")
    # The library says where to get it; the command adds its own advice (`rwkv-cpp --setup`).
    assert TOKENIZER_20B_URL in str(info.value) and "tokenizer=" in str(info.value)
    assert str(tmp_path) in str(info.value)
    assert "rwkv-cpp" not in str(info.value)


def test_auto_20b_found_beside_the_model(tmp_path, monkeypatch, bpe_tokenizer_json):
    monkeypatch.setenv("RWKV_HOME", str(tmp_path / "empty-home"))
    models = tmp_path / "models"
    models.mkdir()
    (models / "20B_tokenizer.json").symlink_to(bpe_tokenizer_json)
    tok = load_tokenizer("auto", 50277, models / "model.bin")
    assert tok.name == "20B" and tok.path == models / "20B_tokenizer.json"
    assert tok.encode("dragon") == HFTokenizer(bpe_tokenizer_json).encode("dragon")
    assert find_20b_tokenizer([models]) == models / "20B_tokenizer.json"


def test_tokenizer_from_a_world_vocabulary_path(world):
    tok = load_tokenizer(str(world.path), 65536)
    assert tok.encode("Hello") == [33155]


def test_unknown_tokenizer_name_is_a_value_error():
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt2'"):
        check_tokenizer_name("gpt2")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_tokenizer("no-such-tokenizer", 256)


def test_names_are_case_insensitive():
    check_tokenizer_name("World")
    check_tokenizer_name("20b")
    assert load_tokenizer("BYTES").name == "bytes"


def test_a_tokenizer_object_is_used_as_it_is():
    tok = BytesTokenizer()
    assert load_tokenizer(tok, 65536) is tok
