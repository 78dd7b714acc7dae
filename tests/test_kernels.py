"""Kernel paths: every SIMD path against the scalar reference, per tensor type, both at the
kernel level (odd shapes, unaligned weights, a C harness) and through the engine (random-
weight models, forced paths); threads and sequence mode change nothing; no allocation per
token."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from engine_utils import run_sequence, run_serial
from kernel_bounds import (
    ELEMENT_RATIO,
    ENGINE_TOLERANCE,
    EXACT_RATIO,
    KERNEL_TYPES,
    REL_ERR,
    SIMD_PATHS,
    TYPES,
    ULP_BOUND,
    kind,
)

from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import write_random_model

REPO = Path(__file__).resolve().parents[1]
NATIVE = REPO / "native"
QUANTIZED = TYPES[2:]


# ---- kernel level: the C harness ---------------------------------------------------------------


def build_harness(tmp_path_factory, name: str, flags: list[str]) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the kernel harness")
    out = tmp_path_factory.mktemp("kernels") / name
    sources = sorted(str(p) for p in NATIVE.glob("kernels*.c")) + [
        str(NATIVE / "tensor.c"), str(NATIVE / "kquants.c")]
    subprocess.run(
        [cc, "-std=gnu11", *flags, "-pthread", f"-I{NATIVE}", "-o", str(out),
         str(REPO / "tests" / "kernels_check.c"), *sources, "-lm"],
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    return build_harness(tmp_path_factory, "kernels_check", ["-O2"])


@pytest.fixture(scope="module")
def ubsan_harness(tmp_path_factory) -> Path:
    """The harness with UndefinedBehaviorSanitizer: any report ends it with a failure."""
    flags = ["-O1", "-g", "-fsanitize=undefined", "-fno-sanitize-recover=all"]
    return build_harness(tmp_path_factory, "kernels_check_ubsan", flags)


def run_harness(harness: Path, path: str, dtype: str) -> list[tuple[int, int, int, float, float, float]]:
    proc = subprocess.run(
        [str(harness), path, dtype], check=False, capture_output=True, text=True, timeout=60
    )
    if proc.returncode == 2:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        assert fields[0] == "shape" and len(fields) == 7, line
        rows.append((int(fields[1]), int(fields[2]), int(fields[3]), *map(float, fields[4:7])))
    return rows


@pytest.mark.parametrize("dtype", KERNEL_TYPES)
@pytest.mark.parametrize("path", SIMD_PATHS)
def test_simd_products_match_scalar(harness, path, dtype):
    results = run_harness(harness, path, dtype)
    assert {t for _, _, t, *_ in results} >= {1, 3, 4, 5, 64}
    for rows, cols, tokens, rel_err, ratio, exact_ratio in results:
        shape = f"{path} {dtype} rows={rows} cols={cols} tokens={tokens}"
        assert rel_err < REL_ERR, shape
        assert ratio < ELEMENT_RATIO, shape
        assert exact_ratio < EXACT_RATIO[kind(dtype)], shape


@pytest.mark.parametrize("dtype", KERNEL_TYPES)
def test_scalar_products_match_exact_products(harness, dtype):
    for rows, cols, tokens, rel_err, ratio, exact_ratio in run_harness(harness, "scalar", dtype):
        assert rel_err == 0.0 and ratio == 0.0  # the harness's own reference is the scalar path
        assert exact_ratio < EXACT_RATIO[kind(dtype)], f"rows={rows} cols={cols} tokens={tokens}"


@pytest.mark.parametrize("dtype", KERNEL_TYPES)
@pytest.mark.parametrize("path", ["scalar", *SIMD_PATHS])
def test_nonfinite_activations_give_nonfinite_outputs_without_undefined_behaviour(
    ubsan_harness, path, dtype
):
    """A NaN or infinity among a token's activations (absurd weights upstream) makes that
    token's outputs NaN or infinite on every path, never finite garbage from integer codes
    (nor the signed overflow that converting NaN to int8 blocks once caused); subnormal blocks
    and the other tokens are unaffected."""
    proc = subprocess.run(
        [str(ubsan_harness), path, dtype, "nonfinite"], check=False, capture_output=True,
        text=True, timeout=120,
    )
    if proc.returncode == 2:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()]
    assert [int(fields[1]) for fields in lines] == [1, 3, 6, 9], proc.stdout
    for _, tokens, poisoned_finite, clean_mismatches in lines:
        assert poisoned_finite == "0", f"{tokens} tokens: {proc.stdout}"
        assert clean_mismatches == "0", f"{tokens} tokens: {proc.stdout}"


# ---- exp and sigmoid over the whole float range --------------------------------------------------


@pytest.mark.parametrize("function", ["exp", "sigmoid"])
@pytest.mark.parametrize("path", ["scalar", *SIMD_PATHS])
def test_vector_functions_follow_libm_over_the_whole_float_range(harness, path, function):
    proc = subprocess.run(
        [str(harness), path, function], check=False, capture_output=True, text=True, timeout=120
    )
    if proc.returncode == 2:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fields = proc.stdout.split()
    assert fields[:2] == ["sweep", function], proc.stdout
    count, max_ulp, worst_x = int(fields[2]), int(fields[3]), float.fromhex(fields[4])
    nan_mismatches, range_mismatches = int(fields[5]), int(fields[6])
    assert count > 1 << 24  # every 256th bit pattern and more
    assert nan_mismatches == 0, proc.stderr  # NaN in, NaN out; nothing else NaN
    assert range_mismatches == 0, proc.stderr  # overflow is infinity, deep underflow 0
    assert max_ulp <= ULP_BOUND[function], f"{max_ulp} ulp at x = {worst_x}"


# ---- engine level: random-weight models -------------------------------------------------------


@pytest.fixture(scope="module")
def lib() -> native.Library:
    return native.default_library()


@pytest.fixture(scope="module")
def models(tmp_path_factory, lib) -> dict[str, Path]:
    """Small v4 models of every type: FP32 with odd widths, quantized ones with an odd number
    of blocks per row (96 = 3 blocks; ffn 384 = 12)."""
    root = tmp_path_factory.mktemp("kernel-models")
    paths = {
        "FP32": write_random_model(root / "fp32.bin", "4", 2, 67, 101, "FP32", ffn_dim=203),
        "FP16": write_random_model(root / "fp16.bin", "4", 2, 67, 101, "FP16", ffn_dim=203),
    }
    source = write_random_model(root / "source.bin", "4", 2, 96, 101, "FP32", ffn_dim=384)
    for dtype in QUANTIZED:
        paths[dtype] = root / f"{dtype}.bin"
        lib.quantize_model_file(source, paths[dtype], dtype)
    return paths


def available_paths(lib) -> list[str]:
    info = lib.get_system_info_string()
    return info.split("kernels available: ")[1].split(" |")[0].split()


def load(lib, path: Path, threads: int, kernel_path: str | None, monkeypatch):
    if kernel_path is None:
        monkeypatch.delenv("RWKV_KERNELS", raising=False)
    else:
        monkeypatch.setenv("RWKV_KERNELS", kernel_path)
    ctx = lib.init_from_file(path, threads)
    if kernel_path is not None:
        assert lib.get_kernel_path(ctx) == kernel_path
    return ctx


TOKENS = [3, 99, 14, 15, 92, 65, 35, 89, 79, 32, 38]


def logits_of(lib, path, threads, kernel_path, monkeypatch, mode="serial"):
    ctx = load(lib, path, threads, kernel_path, monkeypatch)
    try:
        run = run_serial if mode == "serial" else run_sequence
        logits, state = run(lib, ctx, TOKENS)
    finally:
        lib.free(ctx)
    return logits, state


@pytest.mark.parametrize("dtype", TYPES)
def test_engine_paths_agree_with_scalar(lib, models, dtype, monkeypatch):
    reference, _ = logits_of(lib, models[dtype], 2, "scalar", monkeypatch)
    spread = float(np.std(reference))
    # through 2 layers and the head, relative to the spread of the logits: only the order of
    # float sums differs between paths
    tolerance = ENGINE_TOLERANCE
    checked = 0
    for path in available_paths(lib):
        if path == "scalar":
            continue
        for mode in ("serial", "sequence"):
            logits, _ = logits_of(lib, models[dtype], 2, path, monkeypatch, mode)
            assert np.max(np.abs(logits - reference)) < tolerance * spread, (path, mode)
            checked += 1
    if checked == 0:
        pytest.skip("this CPU has no SIMD kernel path")


@pytest.mark.parametrize("dtype", ["FP16", "Q4_1", "Q8_0"])
def test_thread_counts_give_identical_logits(lib, models, dtype, monkeypatch):
    for mode in ("serial", "sequence"):
        one, state_one = logits_of(lib, models[dtype], 1, None, monkeypatch, mode)
        for threads in (2, 3):
            logits, state = logits_of(lib, models[dtype], threads, None, monkeypatch, mode)
            np.testing.assert_array_equal(logits, one)
            np.testing.assert_array_equal(state, state_one)


@pytest.mark.parametrize("dtype", TYPES)
def test_sequence_mode_equals_serial_mode(lib, models, dtype, monkeypatch):
    serial, serial_state = logits_of(lib, models[dtype], 2, None, monkeypatch, "serial")
    sequence, sequence_state = logits_of(lib, models[dtype], 2, None, monkeypatch, "sequence")
    # the same arithmetic either way; only the order of float sums differs
    spread = float(np.std(serial))
    assert np.max(np.abs(sequence - serial)) < 1e-4 * spread
    # the state carries exp() of the keys, which magnifies rounding differences a little
    assert np.allclose(sequence_state, serial_state, rtol=1e-3, atol=1e-4)


def test_unknown_kernel_path_is_refused(lib, models, monkeypatch):
    monkeypatch.setenv("RWKV_KERNELS", "sse9")
    with pytest.raises(native.RWKVError, match="sse9"):
        lib.init_from_file(models["FP32"], 1)


def test_default_path_is_the_best_available(lib, models, monkeypatch):
    ctx = load(lib, models["FP32"], 1, None, monkeypatch)
    try:
        assert lib.get_kernel_path(ctx) == available_paths(lib)[-1]
    finally:
        lib.free(ctx)


# ---- no allocation per token, counted by an interposed malloc -----------------------------------


@pytest.fixture(scope="module")
def alloc_harness(tmp_path_factory) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the allocation harness")
    out = tmp_path_factory.mktemp("alloc") / "alloc_check"
    sources = sorted(str(p) for p in NATIVE.glob("*.c"))
    subprocess.run(
        [cc, "-std=gnu11", "-O2", "-pthread", f"-I{NATIVE}", "-o", str(out),
         str(REPO / "tests" / "alloc_check.c"), *sources, "-lm"],
        check=True,
    )
    return out


def _gguf_model(path: Path, arch: str) -> Path:
    """A K-quant GGUF (llama.cpp's layout; v6 with its residual rescaling)."""
    from gguf_writer import write_rwkv_gguf

    from rwkv_cli.formats.synthetic import random_tensors

    tensors = random_tensors(arch, 2, 256, 300, 64, ffn_dim=1024, seed=5)
    return write_rwkv_gguf(path, arch, tensors, 2, 256, 64, kind="Q4_K", rescale_every=1 if arch == "6" else 0,
                           keep_values=False).path


@pytest.mark.parametrize("arch", ["4", "5.2", "6", "7", "gguf-6", "gguf-7"])
@pytest.mark.parametrize("threads", [1, 2])
def test_evaluating_tokens_allocates_nothing(alloc_harness, tmp_path, arch, threads):
    if arch.startswith("gguf-"):
        model = _gguf_model(tmp_path / f"{arch}.gguf", arch[5:])
    else:
        model = write_random_model(tmp_path / f"{arch}.bin", arch, 2, 64, 300, data_type="Q8_0", seed=5)
    proc = subprocess.run(
        [str(alloc_harness), str(model), str(threads)], capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = dict(line.split() for line in proc.stdout.splitlines())
    assert int(counts["load"]) > 0  # the interposed malloc does see the engine's allocations
    assert counts["allocations"] == "0", proc.stdout
