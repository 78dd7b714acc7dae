"""Bad model files give a clear exception, never a crash or an out-of-bounds read.

The same tests run again under AddressSanitizer + UndefinedBehaviorSanitizer
(`test_bad_files_under_sanitizers` builds `make -C native asan` and reruns this file and
test_gguf_badfiles.py in a subprocess against that build through RWKV_CPP_LIB).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

from rwkv_cli import engine as native
from rwkv_cli.formats import modelfile
from rwkv_cli.formats.synthetic import write_random_model

UNDER_SANITIZERS = os.environ.get("RWKV_TEST_SANITIZED") == "1"


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.Library(os.environ.get("RWKV_CPP_LIB"))


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    fp32 = write_random_model(d / "fp32.bin", "4", 2, 32, 40, data_type="FP32", seed=1)
    q51 = write_random_model(d / "q51.bin", "4", 2, 32, 40, data_type="Q5_1", seed=1)
    v7 = write_random_model(d / "v7.bin", "7", 1, 64, 40, data_type="FP16", seed=1)
    return {"fp32": fp32, "q51": q51, "v7": v7}


def write_bytes(tmp_path: Path, data: bytes, name="bad.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_refused(lib, path, match=None):
    with pytest.raises((native.RWKVError, OSError)) as info:
        ctx = lib.init_from_file(path, 1)
        lib.free(ctx)
    if match:
        assert match in str(info.value), str(info.value)
    assert str(info.value)  # a message, not an empty error
    return info.value


def test_good_files_load(lib, good_files):
    for path in good_files.values():
        lib.free(lib.init_from_file(path, 1))


@pytest.mark.parametrize("which", ["fp32", "q51", "v7"])
def test_truncated_at_many_offsets(lib, tmp_path, good_files, which):
    data = good_files[which].read_bytes()
    offsets = sorted(set(list(range(200)) + list(range(200, len(data), max(1, len(data) // 150)))))
    for n in offsets:
        if n >= len(data):
            continue
        path = write_bytes(tmp_path, data[:n])
        with pytest.raises(native.RWKVError):
            lib.free(lib.init_from_file(path, 1))


def header(magic=0x67676D66, version=101, n_vocab=40, n_embed=32, n_layer=2, data_type=0) -> bytes:
    return struct.pack("<6i", magic, version, n_vocab, n_embed, n_layer, data_type)


def replace_header(path: Path, **fields) -> bytes:
    data = path.read_bytes()
    values = dict(zip(["magic", "version", "n_vocab", "n_embed", "n_layer", "data_type"], struct.unpack("<6i", data[:24])))
    values.update(fields)
    return header(**values) + data[24:]


def test_wrong_magic(lib, tmp_path, good_files):
    path = write_bytes(tmp_path, replace_header(good_files["fp32"], magic=0x12345678))
    assert_refused(lib, path, "not an rwkv.cpp model file")


def test_not_a_model_at_all(lib, tmp_path):
    path = write_bytes(tmp_path, b"PK\x03\x04 this is a zip, not a model" * 10)
    assert_refused(lib, path, "not an rwkv.cpp model file")


def test_unknown_version(lib, tmp_path, good_files):
    path = write_bytes(tmp_path, replace_header(good_files["fp32"], version=102))
    assert_refused(lib, path, "unsupported file version 102")


def test_unknown_header_type(lib, tmp_path, good_files):
    path = write_bytes(tmp_path, replace_header(good_files["fp32"], data_type=5))
    assert_refused(lib, path, "unknown data type 5")


@pytest.mark.parametrize("field,value", [("n_vocab", 0), ("n_embed", -1), ("n_layer", 100000)])
def test_implausible_header(lib, tmp_path, good_files, field, value):
    path = write_bytes(tmp_path, replace_header(good_files["fp32"], **{field: value}))
    assert_refused(lib, path, "implausible header")


def test_header_shapes_disagreeing_with_tensors(lib, tmp_path, good_files):
    path = write_bytes(tmp_path, replace_header(good_files["fp32"], n_embed=64))
    assert_refused(lib, path, "emb.weight")


def test_old_quantized_version_is_refused_with_advice(lib, tmp_path, good_files):
    path = write_bytes(tmp_path, replace_header(good_files["q51"], version=100))
    err = assert_refused(lib, path, "version 100")
    assert "re-quantize" in str(err)


def tensor_record(key: str, dims, type_id=0, key_len=None, n_dims=None, data=b"") -> bytes:
    raw = key.encode()
    out = struct.pack("<3i", len(dims) if n_dims is None else n_dims, len(raw) if key_len is None else key_len, type_id)
    out += struct.pack(f"<{len(dims)}i", *dims) + raw + data
    return out


def first_tensor_offset() -> int:
    return 24


def with_first_tensor(good: Path, record: bytes) -> bytes:
    data = good.read_bytes()
    return data[:24] + record + data[24:]


@pytest.mark.parametrize(
    "record,message",
    [
        (tensor_record("x", [4], n_dims=0), "dimensions"),
        (tensor_record("x", [4], n_dims=9), "dimensions"),
        (tensor_record("x", [4], key_len=1 << 30), "key length"),
        (tensor_record("x", [4], key_len=-5), "key length"),
        (tensor_record("x", [4], type_id=4), "unknown data type 4"),
        (tensor_record("x", [4], type_id=77), "unknown data type 77"),
        (tensor_record("x", [-4]), "dimension"),
        (tensor_record("x", [1 << 30, 1 << 30, 1 << 30]), "too large"),
        (tensor_record("x", [0x7FFFFFFF, 0x7FFFFFFF]), "too large"),
        (tensor_record("x", [1 << 20, 1 << 15]), "truncated"),
        (tensor_record("x", [33], type_id=8), "multiple of 32"),
        (tensor_record("x\x00y", [1], data=b"\0" * 4), "NUL"),
    ],
)
def test_bad_tensor_records(lib, tmp_path, good_files, record, message):
    path = write_bytes(tmp_path, with_first_tensor(good_files["fp32"], record))
    assert_refused(lib, path, message)


BAD_RECORDS = [
    tensor_record("x", [4], n_dims=0),
    tensor_record("x", [4], n_dims=9),
    tensor_record("x", [4], key_len=1 << 30),
    tensor_record("x", [4], key_len=-5),
    tensor_record("x" * (modelfile.MAX_KEY_LEN + 1), [1], data=b"\0" * 4),
    tensor_record("x", [4], type_id=4),
    tensor_record("x", [-4]),
    tensor_record("x", [1 << 30, 1 << 30, 1 << 30]),
    tensor_record("x", [0x7FFFFFFF, 0x7FFFFFFF]),
    tensor_record("x", [1 << 20, 1 << 15]),
    tensor_record("x", [33], type_id=8),
    tensor_record("x\x00y", [1], data=b"\0" * 4),
]


@pytest.mark.parametrize("index", range(len(BAD_RECORDS)))
def test_the_python_reader_refuses_what_the_engine_refuses(lib, tmp_path, good_files, index):
    path = write_bytes(tmp_path, with_first_tensor(good_files["fp32"], BAD_RECORDS[index]))
    assert_refused(lib, path)
    with pytest.raises(modelfile.ModelFileError):
        modelfile.list_tensors(path)


@pytest.mark.parametrize(
    "field,value",
    [("n_vocab", 0), ("n_embed", -1), ("n_layer", 100000), ("n_vocab", (1 << 24) + 1),
     ("n_embed", (1 << 20) + 1), ("n_layer", 4097)],
)
def test_the_python_reader_has_the_engines_header_limits(lib, tmp_path, good_files, field, value):
    path = write_bytes(tmp_path, replace_header(good_files["fp32"], **{field: value}))
    assert_refused(lib, path, "implausible header")
    with pytest.raises(modelfile.ModelFileError, match="implausible header"):
        modelfile.read_header(path)


def test_the_largest_header_values_the_engine_allows_pass_the_python_check(tmp_path, good_files):
    limits = {"n_vocab": 1 << 24, "n_embed": 1 << 20, "n_layer": 4096}
    path = write_bytes(tmp_path, replace_header(good_files["fp32"], **limits))
    header = modelfile.read_header(path)
    assert (header.n_vocab, header.n_embed, header.n_layer) == (1 << 24, 1 << 20, 4096)


def test_trailing_garbage(lib, tmp_path, good_files):
    path = write_bytes(tmp_path, good_files["fp32"].read_bytes() + b"\x01\x02\x03")
    assert_refused(lib, path, "truncated")


def rewrite_without(src: Path, dst: Path, skip=None, reshape=None) -> Path:
    head = modelfile.read_header(src)
    with modelfile.ModelWriter(dst, head.n_vocab, head.n_embed, head.n_layer, head.data_type) as w:
        for info in modelfile.list_tensors(src):
            if info.key == skip:
                continue
            value = modelfile.read_tensor(src, info)
            if info.key == reshape:
                value = np.resize(value, (value.shape[0] + 1,) + value.shape[1:])
            w.write_tensor(info.key, value, info.data_type)
    return dst


@pytest.mark.parametrize("key", ["blocks.1.att.key.weight", "ln_out.weight", "blocks.0.ffn.time_mix_r", "head.weight"])
def test_missing_tensor_is_named(lib, tmp_path, good_files, key):
    path = rewrite_without(good_files["fp32"], tmp_path / "missing.bin", skip=key)
    assert_refused(lib, path, key)


@pytest.mark.parametrize("key", ["blocks.0.att.value.weight", "blocks.1.ln2.bias", "emb.weight"])
def test_misshapen_tensor_is_named(lib, tmp_path, good_files, key):
    path = rewrite_without(good_files["fp32"], tmp_path / "misshapen.bin", reshape=key)
    assert_refused(lib, path, key)


def test_unknown_layout(lib, tmp_path, good_files):
    data = good_files["fp32"].read_bytes().replace(b"time_decay", b"time_decaz")
    assert_refused(lib, write_bytes(tmp_path, data), "unknown model layout")


def test_directory_and_missing_paths(lib, tmp_path):
    with pytest.raises(IsADirectoryError):
        lib.init_from_file(tmp_path, 1)
    with pytest.raises(FileNotFoundError):
        lib.init_from_file(tmp_path / "nope.bin", 1)


def test_c_level_path_errors(lib, tmp_path):
    """Without the Python pre-checks: the C loader reports the errors itself."""
    ffi, c = lib.ffi, lib.lib
    for path, message in [(tmp_path, "not a regular file"), (tmp_path / "nope.bin", "cannot open")]:
        assert c.rwkv_init_from_file(str(path).encode(), 1, 0) == ffi.NULL
        assert message in ffi.string(c.rwkv_get_last_error_message(ffi.NULL)).decode()
        assert c.rwkv_get_last_error(ffi.NULL) & 0xFF00 == 2 << 8  # RWKV_ERROR_FILE


def test_random_byte_corruption_never_crashes(lib, tmp_path, good_files):
    rng = np.random.default_rng(0)
    for which in ("fp32", "q51"):
        data = bytearray(good_files[which].read_bytes())
        for _ in range(150):
            mutated = bytearray(data)
            for pos in rng.integers(0, min(len(data), 4096), size=3):
                mutated[pos] = int(rng.integers(0, 256))
            path = write_bytes(tmp_path, bytes(mutated))
            try:
                ctx = lib.init_from_file(path, 1)
            except native.RWKVError:
                continue
            state = np.empty(lib.get_state_len(ctx), np.float32)
            logits = np.empty(lib.get_logits_len(ctx), np.float32)
            lib.eval(ctx, 1, None, state, logits)
            lib.free(ctx)


def test_quantizer_refuses_bad_input(lib, tmp_path, good_files):
    with pytest.raises(native.RWKVError, match="unsupported quantization format"):
        lib.quantize_model_file(good_files["fp32"], tmp_path / "o.bin", "Q3_K")
    with pytest.raises(native.RWKVError, match="only FP32 and FP16"):
        lib.quantize_model_file(good_files["q51"], tmp_path / "o.bin", "Q8_0")
    truncated = write_bytes(tmp_path, good_files["fp32"].read_bytes()[:500], "t.bin")
    with pytest.raises(native.RWKVError, match="truncated"):
        lib.quantize_model_file(truncated, tmp_path / "o.bin", "Q8_0")
    assert not (tmp_path / "o.bin").exists()


# ---- inputs the fuzz targets (tests/fuzz/) once crashed on ---------------------------------------

FUZZ_REGRESSIONS = REPO / "tests" / "fuzz" / "regressions"


ENGINE_REGRESSIONS = sorted(
    (FUZZ_REGRESSIONS / "load").glob("*")) + sorted((FUZZ_REGRESSIONS / "quantize").glob("*")
)


@pytest.mark.parametrize("path", ENGINE_REGRESSIONS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_engine_refuses_fuzz_regressions_clearly(lib, path, tmp_path):
    if path.parent.name == "load":
        assert_refused(lib, path)
    else:
        with pytest.raises(native.RWKVError):
            lib.quantize_model_file(path, tmp_path / "out.bin", "Q8_0")
        assert list(tmp_path.iterdir()) == []


# ---- the quantizer never harms its input, nor leaves a partial output ---------------------------


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def with_nan_in_last_matrix(source: Path, dest: Path) -> tuple[Path, str]:
    """A copy of an FP32 model whose last quantizable matrix holds one NaN (in its last row):
    the quantizer fails after writing most of its output."""
    data = bytearray(source.read_bytes())
    last = [
        info for info in modelfile.list_tensors(source)
        if modelfile.should_quantize(info.key, info.shape, info.data_type)
    ][-1]
    at = last.offset + last.nbytes - 4
    data[at : at + 4] = struct.pack("<f", float("nan"))
    dest.write_bytes(bytes(data))
    return dest, last.key


def test_quantizing_a_file_onto_itself_is_refused_and_leaves_it_intact(lib, tmp_path, good_files):
    source = tmp_path / "model.bin"
    shutil.copyfile(good_files["fp32"], source)
    original = source.read_bytes()
    other_spelling = tmp_path / "." / "model.bin"
    for out in (source, other_spelling):
        with pytest.raises(native.RWKVError, match="onto itself") as info:
            lib.quantize_model_file(source, out, "Q8_0")
        assert info.value.flags == (1 << 8) | 5  # RWKV_ERROR_ARGS | RWKV_ERROR_FILE_WRITE
        assert source.read_bytes() == original
    assert files_in(tmp_path) == ["model.bin"]  # no temporary file left either


def test_quantizing_onto_a_hard_link_or_symbolic_link_of_the_input_is_refused(lib, tmp_path, good_files):
    source = tmp_path / "model.bin"
    shutil.copyfile(good_files["fp32"], source)
    original = source.read_bytes()
    os.link(source, tmp_path / "hard.bin")
    os.symlink(source, tmp_path / "soft.bin")
    for out in ("hard.bin", "soft.bin"):
        with pytest.raises(native.RWKVError, match="same file"):
            lib.quantize_model_file(source, tmp_path / out, "Q4_0")
        assert source.read_bytes() == original
    # and the other way round: the input named through the link
    with pytest.raises(native.RWKVError, match="onto itself"):
        lib.quantize_model_file(tmp_path / "hard.bin", source, "Q4_0")
    assert source.read_bytes() == original
    assert files_in(tmp_path) == ["hard.bin", "model.bin", "soft.bin"]


def test_failed_quantization_leaves_no_partial_output_nor_temporary_file(lib, tmp_path, good_files):
    source, key = with_nan_in_last_matrix(good_files["fp32"], tmp_path / "nan.bin")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(native.RWKVError, match="not finite") as info:
        lib.quantize_model_file(source, out_dir / "q.bin", "Q8_0")
    assert key in str(info.value)
    assert files_in(out_dir) == []
    # an existing destination stays as it was until a complete output replaces it
    previous = out_dir / "q.bin"
    previous.write_bytes(b"the previous file")
    with pytest.raises(native.RWKVError, match="not finite"):
        lib.quantize_model_file(source, previous, "Q8_0")
    assert previous.read_bytes() == b"the previous file"
    assert files_in(out_dir) == ["q.bin"]


def test_quantization_replaces_an_existing_destination_when_complete(lib, tmp_path, good_files):
    dest = tmp_path / "q.bin"
    dest.write_bytes(b"the previous file")
    lib.quantize_model_file(good_files["fp32"], dest, "Q5_1")
    assert modelfile.read_header(dest).data_type_name == "Q5_1"
    lib.free(lib.init_from_file(dest, 1))
    assert files_in(tmp_path) == ["q.bin"]


def test_quantizer_reports_an_output_folder_it_cannot_write(lib, tmp_path, good_files):
    with pytest.raises(native.RWKVError, match="cannot create"):
        lib.quantize_model_file(good_files["fp32"], tmp_path / "missing" / "q.bin", "Q8_0")


def test_quantizer_refuses_a_folder_as_output_before_writing(lib, tmp_path, good_files):
    (tmp_path / "models").mkdir()
    with pytest.raises(native.RWKVError, match="is a folder"):
        lib.quantize_model_file(good_files["fp32"], tmp_path / "models", "Q8_0")
    assert files_in(tmp_path) == ["models"] and files_in(tmp_path / "models") == []


def _asan_runtime() -> str | None:
    try:
        out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(UNDER_SANITIZERS, reason="already the sanitized run")
def test_bad_files_under_sanitizers(tmp_path):
    native_dir = REPO / "native"
    runtime = _asan_runtime()
    if not (native_dir / "Makefile").exists() or shutil.which("make") is None or runtime is None:
        pytest.skip("needs the native sources, make and gcc's libasan")
    build = subprocess.run(
        ["make", "-s", "-C", str(native_dir), "asan"], capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, build.stderr
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=runtime,
        RWKV_CPP_LIB=str(native_dir / "build" / "librwkv-asan.so"),
        RWKV_TEST_SANITIZED="1",
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         str(Path(__file__).with_name("test_gguf_badfiles.py"))],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600, check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "passed" in run.stdout
