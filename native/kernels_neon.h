/*
 * kernels_neon.h: the AArch64 kernel sets, written once and compiled twice: by kernels_neon.c
 * (the baseline, Advanced SIMD as every AArch64 CPU has it) and by kernels_neon_dotprod.c
 * (the same code with its int8 dot products done by SDOT, FEAT_DotProd: most cores since the
 * Cortex-A55/A75, every Apple silicon chip). The including file defines
 *   NEON_TARGET   its functions' target attribute (empty for the baseline), so the package
 *                 builds with plain armv8-a flags and kernels.c picks a set at run time;
 *   NEON_DOTPROD  1 when the int8 products may use SDOT;
 * and defines its kernel set from the entry points at the end. The K-quant products are in
 * kernels_kq_neon.h, included from here.
 *
 * Prepared activations
 *   FP32 / FP16 / BF16 weights: each of the T rows of x as float32, zero-padded to a multiple
 *   of 16 values, so the activation side of a product never needs a partial load.
 *   rwkv.cpp block types: per token, the int8 codes of every 32-value block (the arithmetic of
 *   kernels_scalar.c: d = max|x| / 127, q = round(x / d), d rounded to half precision), then
 *   d, then s = d * sum(q) in half precision (what the _1 types' minimum multiplies); the
 *   blocks padded with zeros to a multiple of 4.
 *   Weight codes are unpacked to signed bytes with the type's offset (8, 16) already taken
 *   off, so every block type meets the activations in one signed int8 dot product.
 *
 * Products: decode (one token) streams one weight row at a time; sequence mode unpacks a panel
 * of 4 rows x 32 blocks once and runs every token over it, 4 tokens at a time (16 float
 * accumulators of the 32 vector registers). Without SDOT the int8 products are SMULL/SMLAL2
 * pairs (two products of at most 128 x 127 fit a 16-bit lane) widened by SADALP; either way a
 * block's (or a K-quant group's) integer sum is exact before it meets a float, so both sets
 * give the same bits.
 */
#ifndef RWKV_KERNELS_NEON_H
#define RWKV_KERNELS_NEON_H

#include <arm_neon.h>
#include <float.h>

#include "engine.h"

#if !defined(NEON_TARGET) || !defined(NEON_DOTPROD)
#error "define NEON_TARGET and NEON_DOTPROD before including kernels_neon.h"
#endif
#define NEON_INLINE static inline __attribute__((always_inline)) NEON_TARGET

/* ---- the int8 dot products: the one place where the two sets differ ---- */

#if NEON_DOTPROD && !defined(__ARM_FEATURE_DOTPROD) && defined(__clang__)
/* clang's arm_neon.h declares vdotq_s32 only when the whole build has the feature (before
 * clang 17); the instruction itself is accepted inside a function whose target has it */
NEON_INLINE int32x4_t neon_sdot(int32x4_t acc, int8x16_t a, int8x16_t b) {
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}
#elif NEON_DOTPROD
NEON_INLINE int32x4_t neon_sdot(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }
#endif

/* acc + the products of 16 byte pairs, summed in 4 lanes */
NEON_INLINE int32x4_t neon_dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if NEON_DOTPROD
    return neon_sdot(acc, a, b);
#else
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_high_s8(p, a, b);
    return vpadalq_s16(acc, p);
#endif
}

/* the products of 32 byte pairs, summed in 4 lanes */
NEON_INLINE int32x4_t neon_dot32(int8x16_t a0, int8x16_t a1, int8x16_t b0, int8x16_t b1) {
#if NEON_DOTPROD
    return neon_sdot(neon_sdot(vdupq_n_s32(0), a0, b0), a1, b1);
#else
    int16x8_t p0 = vmull_s8(vget_low_s8(a0), vget_low_s8(b0));
    int16x8_t p1 = vmull_s8(vget_low_s8(a1), vget_low_s8(b1));
    p0 = vmlal_high_s8(p0, a0, b0);
    p1 = vmlal_high_s8(p1, a1, b1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
#endif
}

/* ---- small helpers ---- */

NEON_INLINE size_t neon_align64(size_t v) { return (v + 63) & ~(size_t)63; }
NEON_INLINE int64_t neon_round16(int64_t v) { return (v + 15) & ~(int64_t)15; }

NEON_INLINE float neon_half(const uint8_t * p) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(load_u16(p)))), 0);
}

