"""What every SIMD kernel path must meet against the scalar path, as measured by the C harness
tests/kernels_check.c: shared by test_kernels.py (the paths of the machine running the tests)
and aarch64_check.py (the AArch64 paths under emulation)."""

from __future__ import annotations

import platform

TYPES = ["FP32", "FP16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
# the types of GGUF files only
GGUF_TYPES = ["BF16", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
KERNEL_TYPES = TYPES + GGUF_TYPES
X86_PATHS = ["avx2", "avx512", "amx"]
ARM_PATHS = ["neon", "neon_dotprod"]
# the SIMD paths a build for this machine has (the harness says which of them the CPU runs)
SIMD_PATHS = ARM_PATHS if platform.machine().lower() in ("aarch64", "arm64") else X86_PATHS

# Every path computes the same numbers as the scalar one up to the order of the float sums:
# quantized weights meet int8 activations (per 32-value block, as rwkv.cpp does) on every path,
# and their integer dot products are exact.
REL_ERR = 1e-5  # |y - y_scalar| / |y_scalar| over a whole product
ELEMENT_RATIO = 1e-6  # |y_rt - y_scalar_rt| / (|w_r| |x_t|)
# Against the exact product of the stored weights with the float activations: int8
# activations cost at most half a step (max|x| / 254) per value.
EXACT_RATIO = {"float": 1e-6, "quantized": 5e-3}

# The bounds native/engine.h states: exp within 2 ulp of expf, sigmoid within 3 ulp of the exact
# value (measured on the development machine, gcc and clang: exp 0 ulp scalar (it is expf) and
# 1 ulp avx2/avx512/neon/neon_dotprod; sigmoid 2 ulp scalar, 3 ulp on the SIMD paths).
ULP_BOUND = {"exp": 2, "sigmoid": 3}

# Logits of a whole model on a SIMD path against the scalar path. Float weights: the largest
# difference relative to the spread (standard deviation) of the scalar logits; only the order
# of float sums differs. Block types: that order moves an activation now and then across an
# int8 rounding boundary (one code step of 254 in a block), which moves the logits of a few-
# layer model by about 1%: the norm of the difference relative to the norm of the logits (a
# misread layout is off by about 100%; the kernel harness bounds each product tightly).
ENGINE_TOLERANCE = 1e-4
ENGINE_BLOCK_L2 = 2e-2


def kind(dtype: str) -> str:
    return "float" if dtype in ("FP32", "FP16", "BF16") else "quantized"
