"""`Context`: an engine context owned by a Python object, freed exactly once.

`Library` binds the C functions one to one and hands out raw `struct rwkv_context *`
pointers; whoever holds one must call `rwkv_free` on it exactly once, after its last use.
A `Context` does that: `close()`, the end of a `with` block, or garbage collection frees it,
whichever comes first, and it refuses to be used afterwards. Its shapes are read once.

Clones share the weights of the context they were cloned from (rwkv.cpp's API counts the
references in C); a clone keeps a reference to its parent anyway, so that garbage collection
never frees a parent before its clones on an engine that would not count them.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RWKVError
from .library import ContextPointer, FloatArray, Library, default_library

if TYPE_CHECKING:
    from typing_extensions import Self


class Context:
    """One engine context (a model's weights, a state scratch and a thread pool)."""

    def __init__(self, library: Library, pointer: ContextPointer, parent: Context | None = None):
        self.library = library
        self._pointer: ContextPointer | None = pointer
        self._parent = parent
        self._finalizer = weakref.finalize(self, library.free, pointer)
        self.n_vocab = library.get_n_vocab(pointer)
        self.n_embed = library.get_n_embed(pointer)
        self.n_layer = library.get_n_layer(pointer)
        self.state_len = library.get_state_len(pointer)
        self.logits_len = library.get_logits_len(pointer)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        n_threads: int,
        n_gpu_layers: int = 0,
        library: Library | None = None,
    ) -> Context:
        """Load a model file into a new context (`library`: default_library() if None)."""
        library = library or default_library()
        pointer = library.init_from_file(path, n_threads, n_gpu_layers)
        try:
            return cls(library, pointer)
        except BaseException:
            library.free(pointer)
            raise

    def clone(self, n_threads: int) -> Context:
        """A new context over the same weights, with its own state scratch and threads."""
        pointer = self.library.clone_context(self.pointer, n_threads)
        try:
            return Context(self.library, pointer, parent=self)
        except BaseException:
            self.library.free(pointer)
            raise

    # ---- ownership ----

    @property
    def pointer(self) -> ContextPointer:
        """The raw pointer, for `Library` calls; valid until `close()`."""
        if self._pointer is None:
            raise RWKVError("this engine context was closed")
        return self._pointer

    @property
    def closed(self) -> bool:
        return self._pointer is None

    def close(self) -> None:
        """Free the context now (idempotent)."""
        self._pointer = None
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._pointer is None:
            return "<Context closed>"
        return (
            f"<Context n_layer={self.n_layer} n_embed={self.n_embed} n_vocab={self.n_vocab} "
            f"of {self.library.name}>"
        )

    # ---- evaluation (see Library for the buffer rules) ----

    def eval(
        self,
        token: int,
        state_in: FloatArray | None,
        state_out: FloatArray,
        logits_out: FloatArray | None,
    ) -> None:
        self.library.eval(self.pointer, token, state_in, state_out, logits_out)

    def eval_sequence(
        self,
        tokens: Sequence[int] | np.ndarray,
        state_in: FloatArray | None,
        state_out: FloatArray,
        logits_out: FloatArray | None,
    ) -> None:
        self.library.eval_sequence(self.pointer, tokens, state_in, state_out, logits_out)

    def eval_sequence_in_chunks(
        self,
        tokens: Sequence[int] | np.ndarray,
        chunk_size: int,
        state_in: FloatArray | None,
        state_out: FloatArray,
        logits_out: FloatArray | None,
    ) -> None:
        self.library.eval_sequence_in_chunks(
            self.pointer, tokens, chunk_size, state_in, state_out, logits_out
        )

    @property
    def has_all_logits(self) -> bool:
        return self.library.has_all_logits

    def eval_sequence_all_logits(
        self,
        tokens: Sequence[int] | np.ndarray,
        state_in: FloatArray | None,
        state_out: FloatArray,
        logits_out: FloatArray,
    ) -> None:
        self.library.eval_sequence_all_logits(self.pointer, tokens, state_in, state_out, logits_out)

    def eval_batch(
        self,
        tokens: Sequence[int] | np.ndarray,
        states_in: Sequence[FloatArray | None] | None,
        states_out: Sequence[FloatArray],
        logits_out: Sequence[FloatArray | None] | None,
    ) -> None:
        self.library.eval_batch(self.pointer, tokens, states_in, states_out, logits_out)

    def init_state(self, state: FloatArray) -> None:
        self.library.init_state(self.pointer, state)

    def gpu_offload_layers(self, n_layers: int) -> None:
        self.library.gpu_offload_layers(self.pointer, n_layers)

    # ---- information ----

    @property
    def arch_version(self) -> str:
        return self.library.get_arch_version(self.pointer)

    @property
    def kernel_path(self) -> str:
        return self.library.get_kernel_path(self.pointer)

    @property
    def data_type_name(self) -> str:
        return self.library.get_data_type_name(self.pointer)

    @property
    def head_type_name(self) -> str:
        return self.library.get_head_type_name(self.pointer)

    @property
    def weight_bytes_per_token(self) -> int:
        return self.library.get_weight_bytes_per_token(self.pointer)
