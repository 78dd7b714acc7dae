/*
 * kernels_neon_dotprod.c: the AArch64 kernel set with SDOT (FEAT_DotProd: Cortex-A55/A75 and
 * later, Neoverse, every Apple silicon chip): the code of kernels_neon.h with each int8 dot
 * product of 16 byte pairs one instruction. Every function carries the target attribute, so
 * the build stays armv8-a and kernels.c selects this set only when the CPU reports the
 * feature. Compiles to nothing on other architectures.
 */
#if defined(__aarch64__)

#if defined(__ARM_FEATURE_DOTPROD)
#define NEON_TARGET /* the whole build has it already (Apple arm64, or -march=...+dotprod) */
#elif defined(__clang__)
#define NEON_TARGET __attribute__((target("dotprod")))
#else
#define NEON_TARGET __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#define NEON_DOTPROD 1
#include "kernels_neon.h"

const kernels kernels_neon_dotprod = {
    .exp = neon_exp_array,
    .sigmoid = neon_sigmoid_array,
    .name = "neon_dotprod",
    .prepared_bytes = neon_prepared_bytes,
    .prepare = neon_prepare,
    .matmul = neon_matmul,
};

#endif /* __aarch64__ */
