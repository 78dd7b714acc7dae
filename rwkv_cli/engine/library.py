"""Thin binding of the C API in native/rwkv.h: one Python function per C function.

Arrays go in and out as numpy float32 buffers without copies; a C failure becomes an
`RWKVError` carrying the engine's message. By default the engine compiled into this package
is used; `Library(path)` (or the environment variable `RWKV_CPP_LIB`) loads an external
rwkv.cpp `librwkv.so` through the same declarations instead.

`python -m rwkv_cli.engine --lib-path` prints the path of our engine as a plain shared
library, for programs written against rwkv.cpp's C API.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from ..errors import EngineNotBuilt, FileMissing, InvalidArgument, NotAFile, RWKVError, UserError
from .header import cdef_from_header, packaged_header

FloatArray = np.ndarray
ContextPointer = Any  # a cffi `struct rwkv_context *`; a `Context` (context.py) owns one

# What the flags of rwkv.h's `enum rwkv_error_flags` mean; their values come from the header
# (through the ffi), so this is the only table of them. An error is an area (high byte) or'ed
# with a detail (low byte).
FLAG_DESCRIPTIONS = {
    "RWKV_ERROR_ARGS": "bad arguments",
    "RWKV_ERROR_FILE": "file error",
    "RWKV_ERROR_MODEL": "model error",
    "RWKV_ERROR_MODEL_PARAMS": "model parameters error",
    "RWKV_ERROR_GRAPH": "graph error",
    "RWKV_ERROR_CTX": "context error",
    "RWKV_ERROR_ALLOC": "allocation failed",
    "RWKV_ERROR_FILE_OPEN": "cannot open file",
    "RWKV_ERROR_FILE_STAT": "cannot stat file",
    "RWKV_ERROR_FILE_READ": "cannot read file",
    "RWKV_ERROR_FILE_WRITE": "cannot write file",
    "RWKV_ERROR_FILE_MAGIC": "bad magic (not an rwkv.cpp model file)",
    "RWKV_ERROR_FILE_VERSION": "unsupported file version",
    "RWKV_ERROR_DATA_TYPE": "unsupported data type",
    "RWKV_ERROR_UNSUPPORTED": "unsupported",
    "RWKV_ERROR_SHAPE": "bad shape",
    "RWKV_ERROR_DIMENSION": "bad dimension count",
    "RWKV_ERROR_KEY": "bad key",
    "RWKV_ERROR_DATA": "bad data",
    "RWKV_ERROR_PARAM_MISSING": "missing parameter",
}
_AREA_MASK = 0xFF00
_DETAIL_MASK = 0x00FF


def _package_folder() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compiled_module():
    """The cffi extension compiled at install time."""
    try:
        from . import _rwkv_native  # type: ignore[attr-defined]
    except ImportError:
        raise EngineNotBuilt.in_package(_package_folder()) from None
    return _rwkv_native


@functools.cache
def header_cdef() -> str:
    """The declarations of the packaged rwkv.h, for loading an external library."""
    path = packaged_header()
    try:
        return cdef_from_header(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineNotBuilt.in_package(_package_folder()) from None


def error_flag_values(ffi: Any) -> dict[str, int]:
    """`enum rwkv_error_flags` as declared to `ffi`: name -> value."""
    return dict(ffi.typeof("enum rwkv_error_flags").relements)


def describe_flags(flags: int, ffi: Any = None) -> str:
    """Words for an engine error's flags, e.g. "file error, bad magic (...)"."""
    if ffi is None:
        ffi = _compiled_module().ffi
    name_of = {value: name for name, value in error_flag_values(ffi).items()}
    parts = [
        FLAG_DESCRIPTIONS[name_of[part]]
        for part in (flags & _AREA_MASK, flags & _DETAIL_MASK)
        if part and name_of.get(part) in FLAG_DESCRIPTIONS
    ]
    return ", ".join(parts) or f"error flags {flags:#x}"


