"""The real GPT-NeoX 20B tokenizer file (needs ../shared): its vocabulary, its round trips through
our decoder, the RWKV class finding it for a 50277-token model, and the built-in catalog's
checksum of it.

Skipped as a whole without ../shared (a failure under RWKV_REQUIRE_FIXTURES=1); the same code
path (`HFTokenizer`) runs on a tiny BPE tokenizer of our own in test_tokenizer.py.
"""

from __future__ import annotations

import hashlib

import pytest
from helpers import TOKENIZER_20B, TOKENIZERS, may_skip_without, shared_file

from rwkv_cli import RWKV
from rwkv_cli.core.tokenizer import HFTokenizer

if may_skip_without(TOKENIZERS):
    pytest.skip(
        f"{TOKENIZERS} absent: the tests of the real 20B tokenizer file did not run",
        allow_module_level=True,
    )

TEXTS = [
    "Hello, world!",
    "naïve café — 世界 🎉🐉 emoji and CJK",
    "\n\nUser: hi\n\nAssistant:",
    "tabs\tand  spaces   and trailing ",
    "",
]


@pytest.fixture(scope="module")
def neox() -> HFTokenizer:
    return HFTokenizer(shared_file(TOKENIZER_20B), name="20B")


@pytest.mark.parametrize("text", TEXTS)
def test_20b_round_trip_matches_the_tokenizers_library(neox, text):
    tokens = neox.encode(text)
    assert neox.decode(tokens) == text
    assert neox.decode(tokens) == neox._hf.decode(tokens)


def test_20b_vocabulary_and_end_of_text(neox):
    assert neox.vocab_size == 50277
    assert neox.eos_token == 0
    assert neox.token_bytes(0) == b"<|endoftext|>"
    assert neox.encode("Hello") == [12092]


def test_20b_incremental_decoding_concatenates_to_text(neox):
    text = "naïve café — 世界 🎉🐉"
    decoder = neox.decoder()
    pieces = [decoder.feed(token) for token in neox.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text


def test_20b_vocabulary_model_finds_the_tokenizer_in_rwkv_home(tmp_path, monkeypatch):
    from rwkv_cli.formats.synthetic import write_random_model

    model = write_random_model(tmp_path / "v4-20b.bin", "4", 1, 32, 50277, "FP16")
    monkeypatch.setenv("RWKV_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "20B_tokenizer.json").symlink_to(shared_file(TOKENIZER_20B))
    with RWKV(model, threads=1) as neox_model:
        assert neox_model.tokenizer.name == "20B"
        result = neox_model.completion("Hello", max_tokens=4, temperature=0)
    assert result.usage.promptTokens == 1 and result.usage.completionTokens == 4


def test_builtin_catalog_checksum_is_the_real_file():
    """What setup verifies a downloaded 20B tokenizer against."""
    from rwkv_cli.app.catalog import BUILTIN_CATALOG, load_catalog

    asset = load_catalog(BUILTIN_CATALOG).tokenizer_asset("20B")
    data = shared_file(TOKENIZER_20B).read_bytes()
    assert asset.size == len(data)
    assert asset.sha256 == hashlib.sha256(data).hexdigest()