/* ---- activations quantized per 32-value block ---- */

/* 32 floats to int8 codes (round to nearest even, as lrintf) with scale d = max|x| / 127,
 * returned in *d; returns sum(q). A block holding a NaN or an infinity gets zero codes and a
 * NaN scale; one whose scale is below FLT_MIN zero codes (1 / d would overflow): the rules of
 * every other path (see kernels_scalar.c). */
NEON_INLINE int32_t neon_quantize32(const float * x, int8_t * q, float * d, int32_t * sum_lo, int32_t * sum_hi) {
    float32x4_t v[8];
    uint32x4_t m = vdupq_n_u32(0);
    for (int i = 0; i < 8; i++) {
        v[i] = vld1q_f32(x + 4 * i);
        /* |x| compared as integers: every NaN pattern sorts above infinity */
        m = vmaxq_u32(m, vandq_u32(vreinterpretq_u32_f32(v[i]), vdupq_n_u32(0x7fffffffu)));
    }
    const uint32_t amax_bits = vmaxvq_u32(m);
    if (amax_bits >= 0x7f800000u) {
        vst1q_s8(q, vdupq_n_s8(0));
        vst1q_s8(q + 16, vdupq_n_s8(0));
        *d = NAN;
        *sum_lo = *sum_hi = 0;
        return 0;
    }
    float amax;
    memcpy(&amax, &amax_bits, sizeof amax);
    const float scale = amax / 127.0f;
    const float id = scale >= FLT_MIN ? 1.0f / scale : 0.0f;
    int32x4_t c[8];
    for (int i = 0; i < 8; i++) c[i] = vcvtnq_s32_f32(vmulq_n_f32(v[i], id));
    const int32x4_t lo = vaddq_s32(vaddq_s32(c[0], c[1]), vaddq_s32(c[2], c[3]));
    const int32x4_t hi = vaddq_s32(vaddq_s32(c[4], c[5]), vaddq_s32(c[6], c[7]));
    for (int h = 0; h < 2; h++) {
        const int16x8_t a = vcombine_s16(vqmovn_s32(c[4 * h]), vqmovn_s32(c[4 * h + 1]));
        const int16x8_t b = vcombine_s16(vqmovn_s32(c[4 * h + 2]), vqmovn_s32(c[4 * h + 3]));
        vst1q_s8(q + 16 * h, vcombine_s8(vqmovn_s16(a), vqmovn_s16(b)));
    }
    *d = scale;
    *sum_lo = vaddvq_s32(lo);
    *sum_hi = vaddvq_s32(hi);
    return *sum_lo + *sum_hi;
}

typedef struct nq_layout {
    int64_t nb;         /* blocks per row */
    int64_t nb4;        /* blocks per row padded to a multiple of 4 (zero codes, d and s) */
    size_t token_bytes; /* one token's record: codes, d, s */
} nq_layout;

NEON_INLINE nq_layout nq_layout_of(int64_t n) {
    nq_layout L;
    L.nb = (n + QK - 1) / QK;
    L.nb4 = (L.nb + 3) & ~(int64_t)3;
    L.token_bytes = neon_align64((size_t)L.nb4 * (QK + 2 * sizeof(float)));
    return L;
}

NEON_INLINE const int8_t * nq_codes(const void * xp, const nq_layout * L, int t) {
    return (const int8_t *)xp + (size_t)t * L->token_bytes;
}
NEON_INLINE const float * nq_d(const void * xp, const nq_layout * L, int t) {
    return (const float *)(nq_codes(xp, L, t) + L->nb4 * QK);
}
NEON_INLINE const float * nq_s(const void * xp, const nq_layout * L, int t) { return nq_d(xp, L, t) + L->nb4; }

NEON_INLINE float neon_half_round(float f) { return fp16_to_fp32(fp32_to_fp16(f)); }

