"""The binding: our engine as a plain C library, and loading an rwkv.cpp-style library."""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys

import cffi
import numpy as np
import pytest
from engine_utils import run_serial
from helpers import REPO

from rwkv_cli import engine as native
from rwkv_cli.engine import header
from rwkv_cli.engine.library import FLAG_DESCRIPTIONS, error_flag_values
from rwkv_cli.formats.synthetic import write_random_model

RWKV_CPP_FUNCTIONS = [
    "rwkv_set_print_errors", "rwkv_get_print_errors", "rwkv_get_last_error", "rwkv_init_from_file",
    "rwkv_clone_context", "rwkv_gpu_offload_layers", "rwkv_eval", "rwkv_eval_sequence",
    "rwkv_eval_sequence_in_chunks", "rwkv_get_n_vocab", "rwkv_get_n_embed", "rwkv_get_n_layer",
    "rwkv_get_state_len", "rwkv_get_logits_len", "rwkv_init_state", "rwkv_free",
    "rwkv_quantize_model_file", "rwkv_get_system_info_string",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("bind") / "m.bin", "4", 2, 64, 300, seed=2)


def test_lib_path_command_prints_an_existing_library():
    out = subprocess.run([sys.executable, "-m", "rwkv_cli.engine", "--lib-path"], capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    assert os.path.isfile(path) and path.endswith("librwkv.so")


def test_library_exports_the_rwkv_cpp_api_with_c_linkage():
    lib = ctypes.CDLL(native.bundled_library_path())
    for name in RWKV_CPP_FUNCTIONS:
        assert hasattr(lib, name), name


def test_plain_c_program_can_use_the_library(model_path):
    """What a program written for rwkv.cpp's librwkv.so does, through ctypes."""
    lib = ctypes.CDLL(native.bundled_library_path())
    lib.rwkv_init_from_file.restype = ctypes.c_void_p
    lib.rwkv_init_from_file.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.rwkv_get_state_len.restype = ctypes.c_size_t
    lib.rwkv_get_state_len.argtypes = [ctypes.c_void_p]
    lib.rwkv_eval.restype = ctypes.c_bool
    lib.rwkv_eval.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.rwkv_free.argtypes = [ctypes.c_void_p]
    ctx = lib.rwkv_init_from_file(str(model_path).encode(), 1, 0)
    assert ctx
    state = np.empty(lib.rwkv_get_state_len(ctx), np.float32)
    logits = np.empty(300, np.float32)
    assert lib.rwkv_eval(ctx, 5, None, state.ctypes.data, logits.ctypes.data)
    lib.rwkv_free(ctx)

    ours = native.default_library()
    c = ours.init_from_file(model_path, 1)
    expected, _ = run_serial(ours, c, [5])
    ours.free(c)
    np.testing.assert_array_equal(logits, expected)


def test_dlopen_path_uses_the_same_declarations(model_path, monkeypatch):
    external = native.Library(native.bundled_library_path())
    assert external.external
    ctx = external.init_from_file(model_path, 1)
    a, _ = run_serial(external, ctx, [1, 2, 3])
    external.free(ctx)
    ours = native.default_library()
    c = ours.init_from_file(model_path, 1)
    b, _ = run_serial(ours, c, [1, 2, 3])
    ours.free(c)
    np.testing.assert_array_equal(a, b)

    monkeypatch.setenv("RWKV_CPP_LIB", native.bundled_library_path())
    assert native.Library().external


def test_missing_external_library_is_a_clear_error(tmp_path):
    with pytest.raises(native.RWKVError, match="not found"):
        native.Library(str(tmp_path / "librwkv.so"))
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a library")
    with pytest.raises(native.RWKVError, match="cannot load"):
        native.Library(str(junk))


def test_errors_are_exceptions_with_flags(tmp_path):
    lib = native.default_library()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(native.RWKVError) as info:
        lib.init_from_file(bad, 1)
    assert info.value.flags == (2 << 8) | 6  # RWKV_ERROR_FILE | RWKV_ERROR_FILE_MAGIC
    assert "magic" in native.describe_flags(info.value.flags)


# ---- declarations generated from rwkv.h ----

HEADER = REPO / "native" / "rwkv.h"


def test_every_function_of_the_header_is_bound_in_both_loading_paths():
    names = header.function_names(HEADER.read_text())
    assert set(RWKV_CPP_FUNCTIONS) <= set(names)
    assert "rwkv_get_last_error_message" in names  # an extension of ours
    compiled = native.default_library()
    external = native.Library(native.bundled_library_path())
    for name in names:
        assert callable(getattr(compiled.lib, name)), name
        assert callable(getattr(external.lib, name)), name


def test_the_packaged_header_is_the_one_the_engine_was_built_from():
    assert header.packaged_header().read_text() == HEADER.read_text()


def test_a_function_added_to_a_header_is_declared_without_a_hand_copy():
    text = HEADER.read_text().replace(
        "#ifdef __cplusplus\n}\n#endif",
        "#define RWKV_MAX_BATCH 64\n"
        "RWKV_API bool rwkv_future_extension(struct rwkv_context * ctx, const uint32_t * tokens,\n"
        "    size_t n_sequences, float * const * states, float * logits_out);\n"
        "#ifdef __cplusplus\n}\n#endif",
    )
    assert "rwkv_future_extension" in header.function_names(text)
    ffi = cffi.FFI()
    ffi.cdef(header.cdef_from_header(text))  # cffi refuses anything but plain declarations
    lib = ffi.dlopen(native.bundled_library_path())
    assert callable(lib.rwkv_eval) and lib.RWKV_MAX_BATCH == 64
    # Declared (so looked up in the library, where this build has no such symbol yet); an
    # undeclared name would fail before any look-up.
    with pytest.raises(AttributeError, match="not found in library"):
        lib.rwkv_future_extension  # noqa: B018
    with pytest.raises(AttributeError, match="^rwkv_never_declared$"):
        lib.rwkv_never_declared  # noqa: B018
    generated = header.cdef_from_header(text)
    assert "rwkv_future_extension" in generated and "RWKV_API" not in generated
    assert 'extern "C"' not in generated and "#" not in generated.replace("#define RWKV_MAX_BATCH", "")


def test_cplusplus_only_branches_are_dropped_and_c_branches_kept():
    text = (
        "#ifndef __cplusplus\nint only_in_c(void);\n#else\nint only_in_cpp(void);\n#endif\n"
        "#if defined(__cplusplus)\nclass X;\n#else\nint c_side(void);\n#endif\n"
    )
    generated = header.cdef_from_header(text)
    assert "only_in_c" in generated and "c_side" in generated
    assert "only_in_cpp" not in generated and "class" not in generated


# ---- the error flag table ----


def test_every_error_flag_of_the_header_has_one_description():
    names = set(error_flag_values(native.default_library().ffi)) - {"RWKV_ERROR_NONE"}
    assert names == set(FLAG_DESCRIPTIONS)


def test_flag_values_come_from_the_header():
    values = error_flag_values(native.default_library().ffi)
    assert values["RWKV_ERROR_FILE"] == 2 << 8 and values["RWKV_ERROR_FILE_MAGIC"] == 6
    assert native.describe_flags(values["RWKV_ERROR_MODEL"] | values["RWKV_ERROR_KEY"]) == "model error, bad key"
    assert native.describe_flags(0x7F00) == "error flags 0x7f00"


# ---- Context: a handle that owns a context ----


def test_context_reads_shapes_evaluates_and_frees_once(model_path):
    freed = []

    class Recording(native.Library):
        def free(self, ctx):
            freed.append(ctx)
            super().free(ctx)

    library = Recording()
    with native.Context.load(model_path, 1, library=library) as context:
        assert (context.n_vocab, context.n_embed, context.n_layer) == (300, 64, 2)
        state = np.empty(context.state_len, np.float32)
        logits = np.empty(context.logits_len, np.float32)
        context.eval(5, None, state, logits)
        expected, _ = run_serial(library, context.pointer, [5])
        np.testing.assert_array_equal(logits, expected)
        clone = context.clone(1)
        clone.eval(5, None, state, logits)
        np.testing.assert_array_equal(logits, expected)
    assert context.closed and len(freed) == 1
    clone.close()
    clone.close()
    assert len(freed) == 2
    with pytest.raises(native.RWKVError, match="closed"):
        context.eval(5, None, state, logits)


def test_an_abandoned_context_is_freed_by_garbage_collection(model_path):
    freed = []

    class Recording(native.Library):
        def free(self, ctx):
            freed.append(ctx)
            super().free(ctx)

    library = Recording()
    native.Context.load(model_path, 1, library=library).clone(1)
    gc.collect()
    assert len(freed) == 2
