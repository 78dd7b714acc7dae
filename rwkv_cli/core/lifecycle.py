"""Loading a model and letting it go: the engine context, the tokenizer, the scheduler.

`load()` does what `RWKV.setup()` needs, all or nothing: on any failure the context is freed
before the error propagates. A model has one context, whatever its `concurrent`: the
scheduler's engine thread advances all its completions together on it.
`LoadedModel.close()` ends the queued and running completions with a clear error, stops the
engine thread and frees the context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..engine import Context, Library, RWKVError, default_library
from ..errors import FileMissing, InvalidArgument
from . import options
from .scheduler import Scheduler
from .state_cache import StateCache
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
        context: Context,
        tokenizer: Tokenizer,
        info: ModelInfo,
        gpu_layers: int,
        scheduler: Scheduler,
    ):
        self.library = library
        self.context = context
        self.tokenizer = tokenizer
        self.info = info
        self.gpu_layers = gpu_layers
        self.scheduler = scheduler

    def close(self) -> None:
        """End the completions, stop the engine thread, free the context (idempotent).

        The engine thread frees the context as it stops, never while it is in a call."""
        self.scheduler.close()


def load(
    path: Path,
    threads: int,
    gpu_offload: int | str,
    concurrent: int,
    tokenizer: str | os.PathLike | Tokenizer,
    library: Library | None,
    cache: StateCache,
    batch_size: int,
) -> LoadedModel:
    """Load the model file into one context, with a scheduler running `concurrent` completions
    at a time on it."""
    if not path.is_file():
        raise FileMissing(f"model file not found: {path}")
    library = library or default_library()
    first = Context.load(path, threads, 0, library=library)
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
        scheduler = Scheduler(first, loaded_tokenizer, cache, batch_size, concurrent, str(path))
        return LoadedModel(library, first, loaded_tokenizer, info, n_gpu_layers, scheduler)
    except BaseException:
        first.close()
        raise
