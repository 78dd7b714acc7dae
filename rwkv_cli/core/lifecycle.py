"""Loading a model and letting it go: the engine contexts, the tokenizer, the worker pool.

`load()` does what `RWKV.setup()` needs, all or nothing: on any failure every context it
created is freed before the error propagates. `LoadedModel.close()` waits for the running
completions, then frees the contexts (clones first: they borrow the first one's weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..engine import Context, Library, RWKVError, default_library
from ..errors import FileMissing, InvalidArgument
from . import options
from .pool import Worker, WorkerPool
from .tokenizer import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class ModelInfo:
    """The shapes and kinds of a loaded model, read once from the engine."""

    n_vocab: int
    n_layer: int
    n_embed: int
    state_len: int
    logits_len: int
    arch: str
    data_type: str
    kernel_path: str
    head_type: str = ""  # the head's tensor type (FP16 in rwkv.cpp's quantized files)


class LoadedModel:
    """Everything `setup()` creates; owned by one RWKV object until `close()`."""

    def __init__(
        self,
        library: Library,
        contexts: list[Context],
        tokenizer: Tokenizer,
        info: ModelInfo,
        gpu_layers: int,
        name: str,
    ):
        self.library = library
        self.contexts = contexts
        self.tokenizer = tokenizer
        self.info = info
        self.gpu_layers = gpu_layers
        self.pool = WorkerPool([Worker(c) for c in contexts], name)

    def close(self, on_wait=None) -> None:
        """Wait for the running completions (calling `on_wait()` while waiting), then free."""
        self.pool.close(poll=0.05 if on_wait is not None else None, on_wait=on_wait)
        _close_all(self.contexts)


def _close_all(contexts: list[Context]) -> None:
    for context in reversed(contexts):  # clones first
        context.close()


def load(
    path: Path,
    threads: int,
    gpu_offload: int | str,
    concurrent: int,
    tokenizer: str | os.PathLike | Tokenizer,
    library: Library | None,
) -> LoadedModel:
    """Load the model file into `concurrent` contexts sharing its weights."""
    if not path.is_file():
        raise FileMissing(f"model file not found: {path}")
    library = library or default_library()
    first = Context.load(path, threads, 0, library=library)
    contexts = [first]
    try:
        n_gpu_layers = options.gpu_layers(gpu_offload, first.n_layer)
        if n_gpu_layers > 0:
            try:
                first.gpu_offload_layers(n_gpu_layers)
            except RWKVError as exc:
                raise InvalidArgument(
                    f"gpu_offload={gpu_offload!r}: the engine {library.name} cannot offload "
                    f"layers to a GPU ({exc}); use gpu_offload=0, or an rwkv.cpp library built "
                    "with a GPU backend (RWKV_CPP_LIB)", "gpu_offload"
                ) from exc
        loaded_tokenizer = load_tokenizer(tokenizer, first.n_vocab, path)
        if loaded_tokenizer.vocab_size > first.n_vocab:
            raise InvalidArgument(
                f"tokenizer {loaded_tokenizer.name} has {loaded_tokenizer.vocab_size} tokens but "
                f"the model {path} has n_vocab={first.n_vocab}", "tokenizer"
            )
        for _ in range(concurrent - 1):
            contexts.append(first.clone(threads))
        info = ModelInfo(
            n_vocab=first.n_vocab,
            n_layer=first.n_layer,
            n_embed=first.n_embed,
            state_len=first.state_len,
            logits_len=first.logits_len,
            arch=first.arch_version,
            data_type=first.data_type_name,
            kernel_path=first.kernel_path,
            head_type=first.head_type_name,
        )
        return LoadedModel(library, contexts, loaded_tokenizer, info, n_gpu_layers, str(path))
    except BaseException:
        _close_all(contexts)
        raise