NEON_INLINE void nq_prepare(const float * x, int64_t n, int T, void * dst) {
    const nq_layout L = nq_layout_of(n);
    for (int t = 0; t < T; t++) {
        int8_t * code = (int8_t *)nq_codes(dst, &L, t);
        float * d = (float *)nq_d(dst, &L, t);
        float * s = (float *)nq_s(dst, &L, t);
        for (int64_t b = 0; b < L.nb; b++) {
            float scale;
            int32_t lo, hi;
            const int32_t sum = neon_quantize32(x + (size_t)t * (size_t)n + (size_t)b * QK, code + b * QK, &scale, &lo, &hi);
            /* rwkv.cpp keeps both in half precision (kernels_scalar.c) */
            d[b] = neon_half_round(scale);
            s[b] = neon_half_round(scale * (float)sum);
        }
        memset(code + L.nb * QK, 0, (size_t)(L.nb4 - L.nb) * QK);
        for (int64_t b = L.nb; b < L.nb4; b++) d[b] = s[b] = 0.0f;
    }
}

/* ---- rwkv.cpp block types ----
 * Each block's integer dot product is summed exactly to one number, four blocks to a vector,
 * which then meets four scales in one multiply-add: so the two sets (SMULL/SADALP or SDOT,
 * which leave different partial sums in the lanes) and the two modes (decode, panels) compute
 * the same bits, on a Cortex-A53 as on an Apple core. */

NEON_INLINE int q_has_min(int type) { return type == TYPE_Q4_1 || type == TYPE_Q5_1; }

/* bit j of the 16 bits at h (little endian) as 0x10 in byte j */
NEON_INLINE uint8x16_t q_fifth_bits(const uint8_t * h) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t spread = vcombine_u8(vdup_n_u8(h[0]), vdup_n_u8(h[1]));
    return vandq_u8(vtstq_u8(spread, vld1q_u8(bit)), vdupq_n_u8(0x10));
}

/* A block's 32 codes in value order as signed bytes, its offset taken off (Q8_0: as stored). */
NEON_INLINE void q_unpack(int type, const uint8_t * a, int8x16_t * lo, int8x16_t * hi) {
    if (type == TYPE_Q8_0) {
        *lo = vld1q_s8((const int8_t *)(a + 2));
        *hi = vld1q_s8((const int8_t *)(a + 18));
        return;
    }
    const size_t qs = type == TYPE_Q4_0 ? 2 : type == TYPE_Q4_1 ? 4 : type == TYPE_Q5_0 ? 6 : 8;
    const uint8x16_t q = vld1q_u8(a + qs);
    uint8x16_t l = vandq_u8(q, vdupq_n_u8(0x0f)), h = vshrq_n_u8(q, 4);
    if (type == TYPE_Q5_0 || type == TYPE_Q5_1) {
        const uint8_t * qh = a + (type == TYPE_Q5_0 ? 2 : 4);
        l = vorrq_u8(l, q_fifth_bits(qh));
        h = vorrq_u8(h, q_fifth_bits(qh + 2));
    }
    const int offset = type == TYPE_Q4_0 ? 8 : type == TYPE_Q5_0 ? 16 : 0;
    *lo = vsubq_s8(vreinterpretq_s8_u8(l), vdupq_n_s8((int8_t)offset));
    *hi = vsubq_s8(vreinterpretq_s8_u8(h), vdupq_n_s8((int8_t)offset));
}

/* the exact sums of four vectors of partial sums, in one vector */
NEON_INLINE int32x4_t neon_sums4(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    return vpaddq_s32(vpaddq_s32(a, b), vpaddq_s32(c, d));
}

/* acc + four blocks (dot products dots, weight scales dw and minimums mw) with the activations'
 * scales dx and sums s: the one float step of both modes */
NEON_INLINE float32x4_t q_step4(int type, float32x4_t acc, int32x4_t dots, float32x4_t dw, float32x4_t mw, const float * dx,
                                const float * s) {
    acc = vfmaq_f32(acc, vcvtq_f32_s32(dots), vmulq_f32(dw, vld1q_f32(dx)));
    if (q_has_min(type)) acc = vfmaq_f32(acc, mw, vld1q_f32(s));
    return acc;
}

