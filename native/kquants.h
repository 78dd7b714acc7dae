/*
 * kquants.h: the K-quant block types of GGUF files (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): their
 * dequantization (kquants.c) and the product kernels of each kernel path (kernels_kq_*.c),
 * which the kernel sets of kernels_scalar.c, kernels_avx2.c and kernels_avx512.c call for
 * these types.
 */
#ifndef RWKV_KQUANTS_H
#define RWKV_KQUANTS_H

#include "engine.h"

/* One super-block of 256 values in a form every K-quant shares: unsigned codes and, per
 * 16-value group g, a scale and a correction, so that value i = scale[i / 16] * code[i] -
 * corr[i / 16]. (Offsets of signed codes and the per-group minimums both land in corr.) */
typedef struct kq_unpacked {
    uint8_t code[QKK];
    float scale[16];
    float corr[16];
} kq_unpacked;

void kquant_unpack(int type, const uint8_t * block, kq_unpacked * out);
void kquant_dequantize_row(int type, const uint8_t * src, float * dst, int64_t n);

/* ---- prepared activations for K-quant weights (every kernel path uses this layout) ----
 * Per token, for n values (n a multiple of 256; the tail of a shorter request is zero):
 *   code[n]      int8, x quantized per 32-value block: dx = max|x| / 127, code = round(x / dx)
 *   dx[n/16]     float, the block's dx repeated for each of its two 16-value groups
 *   xs[n/16]     float, dx times the sum of the group's codes (what a minimum multiplies)
 *   bias16[n/16] int32, -offset times the sum of the group's codes
 *   bias4[n/4]   int32, -offset times the sum of each 4 codes
 *   dxs32[n/16]  float, per super-block the 8 blocks' dx, then their 8 sums dx * sum(codes):
 *                what the types with 32-value sub-blocks (Q4_K, Q5_K) use
 * where offset is what the weight codes of the type carry (32 for Q6_K, 4 for Q3_K, 0 for the
 * others; the bias arrays are only written for those two). The dot product of a super-block
 * with x is then, with the integer sums exact,
 *   Q6_K, Q3_K        sum_g scale[g] dx[g] (sum_{i in g} code_w[i] code_x[i] + bias16[g])
 *   Q4_K, Q5_K, Q2_K  sum_g scale[g] dx[g] (sum_{i in g} code_w[i] code_x[i]) - corr[g] xs[g].
 * Each token's record is 64-byte aligned (n * 3 bytes). */
static inline int64_t kq_padded(int64_t n) { return (n + QKK - 1) / QKK * QKK; }
static inline size_t kq_token_bytes(int64_t n) { return (size_t)kq_padded(n) * 3; }
static inline int kq_offset(int type) { return type == TYPE_Q6_K ? 32 : type == TYPE_Q3_K ? 4 : 0; }

typedef struct kq_token {
    const int8_t * code;
    const float *dx, *xs;
    const int32_t *bias16, *bias4;
    const float * dxs32;
} kq_token;

static inline kq_token kq_token_at(const void * xp, int64_t n, int t) {
    const int64_t np = kq_padded(n);
    const int8_t * code = (const int8_t *)xp + (size_t)t * kq_token_bytes(n);
    const float * dx = (const float *)(code + np);
    const int32_t * bias16 = (const int32_t *)(dx + np / 8);
    const int32_t * bias4 = bias16 + np / 16;
    kq_token x = {code, dx, dx + np / 16, bias16, bias4, (const float *)(bias4 + np / 4)};
    return x;
}

size_t kq_prepared_bytes(int64_t n, int T);
/* The portable preparation; the SIMD paths compute the same numbers. */
void kq_prepare_scalar(int type, const float * x, int64_t n, int T, void * dst);

/* matmul for K-quant weights: y[t * ldy + r] = dot(row r, x_t), r in [r0, r1) */
typedef void (*kq_matmul_fn)(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T,
                             float * y, int64_t ldy, int64_t r0, int64_t r1);
void kq_matmul_scalar(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                      int64_t ldy, int64_t r0, int64_t r1);
void kq_prepare_avx2(int type, const float * x, int64_t n, int T, void * dst);
void kq_matmul_avx2(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                    int64_t ldy, int64_t r0, int64_t r1);
void kq_matmul_avx512(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                      int64_t ldy, int64_t r0, int64_t r1);

#endif /* RWKV_KQUANTS_H */
