"""Tokenizers for RWKV models: World (greedy longest match), GPT-NeoX 20B (BPE) and bytes.

Every tokenizer exposes the same small surface: `encode(text) -> list[int]`,
`decode(ids) -> str`, `token_bytes(id) -> bytes` and `decoder()`, an incremental decoder that
turns a stream of token ids into text without ever splitting a UTF-8 character (a token may end
in the middle of one; its bytes wait until the character is complete).

Decoding goes through one id -> bytes table built at load, so streaming a token costs a list
lookup and an incremental UTF-8 decode, never a call into a tokenizer library.
"""

from __future__ import annotations

import ast
import codecs
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import FileMissing, InvalidArgument, UserError
from ..paths import TOKENIZER_20B_FILE, rwkv_home

WORLD_VOCAB_NAME = "rwkv_vocab_v20230424.txt"
TOKENIZER_20B_NAME = TOKENIZER_20B_FILE
TOKENIZER_20B_URL = (
    "https://raw.githubusercontent.com/BlinkDL/ChatRWKV/main/20B_tokenizer.json"
)

# n_vocab of the model file -> tokenizer kind, for tokenizer="auto".
AUTO_BY_N_VOCAB = {50277: "20B", 65536: "world", 256: "bytes"}
TOKENIZER_NAMES = ("auto", "20B", "world", "bytes")


class TokenizerError(UserError, ValueError):
    """A tokenizer file that cannot be read; the message names the file and the fault."""


class TokenizerNotFound(FileMissing):
    """The tokenizer a model needs is not on this machine; `name` is the file it looked for."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


class IncrementalDecoder:
    """Token ids in, text out; bytes of an unfinished UTF-8 character are held back."""

    __slots__ = ("_table", "_utf8")

    def __init__(self, table: Sequence[bytes]):
        self._table = table
        # "replace": bytes that can never form a character become U+FFFD instead of an error.
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token: int) -> str:
        """The text completed by this token ("" while a character is still incomplete)."""
        return self._utf8.decode(self._table[token])

    def flush(self) -> str:
        """Text for any bytes still pending (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)

    @property
    def pending(self) -> bytes:
        """Bytes held back because they do not yet form a complete character."""
        return self._utf8.getstate()[0]


class Tokenizer:
    """Base: subclasses fill `name`, `_table` (id -> bytes) and implement `encode`."""

    name: str = "tokenizer"
    # The end-of-text token that stops generation, if the vocabulary has one.
    eos_token: int | None = None
    _table: list[bytes]

    @property
    def vocab_size(self) -> int:
        return len(self._table)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        return self._table[token]

    def decode_bytes(self, tokens: Iterable[int]) -> bytes:
        table = self._table
        return b"".join([table[int(t)] for t in tokens])

    def decode(self, tokens: Iterable[int]) -> str:
        return self.decode_bytes(tokens).decode("utf-8", "replace")

    def decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self._table)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} vocab_size={self.vocab_size}>"


class BytesTokenizer(Tokenizer):
    """Byte-level vocabulary (n_vocab 256): token id = byte value."""

    name = "bytes"

    def __init__(self) -> None:
        self._table = [bytes([i]) for i in range(256)]

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def _parse_world_vocab_line(line: str, path: str | Path, line_no: int):
    # Each line is `<id> <python literal of the token, str or bytes> <byte length>`.
    try:
        first = line.index(" ")
        last = line.rindex(" ")
        token_id = int(line[:first])
        token = ast.literal_eval(line[first + 1 : last])
        length = int(line[last + 1 :])
    except (ValueError, SyntaxError) as exc:
        raise TokenizerError(f"{path}:{line_no}: not a World vocabulary line: {line[:60]!r}") from exc
    data = token if isinstance(token, bytes) else str(token).encode("utf-8")
    if len(data) != length:
        raise TokenizerError(
            f"{path}:{line_no}: token {token_id} has {len(data)} bytes, the line says {length}"
        )
    return token_id, data


def world_vocab_path() -> Path:
    """The World vocabulary shipped inside the pyrwkv-tokenizer package."""
    import pyrwkv_tokenizer

    return Path(pyrwkv_tokenizer.__file__).resolve().parent / WORLD_VOCAB_NAME