/* decode: one row at a time, four blocks at a time */
NEON_INLINE void q_matmul_rows(int type, const uint8_t * w, size_t row_bytes, const nq_layout * L, const void * xp,
                               float * y, int64_t r0, int64_t r1) {
    const size_t bb = q_block_bytes(type);
    const int8_t * xq = nq_codes(xp, L, 0);
    const float * xd = nq_d(xp, L, 0);
    const float * xs = nq_s(xp, L, 0);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * row = w + (size_t)r * row_bytes;
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (int64_t b = 0; b < L->nb; b += 4) {
            int32x4_t dot[4];
            float dw[4] = {0}, mw[4] = {0};
            for (int i = 0; i < 4; i++) {
                if (b + i >= L->nb) { /* the padding: zero codes and scales */
                    dot[i] = vdupq_n_s32(0);
                    continue;
                }
                const uint8_t * a = row + (size_t)(b + i) * bb;
                int8x16_t lo, hi;
                q_unpack(type, a, &lo, &hi);
                dot[i] = neon_dot32(lo, hi, vld1q_s8(xq + (b + i) * QK), vld1q_s8(xq + (b + i) * QK + 16));
                dw[i] = neon_half(a);
                if (q_has_min(type)) mw[i] = neon_half(a + 2);
            }
            acc = q_step4(type, acc, neon_sums4(dot[0], dot[1], dot[2], dot[3]), vld1q_f32(dw), vld1q_f32(mw), xd + b, xs + b);
        }
        y[r] = vaddvq_f32(acc);
    }
}

enum { QP_ROWS = 4, QP_BLOCKS = 32, QP_TOKENS = 4 }; /* QP_BLOCKS: a multiple of 4 */

typedef struct q_panel {
    int8_t code[QP_ROWS][QP_BLOCKS][QK];
    float scale[QP_ROWS][QP_BLOCKS];
    float min[QP_ROWS][QP_BLOCKS];
} q_panel;

/* rows r..r+R-1, blocks b0..b0+nb-1, zero-padded to a multiple of 4 blocks */
NEON_INLINE void q_panel_fill(int type, q_panel * p, const uint8_t * w, size_t row_bytes, int64_t r, int R, int64_t b0,
                              int nb) {
    const size_t bb = q_block_bytes(type);
    const int nb4 = (nb + 3) & ~3;
    for (int i = 0; i < R; i++) {
        const uint8_t * row = w + (size_t)(r + i) * row_bytes + (size_t)b0 * bb;
        for (int b = 0; b < nb4; b++) {
            int8x16_t lo = vdupq_n_s8(0), hi = vdupq_n_s8(0);
            const uint8_t * a = row + (size_t)b * bb;
            if (b < nb) q_unpack(type, a, &lo, &hi);
            vst1q_s8(p->code[i][b], lo);
            vst1q_s8(p->code[i][b] + 16, hi);
            p->scale[i][b] = b < nb ? neon_half(a) : 0.0f;
            p->min[i][b] = b < nb && q_has_min(type) ? neon_half(a + 2) : 0.0f;
        }
    }
}

NEON_INLINE void q_panel_apply(int type, int R, int TT, const q_panel * p, const void * xp, const nq_layout * L, int t,
                               int64_t b0, int nb, int64_t r, int first, float * y, int64_t ldy) {
    float32x4_t acc[QP_ROWS][QP_TOKENS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) acc[i][j] = vdupq_n_f32(0.0f);
    for (int b = 0; b < nb; b += 4) {
        for (int j = 0; j < TT; j++) {
            const int8_t * xq = nq_codes(xp, L, t + j) + (b0 + b) * QK;
            int8x16_t x[8];
            for (int k = 0; k < 8; k++) x[k] = vld1q_s8(xq + 16 * k);
            const float * dx = nq_d(xp, L, t + j) + b0 + b;
            const float * s = nq_s(xp, L, t + j) + b0 + b;
            for (int i = 0; i < R; i++) {
                int32x4_t dot[4];
                for (int k = 0; k < 4; k++)
                    dot[k] = neon_dot32(vld1q_s8(p->code[i][b + k]), vld1q_s8(p->code[i][b + k] + 16), x[2 * k], x[2 * k + 1]);
                acc[i][j] = q_step4(type, acc[i][j], neon_sums4(dot[0], dot[1], dot[2], dot[3]), vld1q_f32(&p->scale[i][b]),
                                    vld1q_f32(&p->min[i][b]), dx, s);
            }
        }
    }
    for (int j = 0; j < TT; j++) {
        for (int i = 0; i < R; i++) {
            float * out = y + (size_t)(t + j) * (size_t)ldy + (size_t)(r + i);
            const float v = vaddvq_f32(acc[i][j]);
            *out = first ? v : *out + v;
        }
    }
}

