"""Where the engine keeps the weights: a read-only mapping of the file (RWKV_WEIGHTS=mmap) or a
copy in anonymous memory that asks for 2 MiB pages (the default for files of 64 MB and more
where the kernel offers such pages; RWKV_WEIGHTS=copy forces it on any file, as here).

Both must be the same model to every caller: the same logits bit for bit, the same errors for
a bad file, and nothing left behind. The variable is read when a model is loaded, so
monkeypatch.setenv before init_from_file is enough.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from engine_utils import run_sequence, run_serial
from gguf_writer import write_rwkv_gguf
from models import write_byte_model

from rwkv_cli import engine as native
from rwkv_cli.errors import RWKVError
from rwkv_cli.formats.synthetic import random_tensors

PROMPT = [5, 99, 17, 3, 200, 42, 7, 100, 1, 2, 140, 0]


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


def mapped_paths() -> set[str]:
    """The files this process has mapped (the path column of /proc/self/maps)."""
    paths = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            paths.add(fields[5].strip())
    return paths


def evaluate(lib, path, monkeypatch, storage):
    monkeypatch.setenv("RWKV_WEIGHTS", storage)
    ctx = lib.init_from_file(path, 2)
    try:
        mapped = str(Path(path).resolve()) in mapped_paths()
        serial = run_serial(lib, ctx, PROMPT)
        sequence = run_sequence(lib, ctx, PROMPT)
        states = [np.zeros(lib.get_state_len(ctx), np.float32) for _ in range(3)]
        logits = [np.empty(lib.get_logits_len(ctx), np.float32) for _ in range(3)]
        lib.eval_batch(ctx, PROMPT[:3], None, states, logits)
    finally:
        lib.free(ctx)
    return mapped, (serial, sequence, logits)


def rwkv_file(tmp_path, arch, data_type):
    return write_byte_model(tmp_path / f"v{arch}-{data_type}.bin", arch, data_type)


def gguf_file(tmp_path, arch, kind):
    tensors = list(random_tensors(arch, 2, 256, 300, 64, 1024, seed=5))
    return write_rwkv_gguf(tmp_path / f"v{arch}-{kind}.gguf", arch, tensors, 2, 256, 64, kind=kind).path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the copy exists on Linux only")
@pytest.mark.parametrize(
    "make, arch, kind",
    [(rwkv_file, "4", "FP32"), (rwkv_file, "5.2", "FP16"), (rwkv_file, "7", "Q8_0"),
     (rwkv_file, "6", "Q4_0"), (gguf_file, "7", "Q4_K"), (gguf_file, "6", "BF16")],
)
def test_copy_and_mapping_are_the_same_model(lib, tmp_path, monkeypatch, make, arch, kind):
    path = make(tmp_path, arch, kind)
    mapped, from_mapping = evaluate(lib, path, monkeypatch, "mmap")
    copied_still_mapped, from_copy = evaluate(lib, path, monkeypatch, "copy")
    assert mapped, "RWKV_WEIGHTS=mmap should map the file"
    assert not copied_still_mapped, "RWKV_WEIGHTS=copy should read the file, not keep it mapped"
    (serial_m, sequence_m, batch_m), (serial_c, sequence_c, batch_c) = from_mapping, from_copy
    for a, b in ((serial_m, serial_c), (sequence_m, sequence_c)):
        np.testing.assert_array_equal(a[0], b[0])  # logits
        np.testing.assert_array_equal(a[1], b[1])  # state
    for a, b in zip(batch_m, batch_c):
        np.testing.assert_array_equal(a, b)
    assert str(Path(path).resolve()) not in mapped_paths()  # freed: nothing left mapped


@pytest.mark.parametrize("storage", ["mmap", "copy"])
def test_a_truncated_file_is_refused_the_same_way(lib, tmp_path, monkeypatch, storage):
    whole = rwkv_file(tmp_path, "7", "FP16").read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    monkeypatch.setenv("RWKV_WEIGHTS", storage)
    with pytest.raises(RWKVError) as caught:
        lib.init_from_file(cut, 1)
    monkeypatch.setenv("RWKV_WEIGHTS", "mmap" if storage == "copy" else "copy")
    with pytest.raises(RWKVError) as other:
        lib.init_from_file(cut, 1)
    assert str(caught.value) == str(other.value)
    assert "cut.bin" in str(caught.value)


def test_an_unknown_choice_is_refused_by_name(lib, tmp_path, monkeypatch):
    path = rwkv_file(tmp_path, "4", "FP32")
    monkeypatch.setenv("RWKV_WEIGHTS", "hugepages")
    with pytest.raises(RWKVError, match="RWKV_WEIGHTS=hugepages is not a choice: mmap, copy"):
        lib.init_from_file(path, 1)
    monkeypatch.setenv("RWKV_WEIGHTS", "")  # empty is unset: the automatic choice
    lib.free(lib.init_from_file(path, 1))