class WorldTokenizer(Tokenizer):
    """RWKV World tokenizer: greedy longest match over `rwkv_vocab_v20230424` (65536 ids).

    Encoding runs in pyrwkv-tokenizer (Rust). Its decoder cannot return partial UTF-8, so
    decoding uses our own id -> bytes table read from the same vocabulary file.
    """

    name = "world"
    eos_token = 0

    def __init__(self, vocab_path: str | Path | None = None, n_vocab: int = 65536):
        import pyrwkv_tokenizer

        path = Path(vocab_path) if vocab_path is not None else world_vocab_path()
        if not path.is_file():
            raise FileMissing(f"World vocabulary file not found: {path}")
        self.path = path
        self._rust = pyrwkv_tokenizer.WorldTokenizer(str(path))
        # Most tokens are valid UTF-8 and come straight from the Rust vocabulary; the few that
        # are raw byte strings (its dict shows them under one placeholder key) are parsed here.
        by_id = {}
        for text, token_id in self._rust.get_vocab().items():
            by_id[token_id] = text
        entries = {}
        with open(path, encoding="utf-8") as vocab:
            for line_no, line in enumerate(vocab, 1):
                line = line.rstrip("\n")
                if not line:
                    continue
                first = line.index(" ") if " " in line else -1
                literal_start = line[first + 1 : first + 3]
                token_id = int(line[:first]) if first > 0 else -1
                text = by_id.get(token_id)
                if text is not None and not literal_start.startswith(("b'", 'b"')):
                    entries[token_id] = text.encode("utf-8")
                else:
                    token_id, data = _parse_world_vocab_line(line, path, line_no)
                    entries[token_id] = data
        size = max(n_vocab, max(entries) + 1)
        table = [b""] * size
        for token_id, data in entries.items():
            table[token_id] = data
        self._table = table

    def encode(self, text: str) -> list[int]:
        return list(self._rust.encode(text))


class GreedyTokenizer(Tokenizer):
    """The World algorithm (greedy longest match over the vocabulary's bytes) in Python, for a
    vocabulary given as a table id -> bytes, e.g. one a GGUF file carries. Empty entries are
    never matched (control and padding tokens)."""

    def __init__(self, table: list[bytes], name: str = "world", eos_token: int | None = 0):
        self.name = name
        self.eos_token = eos_token
        self._table = list(table)
        root: dict = {}
        for token_id, data in enumerate(self._table):
            if not data:
                continue
            node = root
            for byte in data:
                node = node.setdefault(byte, {})
            node.setdefault(-1, token_id)
        self._root = root

    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        root, out, i, n = self._root, [], 0, len(data)
        while i < n:
            node, j, best, end = root, i, -1, i
            while j < n:
                node = node.get(data[j])
                if node is None:
                    break
                j += 1
                found = node.get(-1)
                if found is not None:
                    best, end = found, j
            if best < 0:
                raise InvalidArgument(f"byte {data[i]:#04x} at offset {i} is in no token of {self.name}")
            out.append(best)
            i = end
        return out


# GGUF token types (tokenizer.ggml.token_type): only normal tokens match text
_GGUF_NORMAL_TOKEN = 1


