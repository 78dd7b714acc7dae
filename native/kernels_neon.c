/*
 * kernels_neon.c: the AArch64 baseline kernel set (Advanced SIMD, which every AArch64 CPU
 * has: the Cortex-A53 of a Raspberry Pi 3 as much as a server core). The code is in
 * kernels_neon.h, shared with kernels_neon_dotprod.c; here its int8 dot products are
 * SMULL/SMLAL2 pairs widened by SADALP. Compiles to nothing on other architectures.
 */
#if defined(__aarch64__)

#define NEON_TARGET
#define NEON_DOTPROD 0
#include "kernels_neon.h"

const kernels kernels_neon = {
    .exp = neon_exp_array,
    .sigmoid = neon_sigmoid_array,
    .name = "neon",
    .prepared_bytes = neon_prepared_bytes,
    .prepare = neon_prepare,
    .matmul = neon_matmul,
};

#endif /* __aarch64__ */
