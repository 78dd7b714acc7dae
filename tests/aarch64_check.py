"""The AArch64 build under emulation: `make -C native test-aarch64` cross-compiles the kernel
harness (tests/kernels_check.c, with gcc, with UndefinedBehaviorSanitizer traps, and with clang
when it is installed) and the engine check (tests/engine_check.c), statically linked, then runs
this script, which runs them under qemu-user and fails on any difference:

- kernels: every AArch64 path (scalar, neon, neon_dotprod) and every tensor type against the
  scalar path, with the bounds of the x86 paths (kernel_bounds.py); exp and sigmoid over the
  whole float range (every 4096th bit pattern here, every 256th on the host); non-finite
  activations. The baseline paths run on an emulated Cortex-A53 (Armv8.0, no SDOT: an
  instruction the baseline build must not use stops it), neon_dotprod on qemu's `max` CPU, and
  the A53 must not be offered neon_dotprod at all.
- the engine: a model of every tensor type, rwkv.cpp files (v7) and GGUF files (v7; v6 in one
  K-quant) written by our own writers, evaluated one token at a time, as a sequence and as a
  batch on every path and compared with the scalar path (engine_check.c), and the scalar path's
  logits compared with this machine's native build of the engine (the installed package);
  rwkv.cpp's trained tiny models of ../shared/fixtures (v4, v5.1, v5.2, v6, v7) against their
  expected logits (a failure when absent under RWKV_REQUIRE_FIXTURES=1, as in the test suite;
  without them, a random model of each of those architectures in their place).
  RWKV_KERNELS: each path forced where the CPU has it; one the CPU lacks and one the build
  lacks refused with the engine's message.

One type per model and one architecture per type: the x86 tests cover the loaders and the
architectures' arithmetic on every path; what is AArch64's own is the kernels, so the time
under emulation (CI runs this) goes to them.

Needs python with this package and its test extras installed. Prints one line per failure
and a summary; exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from engine_utils import run_serial
from gguf_writer import write_rwkv_gguf
from helpers import FIXTURE_TOKENS, FIXTURE_VERSIONS, REQUIRE_FIXTURES, TINY
from kernel_bounds import (
    ARM_PATHS,
    ELEMENT_RATIO,
    ENGINE_BLOCK_L2,
    ENGINE_TOLERANCE,
    EXACT_RATIO,
    KERNEL_TYPES,
    REL_ERR,
    TYPES,
    ULP_BOUND,
    kind,
)

from rwkv_cli import engine as native
from rwkv_cli.formats.synthetic import random_tensors, write_random_model

# qemu's CPU models: `max` has every feature qemu emulates (SDOT included); the Cortex-A53
# (Armv8.0-A, the Raspberry Pi 3's core) has Advanced SIMD and no SDOT.
CPU_MAX = "max"
CPU_BASELINE = "cortex-a53"
PATH_CPU = {"scalar": CPU_BASELINE, "neon": CPU_BASELINE, "neon_dotprod": CPU_MAX}
assert set(ARM_PATHS) <= set(PATH_CPU)

N_VOCAB = 300
TOKENS = [(i * 37 + 5) % N_VOCAB for i in range(21)]
# exp and sigmoid: every 2^12-th bit pattern (2^20 of them) besides the 2^21 random inputs;
# the host's test_kernels.py sweeps every 2^8-th
SWEEP_STRIDE_BITS = 12

# The fixture README's limits on sum(logits - expected), per file (rwkv.cpp's own rule).
FIXTURE_LIMITS = {
    "4v0": {"FP32": 0.001, "FP16": 0.013652, "Q5_0": 0.170404, "Q5_1": 0.278034},
    "5v1": {"FP32": 0.001, "FP16": 0.289921, "Q5_0": 163.439407, "Q5_1": 18.017435},
    "5v2": {"FP32": 0.001, "FP16": 0.455912, "Q5_0": 25.273308, "Q5_1": 48.068733},
    "6v0": {"Q5_0": 21.151785, "Q5_1": 3.576909},
    "7v0": {"FP32": 0.001, "FP16": 0.005766},
}


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.passed = 0
        self.failures: list[str] = []

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        with self.lock:
            if ok:
                self.passed += 1
            else:
                self.failures.append(f"{name}: {detail}".strip())
                print(f"FAIL {name}: {detail}", flush=True)


def emulate(qemu: str, cpu: str, program: Path, *args: str, env: dict | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [qemu, "-cpu", cpu, str(program), *args], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})}, check=False,
    )


# ---- kernels ------------------------------------------------------------------------------------


def check_products(results: Results, qemu: str, harness: Path, path: str, dtype: str) -> None:
    name = f"kernels {harness.name} {path} {dtype}"
    proc = emulate(qemu, PATH_CPU[path], harness, path, dtype)
    if proc.returncode != 0:
        results.add(name, False, f"exit {proc.returncode}: {proc.stdout[-300:]} {proc.stderr[-300:]}")
        return
    rows = [line.split() for line in proc.stdout.splitlines()]
    bad = []
    for fields in rows:
        if fields[0] != "shape" or len(fields) not in (7, 8):
            bad.append(" ".join(fields))
            continue
        rel_err, ratio, exact = map(float, fields[4:7])
        if path == "scalar":
            ok = rel_err == 0.0 and ratio == 0.0
        else:
            ok = rel_err < REL_ERR and ratio < ELEMENT_RATIO
        if not (ok and exact < EXACT_RATIO[kind(dtype)] and len(fields) == 7):
            bad.append(" ".join(fields))
    tokens = {int(fields[3]) for fields in rows if len(fields) >= 4 and fields[0] == "shape"}
    if not tokens >= {1, 3, 4, 5, 64}:
        bad.append(f"token counts {sorted(tokens)}")
    results.add(name, not bad, "; ".join(bad[:3]))


def check_sweep(results: Results, qemu: str, harness: Path, path: str, function: str) -> None:
    name = f"sweep {path} {function}"
    proc = emulate(qemu, PATH_CPU[path], harness, path, function, str(SWEEP_STRIDE_BITS))
    fields = proc.stdout.split()
    if proc.returncode != 0 or fields[:2] != ["sweep", function]:
        results.add(name, False, f"exit {proc.returncode}: {proc.stdout} {proc.stderr[-300:]}")
        return
    count, max_ulp = int(fields[2]), int(fields[3])
    nan_mismatches, range_mismatches = int(fields[5]), int(fields[6])
    ok = (count > (1 << (32 - SWEEP_STRIDE_BITS)) + (1 << 21) and max_ulp <= ULP_BOUND[function]
          and nan_mismatches == 0 and range_mismatches == 0)
    results.add(name, ok, proc.stdout.strip() + " " + proc.stderr.strip())


def check_nonfinite(results: Results, qemu: str, harness: Path, path: str, dtype: str) -> None:
    name = f"nonfinite {path} {dtype}"
    proc = emulate(qemu, PATH_CPU[path], harness, path, dtype, "nonfinite")
    lines = [line.split() for line in proc.stdout.splitlines()]
    ok = (proc.returncode == 0 and [int(f[1]) for f in lines] == [1, 3, 6, 9]
          and all(f[2] == "0" and f[3] == "0" for f in lines))
    results.add(name, ok, f"exit {proc.returncode}: {proc.stdout.strip()} {proc.stderr[-300:]}")


def check_detection(results: Results, qemu: str, harness: Path) -> None:
    """The A53 has no SDOT: the dot-product path is not offered there; `max` offers both."""
    proc = emulate(qemu, CPU_BASELINE, harness, "neon_dotprod", "Q8_0")
    results.add("detection: no neon_dotprod on a Cortex-A53",
                proc.returncode == 2 and "available: scalar neon)" in proc.stdout, proc.stdout)
    proc = emulate(qemu, CPU_MAX, harness, "neon_dotprod", "Q8_0")
    results.add("detection: neon_dotprod on qemu's max CPU", proc.returncode == 0, proc.stdout)


def check_forcing(results: Results, qemu: str, program: Path, model: Path) -> None:
    """RWKV_KERNELS through the engine: the path asked for, or a refusal that says why."""
    want = {
        CPU_BASELINE: {"scalar": "selected scalar", "neon": "selected neon",
                       "neon_dotprod": "refused RWKV_KERNELS=neon_dotprod is not supported by this CPU",
                       "avx2": "refused RWKV_KERNELS=avx2 is not a kernel path of this build"},
        CPU_MAX: {"neon_dotprod": "selected neon_dotprod", "neon": "selected neon",
                  "sse9": "refused RWKV_KERNELS=sse9 is not a kernel path of this build"},
    }
    for cpu, cases in want.items():
        args = [arg for path in cases for arg in ("-f", path)]
        proc = emulate(qemu, cpu, program, *args, str(model))
        got = {f[1]: " ".join(f[2:]) for f in (line.split() for line in proc.stdout.splitlines())
               if len(f) > 2 and f[0] == "forced"}
        wrong = [f"{path}: {got.get(path)!r}" for path, outcome in cases.items()
                 if not (got.get(path) or "").startswith(outcome)]
        results.add(f"RWKV_KERNELS forced ({cpu})", proc.returncode == 0 and not wrong,
                    f"exit {proc.returncode}: {'; '.join(wrong)} {proc.stderr[-300:]}")


# ---- the engine -----------------------------------------------------------------------------------


def write_models(root: Path, other_architectures: bool) -> list[tuple[str, Path, dict]]:
    """(name, path, options) of random-weight models: every rwkv.cpp type (v7), GGUF files of
    the types only they hold (v7; v6 in one K-quant) and, when asked (no fixtures), v4, v5.1,
    v5.2 and v6 in one float and one block type."""
    models = []
    for dtype in TYPES:
        path = write_random_model(root / f"v7-{dtype}.bin", "7", 2, 128, N_VOCAB, dtype, seed=3)
        models.append((f"v7 {dtype}", path, {"blocks": kind(dtype) == "quantized"}))
    for arch in ("4", "5.1", "5.2", "6") if other_architectures else ():
        for dtype in ("FP16", "Q5_1"):
            path = write_random_model(root / f"v{arch}-{dtype}.bin", arch, 2, 128, N_VOCAB, dtype, seed=4)
            models.append((f"v{arch} {dtype}", path, {"blocks": kind(dtype) == "quantized"}))
    # BF16 128 wide, as the rwkv.cpp types; the K-quants 256 wide (whole super-blocks), the
    # 512-wide FFN rows holding two
    gguf = [("7", "BF16", 128, 512)]
    gguf += [("7", k, 256, 512) for k in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")]
    gguf += [("6", "Q4_K", 256, 512)]
    for arch, gguf_kind, width, ffn_dim in gguf:
        tensors = random_tensors(arch, 2, width, N_VOCAB, 64, ffn_dim=ffn_dim, seed=5)
        path = write_rwkv_gguf(root / f"v{arch}-{gguf_kind}.gguf", arch, tensors, 2, width, 64, kind=gguf_kind,
                               rescale_every=1 if arch == "6" else 0, keep_values=False).path
        models.append((f"gguf v{arch} {gguf_kind}", path, {"blocks": gguf_kind != "BF16"}))
    return models


def fixture_models() -> list[tuple[str, Path, dict]]:
    models = []
    for version, limits in FIXTURE_LIMITS.items():
        full = FIXTURE_VERSIONS[version]
        for dtype, limit in limits.items():
            options = {
                "blocks": kind(dtype) == "quantized",
                "tokens": FIXTURE_TOKENS,
                "expected": TINY / f"expected-logits-{full}.bin",
                "sum_limit": limit,
                "max_abs": 1e-4 if dtype == "FP32" else None,
                # rwkv.cpp made the v5 fixtures with group-norm eps 1e-5 (test_shared_engine.py)
                "env": {"RWKV_V5_LN_X_EPS": "1e-5"} if version.startswith("5") else {},
            }
            models.append((f"fixture {version} {dtype}", TINY / f"tiny-rwkv-{full}-{dtype}.bin", options))
    return models


def host_scalar_logits(model: Path, tokens: list[int], env: dict) -> np.ndarray:
    """This machine's native build (the installed package), scalar path, one token at a time."""
    saved = {key: os.environ.get(key) for key in ("RWKV_KERNELS", *env)}
    os.environ.update({"RWKV_KERNELS": "scalar", **env})
    try:
        lib = native.default_library()
        ctx = lib.init_from_file(model, 1)
        try:
            logits, _ = run_serial(lib, ctx, tokens)
        finally:
            lib.free(ctx)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return logits