NEON_INLINE void q_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                          int64_t ldy, int64_t r0, int64_t r1) {
    const nq_layout L = nq_layout_of(n);
    if (T == 1) {
        q_matmul_rows(type, w, row_bytes, &L, xp, y, r0, r1);
        return;
    }
    q_panel panel;
    for (int64_t b0 = 0; b0 < L.nb; b0 += QP_BLOCKS) {
        const int nb = L.nb - b0 < QP_BLOCKS ? (int)(L.nb - b0) : QP_BLOCKS;
        for (int64_t r = r0; r < r1; r += QP_ROWS) {
            const int R = r1 - r < QP_ROWS ? (int)(r1 - r) : QP_ROWS;
            q_panel_fill(type, &panel, w, row_bytes, r, R, b0, nb);
            int t = 0;
            if (R == QP_ROWS) {
                for (; t + QP_TOKENS <= T; t += QP_TOKENS)
                    q_panel_apply(type, QP_ROWS, QP_TOKENS, &panel, xp, &L, t, b0, nb, r, b0 == 0, y, ldy);
                for (; t < T; t++) q_panel_apply(type, QP_ROWS, 1, &panel, xp, &L, t, b0, nb, r, b0 == 0, y, ldy);
            } else {
                for (; t < T; t++) q_panel_apply(type, R, 1, &panel, xp, &L, t, b0, nb, r, b0 == 0, y, ldy);
            }
        }
    }
}

#define NEON_Q_MATMUL(NAME, TYPE)                                                                                    \
    NEON_TARGET static void NAME(const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, \
                                 int64_t ldy, int64_t r0, int64_t r1) {                                            \
        q_matmul(TYPE, w, row_bytes, n, xp, T, y, ldy, r0, r1);                                                    \
    }
NEON_Q_MATMUL(neon_matmul_q4_0, TYPE_Q4_0)
NEON_Q_MATMUL(neon_matmul_q4_1, TYPE_Q4_1)
NEON_Q_MATMUL(neon_matmul_q5_0, TYPE_Q5_0)
NEON_Q_MATMUL(neon_matmul_q5_1, TYPE_Q5_1)
NEON_Q_MATMUL(neon_matmul_q8_0, TYPE_Q8_0)

/* ---- FP32 / FP16 / BF16 weights ---- */

enum { F_ROWS = 4, F_TOKENS = 4, F_COLS_CHUNK = 1024 };

/* 4 weights from column k of a row (left: columns that remain; fewer than 4 read only those) */
NEON_INLINE float32x4_t f_load(int type, const uint8_t * row, int64_t k, int64_t left) {
    if (type == TYPE_FP32) {
        const float * p = (const float *)(row + (size_t)k * 4);
        if (left >= 4) return vreinterpretq_f32_u8(vld1q_u8((const uint8_t *)p));
        float tail[4] = {0};
        memcpy(tail, p, (size_t)left * 4);
        return vld1q_f32(tail);
    }
    const uint8_t * p = row + (size_t)k * 2;
    uint16x4_t h;
    if (left >= 4) {
        h = vreinterpret_u16_u8(vld1_u8(p));
    } else {
        uint16_t tail[4] = {0};
        memcpy(tail, p, (size_t)left * 2);
        h = vld1_u16(tail);
    }
    if (type == TYPE_BF16) return vreinterpretq_f32_u32(vshll_n_u16(h, 16)); /* the upper half of a float32 */
    return vcvt_f32_f16(vreinterpret_f16_u16(h));
}

