"""The Python side of GGUF files: our metadata reader against the gguf package's, the
vocabulary a GGUF carries as a byte-exact World tokenizer, and RWKV() on a GGUF with no other
file."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf_writer import write_rwkv_gguf

from rwkv_cli import RWKV
from rwkv_cli.core.tokenizer import (
    GreedyTokenizer,
    WorldTokenizer,
    load_tokenizer,
    tokenizer_from_gguf,
)
from rwkv_cli.formats.gguf import GGUFError, decode_token, is_gguf, read_gguf
from rwkv_cli.formats.synthetic import random_tensors

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "User: What is a dragon?\n\nAssistant: A dragon is",
    "héllo wörld — ﬁne “quotes” 😀🐉 中文字符 日本語のテキスト 한국어",
    "<s> [PAD65530] \\x00 '\"' \t\r\n\x00\x01\x7f",
    "    indented code:\n\tdef f(x):\n\t\treturn x ** 2  # comment\n",
    "".join(chr(c) for c in range(32, 127)) * 3,
]


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return WorldTokenizer()


def llama_cpp_tokens(table: list[bytes]) -> list[str]:
    """The vocabulary as llama.cpp's converter writes it: <s>, the World tokens as repr(bytes)
    without b'', then [PAD<id>] up to 65536."""
    tokens = ["<s>"] + [repr(t)[2:-1] for t in table[1:65530]]
    return tokens + [f"[PAD{i}]" for i in range(len(tokens), 65536)]


@pytest.fixture(scope="module")
def world_gguf(tmp_path_factory, world):
    """A tiny RWKV-7 GGUF with the World vocabulary (65536 tokens) and token types."""
    path = tmp_path_factory.mktemp("gguf-vocab") / "world.gguf"
    tokens = llama_cpp_tokens(world._table)
    types = [3] + [1] * 65529 + [5] * 6
    write_rwkv_gguf(path, "7", random_tensors("7", 1, 64, 65536, 32, seed=2), 1, 64, 32, kind="F16",
                    tokens=tokens, metadata={"tokenizer.ggml.token_type": types},
                    keep_values=False, file_type=1)
    return path


def test_reader_agrees_with_the_gguf_package(world_gguf):
    ours = read_gguf(world_gguf)
    theirs = gguf.GGUFReader(world_gguf)
    assert ours.version == 3
    assert ours.architecture == "rwkv7" and ours.rwkv_version == "7"
    assert ours.arch_value("embedding_length") == 64 and ours.arch_value("block_count") == 1
    assert ours.file_type == "FP16"
    assert ours.n_vocab == 65536
    assert ours.tokens == [theirs.fields["tokenizer.ggml.tokens"].contents(i) for i in range(65536)]
    assert [(t.name, t.type_name, t.offset) for t in ours.tensors] == [
        (t.name, t.tensor_type.name, int(t.data_offset) - int(theirs.data_offset)) for t in theirs.tensors
    ]
    assert [t.shape for t in ours.tensors] == [tuple(int(d) for d in reversed(t.shape.tolist()))
                                               for t in theirs.tensors]


def test_reader_refuses_what_is_not_gguf(tmp_path, world_gguf):
    other = tmp_path / "x.bin"
    other.write_bytes(b"ggmf" + b"\0" * 100)
    assert not is_gguf(other) and is_gguf(world_gguf)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(other)
    data = world_gguf.read_bytes()
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(data[:5000])
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(truncated)


def test_every_world_token_survives_repr_escaping(world):
    for data in world._table[1:65530]:
        assert decode_token(repr(data)[2:-1]) == data
    with pytest.raises(ValueError):
        decode_token("bad \\q escape")
    with pytest.raises(ValueError):
        decode_token("é")  # not how repr(bytes) writes it


def test_gguf_vocabulary_is_the_world_tokenizer(world_gguf, world):
    tokenizer = load_tokenizer("auto", 65536, world_gguf)
    assert tokenizer._table == world._table
    for text in TEXTS:
        assert tokenizer.encode(text) == world.encode(text)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_python_greedy_match_is_byte_exact_with_world(world):
    greedy = GreedyTokenizer(world._table)
    corpus = "".join(TEXTS) * 4 + "".join(chr(c) for c in range(0x2000, 0x2400))
    assert greedy.encode(corpus) == world.encode(corpus)


def test_a_vocabulary_of_its_own_is_used_as_it_is(tmp_path, world):
    """A GGUF whose vocabulary differs from the packaged World one: the file's wins."""
    table = list(world._table)
    dropped = world.encode(" dragon")[0]
    table[dropped] = b""
    tokens = llama_cpp_tokens(table)
    tokens[dropped] = f"[PAD{dropped}]"  # llama.cpp's unused marker
    path = tmp_path / "own.gguf"
    write_rwkv_gguf(path, "7", random_tensors("7", 1, 64, 65536, 32, seed=2), 1, 64, 32, kind="F16",
                    tokens=tokens, keep_values=False)
    tokenizer = tokenizer_from_gguf(path)
    assert isinstance(tokenizer, GreedyTokenizer)
    ids = tokenizer.encode("a dragon")
    assert dropped not in ids and ids != world.encode("a dragon")
    assert tokenizer.decode(ids) == "a dragon"
    assert ids == GreedyTokenizer(table).encode("a dragon")


def test_gguf_without_rwkv_vocabulary_needs_a_tokenizer(tmp_path):
    path = tmp_path / "novocab.gguf"
    write_rwkv_gguf(path, "7", random_tensors("7", 1, 64, 300, 32, seed=2), 1, 64, 32,
                    keep_values=False)
    with pytest.raises(ValueError, match="300"):
        load_tokenizer("auto", 300, path)  # no vocabulary: falls back to n_vocab, which is unknown
    assert load_tokenizer("bytes", 300, path).vocab_size == 256


def test_rwkv_runs_a_gguf_with_no_other_file(world_gguf, world):
    with RWKV(world_gguf, threads=1) as model:
        assert model.arch == "7" and model.data_type == "FP16"
        result = model.completion("The dragon", max_tokens=5, temperature=0)
        assert result.usage.promptTokens == len(world.encode("The dragon"))
        assert result.usage.completionTokens == 5
        state = model.get_state("hello")
        assert state.shape == (model.state_len,) and np.isfinite(state).all()


@pytest.mark.parametrize("file,label", [
    ("rwkv7-0.1B-world-Q4_K_M.gguf", "Q4_K_M"), ("rwkv7-1.5B-world-F16.gguf", "FP16"),
    ("model.q6_k.gguf", "Q6_K"), ("rwkv-7-world-2.9b-Q8_0.gguf", "Q8_0"), ("weights.gguf", "GGUF"),
])
def test_gguf_file_names_give_their_type(file, label):
    from rwkv_cli.app.catalog import gguf_quantization

    assert gguf_quantization(file) == label


def test_describe_summarizes_a_gguf(world_gguf):
    from rwkv_cli.formats.gguf import describe

    info = describe(world_gguf)
    assert (info["arch"], info["data_type"], info["n_vocab"], info["n_embed"], info["n_layer"]) == (
        "7", "FP16", 65536, 64, 1)
    assert info["file_size"] == world_gguf.stat().st_size