def check_engine(results: Results, qemu: str, program: Path, cpu: str, name: str, model: Path,
                 options: dict, dump: Path, host_lock: threading.Lock) -> None:
    tokens = options.get("tokens", TOKENS)
    args = ["-t", ",".join(map(str, tokens)), "-o", str(dump)]
    args += ["-r", "inf", "-l", str(ENGINE_BLOCK_L2)] if options["blocks"] else ["-r", str(ENGINE_TOLERANCE)]
    if options.get("expected"):
        args += ["-e", str(options["expected"]), "-s", str(options["sum_limit"])]
        if options.get("max_abs"):
            args += ["-m", str(options["max_abs"])]
    env = options.get("env", {})
    proc = emulate(qemu, cpu, program, *args, str(model), env=env)
    label = f"engine {name} ({cpu})"
    lines = [line.split() for line in proc.stdout.splitlines()]
    available = next((f[1:] for f in lines if f and f[0] == "available"), [])
    default = next((f[1] for f in lines if f and f[0] == "default"), None)
    checks = [f for f in lines if f and f[0] == "check"]
    want_paths = ["scalar", "neon", "neon_dotprod"] if cpu == CPU_MAX else ["scalar", "neon"]
    ok = (proc.returncode == 0 and available == want_paths and default == want_paths[-1]
          and len(checks) == 3 * len(want_paths) and all(f[-1] == "ok" for f in checks))
    results.add(label, ok, f"exit {proc.returncode}: {proc.stdout[-800:]} {proc.stderr[-400:]}")
    if proc.returncode != 0 or cpu != CPU_MAX:
        return
    # the two AArch64 sets sum every block's integer products exactly before any float
    # arithmetic (kernels_neon.h): the same bits, with SDOT or without
    bits = {(f[1], f[2]): next(x for x in f if x.startswith("bits=")) for f in checks}
    same = all(bits[("neon", mode)] == bits[("neon_dotprod", mode)] for mode in ("serial", "sequence", "batch"))
    results.add(f"{label}: neon and neon_dotprod give the same bits", same, str(bits))
    arm = np.fromfile(dump, dtype="<f4").astype(np.float64)
    with host_lock:  # the environment is the process's
        host = host_scalar_logits(model, tokens, env).astype(np.float64)
    # the same code, another compiler and instruction set (AArch64 fuses multiply-adds): the
    # bounds between kernel paths
    if options["blocks"]:
        share, bound = float(np.linalg.norm(arm - host) / np.linalg.norm(host)), ENGINE_BLOCK_L2
    else:
        share, bound = float(np.max(np.abs(arm - host)) / np.std(host)), ENGINE_TOLERANCE
    results.add(f"{label}: AArch64 scalar against this machine's scalar build", share <= bound,
                f"difference {share:.3e} of the logits > {bound:.3e}")