/* decode: one row, 16 columns a step in four accumulators */
NEON_INLINE float f_dot_row(int type, const uint8_t * row, const float * x, int64_t n) {
    float32x4_t acc[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    int64_t k = 0;
    for (; k + 16 <= n; k += 16)
        for (int u = 0; u < 4; u++) acc[u] = vfmaq_f32(acc[u], f_load(type, row, k + 4 * u, 4), vld1q_f32(x + k + 4 * u));
    for (; k < n; k += 4) acc[0] = vfmaq_f32(acc[0], f_load(type, row, k, n - k), vld1q_f32(x + k)); /* x is zero-padded */
    return vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
}

NEON_INLINE void f_tile(int type, int R, int TT, const uint8_t * w, size_t row_bytes, const float * x, int64_t ns,
                        int64_t r, int t, int64_t k0, int64_t k1, int first, float * y, int64_t ldy) {
    float32x4_t acc[F_ROWS][F_TOKENS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) acc[i][j] = vdupq_n_f32(0.0f);
    for (int64_t k = k0; k < k1; k += 4) {
        float32x4_t wv[F_ROWS];
        for (int i = 0; i < R; i++) wv[i] = f_load(type, w + (size_t)(r + i) * row_bytes, k, k1 - k);
        for (int j = 0; j < TT; j++) {
            const float32x4_t xv = vld1q_f32(x + (size_t)(t + j) * (size_t)ns + k);
            for (int i = 0; i < R; i++) acc[i][j] = vfmaq_f32(acc[i][j], wv[i], xv);
        }
    }
    for (int j = 0; j < TT; j++) {
        for (int i = 0; i < R; i++) {
            float * out = y + (size_t)(t + j) * (size_t)ldy + (size_t)(r + i);
            const float v = vaddvq_f32(acc[i][j]);
            *out = first ? v : *out + v;
        }
    }
}

NEON_INLINE void f_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                          int64_t ldy, int64_t r0, int64_t r1) {
    const float * x = (const float *)xp;
    const int64_t ns = neon_round16(n);
    if (T == 1) {
        for (int64_t r = r0; r < r1; r++) y[r] = f_dot_row(type, w + (size_t)r * row_bytes, x, n);
        return;
    }
    /* a chunk of columns of every token stays in cache while the rows pass over it */
    for (int64_t k0 = 0; k0 < n; k0 += F_COLS_CHUNK) {
        const int64_t k1 = k0 + F_COLS_CHUNK < n ? k0 + F_COLS_CHUNK : n;
        for (int64_t r = r0; r < r1; r += F_ROWS) {
            const int R = r1 - r < F_ROWS ? (int)(r1 - r) : F_ROWS;
            int t = 0;
            if (R == F_ROWS) {
                for (; t + F_TOKENS <= T; t += F_TOKENS) f_tile(type, F_ROWS, F_TOKENS, w, row_bytes, x, ns, r, t, k0, k1, k0 == 0, y, ldy);
                for (; t < T; t++) f_tile(type, F_ROWS, 1, w, row_bytes, x, ns, r, t, k0, k1, k0 == 0, y, ldy);
            } else {
                for (; t < T; t++) f_tile(type, R, 1, w, row_bytes, x, ns, r, t, k0, k1, k0 == 0, y, ldy);
            }
        }
    }
}

#define NEON_F_MATMUL(NAME, TYPE)                                                                                    \
    NEON_TARGET static void NAME(const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, \
                                 int64_t ldy, int64_t r0, int64_t r1) {                                            \
        f_matmul(TYPE, w, row_bytes, n, xp, T, y, ldy, r0, r1);                                                    \
    }
NEON_F_MATMUL(neon_matmul_fp32, TYPE_FP32)
NEON_F_MATMUL(neon_matmul_fp16, TYPE_FP16)
NEON_F_MATMUL(neon_matmul_bf16, TYPE_BF16)

NEON_INLINE void f_prepare(const float * x, int64_t n, int T, void * dst) {
    const int64_t ns = neon_round16(n);
    float * out = (float *)dst;
    for (int t = 0; t < T; t++) {
        memcpy(out + (size_t)t * (size_t)ns, x + (size_t)t * (size_t)n, (size_t)n * sizeof(float));
        for (int64_t c = n; c < ns; c++) out[(size_t)t * (size_t)ns + (size_t)c] = 0.0f;
    }
}