def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer a GGUF file carries (llama.cpp's RWKV files: the World vocabulary, each
    token's bytes written as repr(bytes); id 0 and the padding ids are control tokens).

    The packaged World tokenizer (Rust) when the file's vocabulary is exactly it, else the
    same algorithm over the file's own vocabulary."""
    from ..formats.gguf import decode_token, read_gguf

    info = read_gguf(path, tensors=False)
    model = info.metadata.get("tokenizer.ggml.model")
    tokens = info.tokens
    if model != "rwkv" or not tokens:
        raise InvalidArgument(
            f"{path}: this GGUF file carries no RWKV vocabulary (tokenizer.ggml.model is {model!r}); "
            "pass tokenizer=<name or path>"
        )
    types = info.metadata.get("tokenizer.ggml.token_type")
    if not isinstance(types, list) or len(types) != len(tokens):
        # llama.cpp marks <s> (id 0) and the [PAD] tail as control tokens
        types = [_GGUF_NORMAL_TOKEN] * len(tokens)
        types[0] = 3
    table = []
    for token_id, (text, kind) in enumerate(zip(tokens, types)):
        if kind != _GGUF_NORMAL_TOKEN or (text.startswith("[PAD") and text.endswith("]")):
            table.append(b"")
            continue
        try:
            table.append(decode_token(text))
        except ValueError as exc:
            raise InvalidArgument(f"{path}: token {token_id}: {exc}") from exc
    eos = info.metadata.get("tokenizer.ggml.eos_token_id", 0)
    eos = eos if isinstance(eos, int) and 0 <= eos < len(table) else None
    if len(table) == 65536:
        world = WorldTokenizer()
        if world._table == table:
            return world
    return GreedyTokenizer(table, name=f"world ({Path(path).name})", eos_token=eos)


def _byte_level_alphabet() -> dict:
    """The byte-level BPE alphabet: each byte is shown as one printable character.

    Printable Latin-1 bytes stand for themselves; the other bytes (controls, space, ...) are
    shifted, in byte order, to code points from 256 on. Returns character -> byte.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    char_to_byte = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            char_to_byte[chr(256 + shifted)] = b
            shifted += 1
    return char_to_byte


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` JSON file, e.g. the GPT-NeoX 20B BPE of RWKV-4 Pile/Raven."""

    def __init__(self, path: str | Path, name: str | None = None):
        from tokenizers import Tokenizer as _HF

        path = Path(path)
        if not path.is_file():
            raise FileMissing(f"tokenizer file not found: {path}")
        try:
            self._hf = _HF.from_file(str(path))
        except Exception as exc:
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer JSON file: {exc}") from exc
        self.path = path
        self.name = name or path.name
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
        decoder = spec.get("decoder") or {}
        byte_level = decoder.get("type") == "ByteLevel"
        added = {int(t["id"]): t["content"] for t in spec.get("added_tokens", [])}
        vocab = self._hf.get_vocab(with_added_tokens=True)
        size = max(vocab.values()) + 1 if vocab else 0
        table = [b""] * size
        alphabet = _byte_level_alphabet()
        for piece, token_id in vocab.items():
            if token_id in added:
                table[token_id] = added[token_id].encode("utf-8")
            elif byte_level:
                table[token_id] = bytes([alphabet[c] for c in piece])
            else:
                table[token_id] = self._hf.decode([token_id]).encode("utf-8")
        self._table = table
        eos = vocab.get("<|endoftext|>")
        self.eos_token = eos

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids


def find_20b_tokenizer(search: Sequence[str | Path] = ()) -> Path:
    """The 20B tokenizer JSON: in `search` folders first, then $RWKV_HOME (~/.rwkv)."""
    candidates = [Path(folder) / TOKENIZER_20B_NAME for folder in search]
    candidates.append(rwkv_home() / TOKENIZER_20B_NAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise TokenizerNotFound(
        f"the 20B tokenizer ({TOKENIZER_20B_NAME}) is needed for this model (n_vocab 50277) "
        f"and was not found (looked in: {looked}); download {TOKENIZER_20B_URL} into "
        f"{rwkv_home()}, or pass tokenizer=<path of the file>",
        TOKENIZER_20B_NAME,
    )


def check_tokenizer_name(tokenizer: str | os.PathLike | Tokenizer) -> None:
    """Raise InvalidArgument for a tokenizer that is neither a known name nor an existing file."""
    if isinstance(tokenizer, Tokenizer):
        return
    if isinstance(tokenizer, str) and tokenizer.lower() in {n.lower() for n in TOKENIZER_NAMES}:
        return
    if isinstance(tokenizer, (str, os.PathLike)) and Path(tokenizer).is_file():
        return
    raise InvalidArgument(
        f"unknown tokenizer {tokenizer!r}: use one of {', '.join(TOKENIZER_NAMES)} "
        "or the path of a tokenizer file (.json for Hugging Face, .txt for a World vocabulary)",
        "tokenizer",
    )


def load_tokenizer(
    tokenizer: str | os.PathLike | Tokenizer = "auto",
    n_vocab: int | None = None,
    model_path: str | os.PathLike | None = None,
) -> Tokenizer:
    """The tokenizer for a name ("auto", "20B", "world", "bytes") or a file path.

    "auto" uses the vocabulary of a GGUF model file; otherwise it picks from the model's
    n_vocab: 50277 -> 20B, 65536 -> World, 256 -> bytes. The 20B JSON is looked up beside the
    model file, then in $RWKV_HOME. A `Tokenizer` object is returned as it is.
    """
    check_tokenizer_name(tokenizer)
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    kind = tokenizer.lower() if isinstance(tokenizer, str) else None
    if kind == "auto" and model_path is not None:
        from ..formats.gguf import is_gguf, read_gguf

        if is_gguf(model_path) and read_gguf(model_path, tensors=False).tokens:
            return tokenizer_from_gguf(model_path)
    if kind == "auto":
        if n_vocab not in AUTO_BY_N_VOCAB:
            raise InvalidArgument(
                f"cannot pick a tokenizer for n_vocab={n_vocab}: known vocabularies are "
                + ", ".join(f"{n} ({k})" for n, k in AUTO_BY_N_VOCAB.items())
                + "; pass tokenizer=<name or path>",
                "tokenizer",
            )
        kind = AUTO_BY_N_VOCAB[n_vocab].lower()
    if kind == "bytes":
        return BytesTokenizer()
    if kind == "world":
        return WorldTokenizer()
    if kind == "20b":
        folders = [Path(model_path).resolve().parent] if model_path else []
        return HFTokenizer(find_20b_tokenizer(folders), name="20B")
    path = Path(tokenizer)
    if path.suffix == ".json":
        return HFTokenizer(path)
    return WorldTokenizer(path, n_vocab=n_vocab or 0)