# ---- the whole run --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", type=Path, required=True, help="folder of the static AArch64 programs")
    parser.add_argument("--qemu", default="qemu-aarch64-static")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if shutil.which(args.qemu) is None:
        print(f"test-aarch64: {args.qemu} not found (Debian: apt-get install qemu-user-static)", file=sys.stderr)
        return 1
    harness, harness_ub = args.build / "kernels_check", args.build / "kernels_check_ub"
    harness_clang, program = args.build / "kernels_check_clang", args.build / "engine_check"
    for required in (harness, harness_ub, program):
        if not required.exists():
            print(f"test-aarch64: {required} missing (make -C native test-aarch64 builds it)", file=sys.stderr)
            return 1
    harnesses = [harness] + ([harness_clang] if harness_clang.exists() else [])
    if len(harnesses) == 1:
        print("test-aarch64: no clang: the clang build of the kernels was not checked")

    results = Results()
    work = Path(tempfile.mkdtemp(prefix="rwkv-aarch64-"))
    host_lock = threading.Lock()
    jobs = []
    paths = ["scalar", *ARM_PATHS]
    # the longest first. The scalar exp is the C library's expf, the sweep's own reference.
    for path in paths:
        for function in ("exp", "sigmoid") if path != "scalar" else ("sigmoid",):
            jobs.append((check_sweep, (results, args.qemu, harness, path, function)))
    models = write_models(work, other_architectures=not TINY.is_dir())
    if TINY.is_dir():
        models += fixture_models()
    elif REQUIRE_FIXTURES:
        results.add("fixtures", False, f"{TINY} absent (RWKV_REQUIRE_FIXTURES=1)")
    else:
        print(f"test-aarch64: {TINY} absent: rwkv.cpp's tiny models were not checked")
    for i, (name, model, options) in enumerate(models):
        jobs.append((check_engine, (results, args.qemu, program, CPU_MAX, name, model, options,
                                    work / f"logits-{i}.bin", host_lock)))
    for name, model, options in (models[0], models[-1]):  # the baseline's detection, end to end
        jobs.append((check_engine, (results, args.qemu, program, CPU_BASELINE, name, model, options,
                                    work / "unused.bin", host_lock)))
    for h in harnesses:
        # the clang build differs from gcc's in the SIMD sets (clang's SDOT is inline assembly)
        for path in paths if h == harness else ARM_PATHS:
            for dtype in KERNEL_TYPES:
                jobs.append((check_products, (results, args.qemu, h, path, dtype)))
    for path in paths:
        for dtype in KERNEL_TYPES:
            jobs.append((check_nonfinite, (results, args.qemu, harness_ub, path, dtype)))
    jobs.append((check_detection, (results, args.qemu, harness)))
    jobs.append((check_forcing, (results, args.qemu, program, models[0][1])))

    def run(job):
        function, job_args = job
        try:
            function(*job_args)
        except (subprocess.TimeoutExpired, OSError, ValueError, IndexError, native.RWKVError) as error:
            # a check that cannot finish is that check's failure
            results.add(f"{function.__name__}{job_args[3:5]}", False, repr(error))

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(run, jobs))
    shutil.rmtree(work, ignore_errors=True)
    print(f"test-aarch64: {results.passed} checks passed, {len(results.failures)} failed")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