def bundled_library_path() -> str:
    """Path of our engine built as a plain C shared library (librwkv.so)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "librwkv.so")


def _as_f32(array: np.ndarray | None, length: int, name: str, writable: bool) -> np.ndarray | None:
    if array is None:
        return None
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise TypeError(f"{name} must be a numpy float32 array")
    if not array.flags.c_contiguous:
        raise InvalidArgument(f"{name} must be C-contiguous")
    if writable and not array.flags.writeable:
        raise InvalidArgument(f"{name} must be writable")
    if array.size != length:
        raise InvalidArgument(f"{name} has {array.size} elements, expected {length}")
    return array


class Library:
    """One loaded engine: ours (compiled in) or an external rwkv.cpp library."""

    def __init__(self, path: str | None = None):
        path = path or os.environ.get("RWKV_CPP_LIB") or None
        if path is None:
            compiled = _compiled_module()
            self.ffi = compiled.ffi
            self.lib = compiled.lib
            self.path = bundled_library_path()
            self.external = False
        else:
            from cffi import FFI

            if not os.path.exists(path):
                raise FileMissing(f"rwkv library not found: {path}")
            self.ffi = FFI()
            self.ffi.cdef(header_cdef())
            try:
                self.lib = self.ffi.dlopen(path)
            except OSError as exc:
                raise UserError(f"cannot load rwkv library {path}: {exc}") from exc
            self.path = path
            self.external = True
        self._has_messages = self._has("rwkv_get_last_error_message")
        # Failures become exceptions carrying the message; printing them too would be noise.
        self.lib.rwkv_set_print_errors(self.ffi.NULL, False)

    def _has(self, name: str) -> bool:
        try:
            getattr(self.lib, name)
            return True
        except (AttributeError, NotImplementedError):
            return False

    @property
    def name(self) -> str:
        return f"rwkv.cpp ({self.path})" if self.external else "rwkv-cpp native"

    # ---- errors ----

    def _raise(self, ctx: ContextPointer | None, what: str) -> None:
        handle = ctx if ctx is not None else self.ffi.NULL
        message = ""
        if self._has_messages:
            message = self.ffi.string(self.lib.rwkv_get_last_error_message(handle)).decode(
                "utf-8", "replace"
            )
        flags = int(self.lib.rwkv_get_last_error(handle))
        raise RWKVError(message or f"{what} failed: {describe_flags(flags, self.ffi)}", flags)

    def set_print_errors(self, ctx: ContextPointer | None, print_errors: bool) -> None:
        self.lib.rwkv_set_print_errors(ctx if ctx is not None else self.ffi.NULL, bool(print_errors))

    def get_print_errors(self, ctx: ContextPointer | None) -> bool:
        return bool(self.lib.rwkv_get_print_errors(ctx if ctx is not None else self.ffi.NULL))

    def get_last_error(self, ctx: ContextPointer | None) -> int:
        return int(self.lib.rwkv_get_last_error(ctx if ctx is not None else self.ffi.NULL))

    def get_last_error_message(self, ctx: ContextPointer | None) -> str:
        if not self._has_messages:
            return ""
        handle = ctx if ctx is not None else self.ffi.NULL
        return self.ffi.string(self.lib.rwkv_get_last_error_message(handle)).decode("utf-8", "replace")

    # ---- contexts ----

    def init_from_file(self, path: str | os.PathLike, n_threads: int, n_gpu_layers: int = 0) -> ContextPointer:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileMissing(f"model file not found: {path}")
        if os.path.isdir(path):
            raise NotAFile(f"model path is a directory, not a file: {path}")
        if n_threads < 1:
            raise InvalidArgument("n_threads must be at least 1")
        ctx = self.lib.rwkv_init_from_file(path.encode(), int(n_threads), int(n_gpu_layers))
        if ctx == self.ffi.NULL:
            self._raise(None, f"loading {path}")
        return ctx

    def clone_context(self, ctx: ContextPointer, n_threads: int) -> ContextPointer:
        clone = self.lib.rwkv_clone_context(ctx, int(n_threads))
        if clone == self.ffi.NULL:
            self._raise(ctx, "cloning the context")
        return clone

    def gpu_offload_layers(self, ctx: ContextPointer, n_layers: int) -> None:
        if not self.lib.rwkv_gpu_offload_layers(ctx, int(n_layers)):
            self._raise(ctx, "GPU offload")

    def free(self, ctx: ContextPointer) -> None:
        self.lib.rwkv_free(ctx)

    # ---- evaluation ----

    def _ptr(self, array: np.ndarray | None):
        if array is None:
            return self.ffi.NULL
        return self.ffi.from_buffer("float[]", array)

    def _buffers(self, ctx: ContextPointer, state_in, state_out, logits_out):
        """Checked pointers: the C side writes state_len / logits_len floats, unchecked."""
        n_state = int(self.lib.rwkv_get_state_len(ctx))
        if state_out is None:
            raise InvalidArgument("state_out is required")
        _as_f32(state_in, n_state, "state_in", writable=False)
        _as_f32(state_out, n_state, "state_out", writable=True)
        if logits_out is not None:
            _as_f32(logits_out, int(self.lib.rwkv_get_logits_len(ctx)), "logits_out", writable=True)
        return self._ptr(state_in), self._ptr(state_out), self._ptr(logits_out)

    def eval(
        self,
        ctx: ContextPointer,
        token: int,
        state_in: FloatArray | None,
        state_out: FloatArray,
        logits_out: FloatArray | None,
    ) -> None:
        ok = self.lib.rwkv_eval(ctx, int(token), *self._buffers(ctx, state_in, state_out, logits_out))
        if not ok:
            self._raise(ctx, "rwkv_eval")

    def _tokens(self, tokens: Sequence[int] | np.ndarray):
        array = np.ascontiguousarray(tokens, dtype=np.uint32)
        return array, self.ffi.from_buffer("uint32_t[]", array)

    def eval_sequence(
        self,
        ctx: ContextPointer,
        tokens: Sequence[int] | np.ndarray,
        state_in: FloatArray | None,
        state_out: FloatArray,
        logits_out: FloatArray | None,
    ) -> None:
        array, ptr = self._tokens(tokens)
        ok = self.lib.rwkv_eval_sequence(
            ctx, ptr, len(array), *self._buffers(ctx, state_in, state_out, logits_out)
        )
        if not ok:
            self._raise(ctx, "rwkv_eval_sequence")

    def eval_sequence_in_chunks(
        self,
        ctx: ContextPointer,
        tokens: Sequence[int] | np.ndarray,
        chunk_size: int,
        state_in: FloatArray | None,
        state_out: FloatArray,
        logits_out: FloatArray | None,
    ) -> None:
        array, ptr = self._tokens(tokens)
        ok = self.lib.rwkv_eval_sequence_in_chunks(
            ctx,
            ptr,
            len(array),
            int(chunk_size),
            *self._buffers(ctx, state_in, state_out, logits_out),
        )
        if not ok:
            self._raise(ctx, "rwkv_eval_sequence_in_chunks")

    @property
    def has_all_logits(self) -> bool:
        """Whether eval_sequence_all_logits exists (our engine's extension, not rwkv.cpp's)."""
        return self._has("rwkv_eval_sequence_all_logits")

    def eval_sequence_all_logits(
        self,
        ctx: ContextPointer,
        tokens: Sequence[int] | np.ndarray,
        state_in: FloatArray | None,
        state_out: FloatArray,
        logits_out: FloatArray,
    ) -> None:
        """Sequence mode writing the logits after every token: logits_out is (len(tokens),
        n_vocab) float32."""
        if not self.has_all_logits:
            raise RWKVError(f"{self.name} has no rwkv_eval_sequence_all_logits")
        array, ptr = self._tokens(tokens)
        n_vocab = int(self.lib.rwkv_get_logits_len(ctx))
        _as_f32(logits_out, len(array) * n_vocab, "logits_out", writable=True)
        state_in_ptr, state_out_ptr, _ = self._buffers(ctx, state_in, state_out, None)
        ok = self.lib.rwkv_eval_sequence_all_logits(
            ctx, ptr, len(array), state_in_ptr, state_out_ptr, self._ptr(logits_out)
        )
        if not ok:
            self._raise(ctx, "rwkv_eval_sequence_all_logits")

    def eval_batch(
        self,
        ctx: ContextPointer,
        tokens: Sequence[int] | np.ndarray,
        states_in: Sequence[FloatArray | None] | None,
        states_out: Sequence[FloatArray],
        logits_out: Sequence[FloatArray | None] | None,
    ) -> None:
        """One token for each of len(tokens) sequences in one pass over the weights.

        states_in[i] None (or states_in None): sequence i starts fresh; logits_out[i] None (or
        logits_out None): no logits for it. states_in[i] may be states_out[i]."""
        if not self.has_eval_batch:
            raise UserError(f"{self.name} has no rwkv_eval_batch (an extension of this engine)")
        array, ptr = self._tokens(tokens)
        n = len(array)
        states_in = [None] * n if states_in is None else list(states_in)
        logits_out = [None] * n if logits_out is None else list(logits_out)
        states_out = list(states_out)
        lists = {"states_in": states_in, "states_out": states_out, "logits_out": logits_out}
        for name, buffers in lists.items():
            if len(buffers) != n:
                raise InvalidArgument(f"{name} has {len(buffers)} entries for {n} tokens")
        n_state, n_logits = self.get_state_len(ctx), self.get_logits_len(ctx)
        ins = self.ffi.new("float *[]", max(n, 1))
        outs = self.ffi.new("float *[]", max(n, 1))
        logits = self.ffi.new("float *[]", max(n, 1))
        keep = []  # the cffi views must outlive the call
        for i in range(n):
            if states_out[i] is None:
                raise InvalidArgument(f"states_out[{i}] is required")
            _as_f32(states_in[i], n_state, f"states_in[{i}]", writable=False)
            _as_f32(states_out[i], n_state, f"states_out[{i}]", writable=True)
            _as_f32(logits_out[i], n_logits, f"logits_out[{i}]", writable=True)
            views = [self._ptr(states_in[i]), self._ptr(states_out[i]), self._ptr(logits_out[i])]
            keep.append(views)
            ins[i], outs[i], logits[i] = views
        if not self.lib.rwkv_eval_batch(ctx, n, ptr, ins, outs, logits):
            self._raise(ctx, "rwkv_eval_batch")

    @functools.cached_property
    def has_eval_batch(self) -> bool:
        """Whether the library advances many sequences in one call (rwkv.cpp's has not)."""
        return self._has("rwkv_eval_batch")

    # ---- shapes ----

    def get_n_vocab(self, ctx: ContextPointer) -> int:
        return int(self.lib.rwkv_get_n_vocab(ctx))

    def get_n_embed(self, ctx: ContextPointer) -> int:
        return int(self.lib.rwkv_get_n_embed(ctx))

    def get_n_layer(self, ctx: ContextPointer) -> int:
        return int(self.lib.rwkv_get_n_layer(ctx))

    def get_state_len(self, ctx: ContextPointer) -> int:
        return int(self.lib.rwkv_get_state_len(ctx))

    def get_logits_len(self, ctx: ContextPointer) -> int:
        return int(self.lib.rwkv_get_logits_len(ctx))

    def init_state(self, ctx: ContextPointer, state: FloatArray) -> None:
        _as_f32(state, int(self.lib.rwkv_get_state_len(ctx)), "state", writable=True)
        self.lib.rwkv_init_state(ctx, self._ptr(state))

    # ---- files and information ----

    def quantize_model_file(
        self,
        path_in: str | os.PathLike,
        path_out: str | os.PathLike,
        format_name: str,
        progress: Callable[[int, int], None] | None = None,
        head_type: str | None = None,
    ) -> None:
        """rwkv_quantize_model_file (and _with_progress); `head_type` (e.g. "Q8_0") quantizes
        the head too, through our extension rwkv_quantize_model_file_ex."""
        src, dst = os.fspath(path_in).encode(), os.fspath(path_out).encode()
        if head_type and not self._has("rwkv_quantize_model_file_ex"):
            raise UserError(f"{self.name} cannot quantize the head (no rwkv_quantize_model_file_ex)")
        on_progress = self.ffi.NULL
        if progress is not None and self._has("rwkv_quantize_model_file_with_progress"):
            @self.ffi.callback("void(void *, size_t, size_t)")
            def on_progress(_user, done, total):
                try:
                    progress(int(done), int(total))
                except Exception:  # noqa: BLE001, S110 - a failing display must not unwind through C
                    pass

        if head_type:
            ok = self.lib.rwkv_quantize_model_file_ex(
                src, dst, format_name.encode(), head_type.encode(), on_progress, self.ffi.NULL
            )
        elif on_progress != self.ffi.NULL:
            ok = self.lib.rwkv_quantize_model_file_with_progress(
                src, dst, format_name.encode(), on_progress, self.ffi.NULL
            )
        else:
            ok = self.lib.rwkv_quantize_model_file(src, dst, format_name.encode())
        if not ok:
            head = f" (head {head_type})" if head_type else ""
            self._raise(None, f"quantizing {os.fspath(path_in)} to {format_name}{head}")

    def get_system_info_string(self) -> str:
        return self.ffi.string(self.lib.rwkv_get_system_info_string()).decode("utf-8", "replace")

    def _ext_string(self, name: str, ctx: ContextPointer, default: str) -> str:
        if not self._has(name):
            return default
        return self.ffi.string(getattr(self.lib, name)(ctx)).decode("utf-8", "replace")

    def get_arch_version(self, ctx: ContextPointer) -> str:
        return self._ext_string("rwkv_get_arch_version", ctx, "unknown")

    def get_kernel_path(self, ctx: ContextPointer) -> str:
        return self._ext_string("rwkv_get_kernel_path", ctx, "unknown")

    def get_data_type_name(self, ctx: ContextPointer) -> str:
        return self._ext_string("rwkv_get_data_type_name", ctx, "unknown")

    def get_head_type_name(self, ctx: ContextPointer) -> str:
        return self._ext_string("rwkv_get_head_type_name", ctx, "unknown")

    def get_weight_bytes_per_token(self, ctx: ContextPointer) -> int:
        if not self._has("rwkv_get_weight_bytes_per_token"):
            return 0
        return int(self.lib.rwkv_get_weight_bytes_per_token(ctx))


_default: Library | None = None
_default_lock = threading.Lock()


def default_library() -> Library:
    """The library selected by RWKV_CPP_LIB, else our bundled engine (loaded once)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Library()
        return _default


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["--lib-path"], ["--system-info"]):
        print("usage: python -m rwkv_cli.engine [--lib-path | --system-info]", file=sys.stderr)
        return 2
    try:
        if args == ["--lib-path"]:
            path = bundled_library_path()
            if not os.path.isfile(path):
                raise EngineNotBuilt.in_package(_package_folder())
            print(path)
        else:
            print(default_library().get_system_info_string())
    except RWKVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