/* ---- e^x and the sigmoid: the algorithm of kernels_x86.h (Cody-Waite reduction, a degree-6
 * polynomial, 2^n applied in two normal halves so that overflow is infinity and underflow is
 * subnormal then 0), with the same constants; FMA and round-to-nearest-even behave alike on
 * both, so the results are the AVX2 path's bits. Bounds (engine.h): exp within 2 ulp of expf,
 * sigmoid within 3 ulp, NaN in gives NaN out. ---- */

NEON_INLINE float32x4_t neon_exp4(float32x4_t x) {
    const uint32x4_t is_number = vceqq_f32(x, x);
    const float32x4_t xc = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-104.0f)), vdupq_n_f32(89.0f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(xc, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(xc, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), vmulq_f32(p, r), r);
    /* n in [-150, 128]: both halves in [-75, 64], normal exponents */
    const int32x4_t ni = vcvtq_s32_f32(n);
    const int32x4_t n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, vdupq_n_s32(127)), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, vdupq_n_s32(127)), 23));
    const float32x4_t e = vmulq_f32(vmulq_f32(p, s1), s2);
    return vbslq_f32(is_number, e, vaddq_f32(x, x)); /* x + x: a quiet NaN */
}

/* 1 / (1 + e^-x) as e / (1 + e) for x < 0, e = e^-|x| <= 1 never overflowing (see kernels_x86.h) */
NEON_INLINE float32x4_t neon_sigmoid4(float32x4_t x) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    const float32x4_t e = neon_exp4(vnegq_f32(vabsq_f32(x)));
    return vdivq_f32(vbslq_f32(vcgeq_f32(x, vdupq_n_f32(0.0f)), one, e), vaddq_f32(one, e));
}

#define NEON_ARRAY_FUNCTION(NAME, F)                                                   \
    NEON_TARGET static void NAME(float * y, const float * x, int64_t n) {              \
        int64_t i = 0;                                                                 \
        for (; i + 4 <= n; i += 4) vst1q_f32(y + i, F(vld1q_f32(x + i)));              \
        if (i < n) {                                                                   \
            float in[4] = {0}, out[4];                                                 \
            memcpy(in, x + i, (size_t)(n - i) * sizeof(float));                        \
            vst1q_f32(out, F(vld1q_f32(in)));                                          \
            memcpy(y + i, out, (size_t)(n - i) * sizeof(float));                       \
        }                                                                              \
    }
NEON_ARRAY_FUNCTION(neon_exp_array, neon_exp4)
NEON_ARRAY_FUNCTION(neon_sigmoid_array, neon_sigmoid4)

#include "kernels_kq_neon.h"

/* ---- the kernel set's entry points ---- */

NEON_TARGET static size_t neon_prepared_bytes(int type, int64_t n, int T) {
    if (type_is_kquant(type)) return kq_prepared_bytes(n, T);
    if (type_is_quantized(type)) return (size_t)T * nq_layout_of(n).token_bytes + 64;
    return (size_t)T * (size_t)neon_round16(n) * sizeof(float) + 64;
}

NEON_TARGET static void neon_prepare(int type, const float * x, int64_t n, int T, void * dst) {
    if (type_is_kquant(type)) {
        kqn_prepare(type, x, n, T, dst);
    } else if (type_is_quantized(type)) {
        nq_prepare(x, n, T, dst);
    } else {
        f_prepare(x, n, T, dst);
    }
}

NEON_TARGET static void neon_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T,
                                    float * y, int64_t ldy, int64_t r0, int64_t r1) {
    switch (type) {
    case TYPE_FP32: neon_matmul_fp32(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_FP16: neon_matmul_fp16(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_BF16: neon_matmul_bf16(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q4_0: neon_matmul_q4_0(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q4_1: neon_matmul_q4_1(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q5_0: neon_matmul_q5_0(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q5_1: neon_matmul_q5_1(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q8_0: neon_matmul_q8_0(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q2_K: neon_matmul_q2_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q3_K: neon_matmul_q3_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q4_K: neon_matmul_q4_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q5_K: neon_matmul_q5_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q6_K: neon_matmul_q6_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    default: break; /* every valid type is listed */
    }
}

#endif /* RWKV_KERNELS_NEON_H */
