"""The binding: our engine as a plain C library, and loading an rwkv.cpp-style library."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
from engine_utils import run_serial

from rwkv_cli import engine as native
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
