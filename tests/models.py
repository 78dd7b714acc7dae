"""Small models and tokenizer files that the tests write themselves, so the suite stands without
../shared: random weights from `rwkv_cli.formats.synthetic`, written in a few milliseconds.

- Byte-vocabulary models (n_vocab 256, tokenizer "bytes") of every architecture. Their head is
  tilted towards printable ASCII (see `PRINTABLE`): greedy output is printable text, so tests
  can count characters as tokens and cut stop strings out of it; sampling at a high
  temperature still emits the other bytes (invalid and partial UTF-8) now and then.
- A World-vocabulary v7 model (n_vocab 65536) with a tiny embedding: the World tokenizer on a
  real model file, at the cost of a 65536-row head.
- A tiny byte-level BPE tokenizer in Hugging Face JSON form, built with the `tokenizers`
  library: the code path of the GPT-NeoX 20B file (`HFTokenizer`), without that file.

conftest.py makes session-scoped fixtures of these (`byte_v4`, `byte_v7`, `world_v7`,
`byte_model`, `bpe_tokenizer_json`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rwkv_cli.formats.modelfile import ModelWriter
from rwkv_cli.formats.synthetic import random_tensors, stored_type

# Bytes the byte models prefer: space to tilde.
PRINTABLE = np.arange(0x20, 0x7F)

# Shapes: two layers, 64 wide; heads of 16 for v5-v7 (four heads).
N_LAYER, N_EMBED, HEAD_SIZE = 2, 64, 16

# How far the head leans towards printable bytes: their logits move up by about TILT and the
# others down by about as much, against random logits of order 1. Greedy decoding then always
# picks a printable byte; at temperature 1 one token in a thousand or so is not printable.
TILT = 4.0


def write_byte_model(
    path: str | Path,
    arch: str,
    data_type: str = "FP32",
    n_layer: int = N_LAYER,
    n_embed: int = N_EMBED,
    head_size: int = HEAD_SIZE,
    seed: int = 0,
) -> Path:
    """A random-weight byte-vocabulary model whose greedy output is printable ASCII.

    The last layer norm's bias gets a component TILT along a random unit direction u, and the
    head's rows get +u for printable bytes and -u for the others, so every logit moves by about
    +-TILT whatever the input; everything else is `random_tensors` as it comes.
    """
    path = Path(path)
    tensors = dict(random_tensors(arch, n_layer, n_embed, 256, head_size, seed=seed))
    rng = np.random.default_rng(seed + 1)
    direction = rng.standard_normal(n_embed).astype(np.float32)
    direction /= np.linalg.norm(direction)
    tensors["ln_out.bias"] = tensors["ln_out.bias"] + np.float32(TILT) * direction
    sign = np.full(256, -1.0, np.float32)
    sign[PRINTABLE] = 1.0
    tensors["head.weight"] = tensors["head.weight"] + sign[:, None] * direction[None, :]
    with ModelWriter(path, 256, n_embed, n_layer, data_type) as writer:
        for key, value in tensors.items():
            writer.write_tensor(key, value, stored_type(key, value.shape, data_type, "FP32"))
    return path


def write_world_model(path: str | Path, seed: int = 0) -> Path:
    """A random-weight v7 model with the World vocabulary (65536) and a 32-wide embedding."""
    from rwkv_cli.formats.synthetic import write_random_model

    return write_random_model(path, "7", 1, 32, 65536, "FP16", head_size=16, seed=seed)


# A little text to train the BPE tokenizer on: English words and pieces of other scripts, so
# merges exist and some tokens end inside a multi-byte character.
BPE_CORPUS = [
    "The dragon flew over the hills, and the hills were green.",
    "Once upon a time, in a land far away, there lived a lantern maker.",
    "User: hello there\n\nBot: hello! What is a dragon?",
    "naïve café — 世界 🎉🐉 emoji and CJK text, tabs\tand  spaces",
] * 4
END_OF_TEXT = "<|endoftext|>"


def write_bpe_tokenizer(path: str | Path, vocab_size: int = 400) -> Path:
    """A byte-level BPE tokenizer JSON (as GPT-NeoX's: ByteLevel pre-tokenizer and decoder,
    `<|endoftext|>` as token 0), trained by the `tokenizers` library on BPE_CORPUS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(BPE_CORPUS, trainer)
    path = Path(path)
    tokenizer.save(str(path))
    return path
