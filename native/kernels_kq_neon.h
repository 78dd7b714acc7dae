/*
 * kernels_kq_neon.h: the K-quant products of the AArch64 kernel sets, included by
 * kernels_neon.h (so compiled once per set, with that set's int8 dot product).
 *
 * Activations use the layout every path shares (kquants.h), with the same numbers as
 * kq_prepare_scalar. A weight super-block is unpacked once per row and chunk into 256 signed
 * codes (the offsets of Q6_K and Q3_K already taken off, so the bias arrays are not needed:
 * the integer sums are the same) and 16 group scales and corrections; every token then takes
 * 16 dot products of 16 values, added pairwise into one vector of 4 group sums per 64 values:
 *   sum_g scale[g] dx[g] dot_g  (- corr[g] xs[g] for Q2_K, Q4_K, Q5_K).
 */
#ifndef RWKV_KERNELS_KQ_NEON_H
#define RWKV_KERNELS_KQ_NEON_H

#include "kquants.h"

#ifndef RWKV_KERNELS_NEON_H
#error "included by kernels_neon.h"
#endif

NEON_INLINE void kqn_prepare(int type, const float * x, int64_t n, int T, void * dst) {
    const int64_t np = kq_padded(n);
    const int offset = kq_offset(type);
    for (int t = 0; t < T; t++) {
        const kq_token k = kq_token_at(dst, n, t);
        int8_t * code = (int8_t *)k.code;
        float * dx = (float *)k.dx;
        float * xs = (float *)k.xs;
        int32_t * bias16 = (int32_t *)k.bias16;
        int32_t * bias4 = (int32_t *)k.bias4;
        float * dxs32 = (float *)k.dxs32;
        const float * xt = x + (size_t)t * (size_t)n;
        for (int64_t b = 0; b < np / 32; b++) {
            const float * src = xt + b * 32;
            float tail[32];
            if (b * 32 + 32 > n) {
                memset(tail, 0, sizeof tail);
                if (n > b * 32) memcpy(tail, src, (size_t)(n - b * 32) * sizeof(float));
                src = tail;
            }
            int8_t * q = code + b * 32;
            float d;
            int32_t sum[2];
            const int32_t sum32 = neon_quantize32(src, q, &d, &sum[0], &sum[1]);
            for (int h = 0; h < 2; h++) {
                dx[2 * b + h] = d;
                xs[2 * b + h] = d * (float)sum[h];
                if (offset) bias16[2 * b + h] = -offset * sum[h];
            }
            dxs32[(b / 8) * 16 + b % 8] = d;
            dxs32[(b / 8) * 16 + 8 + b % 8] = d * (float)sum32;
            if (offset) {
                /* sums of 4 consecutive codes: pairs, then pairs of pairs */
                for (int h = 0; h < 2; h++) {
                    const int32x4_t s4 = vpaddlq_s16(vpaddlq_s8(vld1q_s8(q + 16 * h)));
                    vst1q_s32(bias4 + 8 * b + 4 * h, vmulq_n_s32(s4, -offset));
                }
            }
        }
    }
}

/* One super-block in the form the products want. */
typedef struct kqn_block {
    int8_t code[QKK];
    float scale[16];
    float corr[16];
} kqn_block;

NEON_INLINE uint8x16_t kqn_bit(uint8x16_t v, int bit, uint8_t as) {
    return vandq_u8(vtstq_u8(v, vdupq_n_u8((uint8_t)(1u << bit))), vdupq_n_u8(as));
}

NEON_INLINE uint8x16_t kqn_shr(uint8x16_t v, int bits) { return vshlq_u8(v, vdupq_n_s8((int8_t)-bits)); }

NEON_INLINE void kqn_unpack_codes(int type, const uint8_t * b, int8_t * out) {
    const uint8x16_t low4 = vdupq_n_u8(0x0f), low2 = vdupq_n_u8(3);
    int offset = 0;
    uint8_t * o = (uint8_t *)out;
    switch (type) {
    case TYPE_Q4_K:
    case TYPE_Q5_K: {
        const int five = type == TYPE_Q5_K;
        const uint8_t * qs = b + (five ? 48 : 16);
        const uint8x16_t qh[2] = {vld1q_u8(b + 16), vld1q_u8(b + 32)};
        for (int k = 0; k < 4; k++) {
            for (int half = 0; half < 2; half++) {
                const uint8x16_t q = vld1q_u8(qs + 32 * k + 16 * half);
                uint8x16_t lo = vandq_u8(q, low4), hi = vshrq_n_u8(q, 4);
                if (five) {
                    lo = vorrq_u8(lo, kqn_bit(qh[half], 2 * k, 0x10));
                    hi = vorrq_u8(hi, kqn_bit(qh[half], 2 * k + 1, 0x10));
                }
                vst1q_u8(o + 64 * k + 16 * half, lo);
                vst1q_u8(o + 64 * k + 32 + 16 * half, hi);
            }
        }
        break;
    }
    case TYPE_Q6_K:
        offset = 32;
        for (int h = 0; h < 2; h++) {
            const uint8_t * L = b + 64 * h;
            const uint8_t * H = b + 128 + 32 * h;
            for (int half = 0; half < 2; half++) {
                const uint8x16_t l0 = vld1q_u8(L + 16 * half), l1 = vld1q_u8(L + 32 + 16 * half);
                const uint8x16_t hb = vld1q_u8(H + 16 * half), top = vdupq_n_u8(0x30);
                uint8_t * dst = o + 128 * h + 16 * half;
                vst1q_u8(dst, vorrq_u8(vandq_u8(l0, low4), vandq_u8(vshlq_n_u8(hb, 4), top)));
                vst1q_u8(dst + 32, vorrq_u8(vandq_u8(l1, low4), vandq_u8(vshlq_n_u8(hb, 2), top)));
                vst1q_u8(dst + 64, vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(hb, top)));
                vst1q_u8(dst + 96, vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(hb, 2), top)));
            }
        }
        break;
    case TYPE_Q2_K:
    case TYPE_Q3_K: {
        const int three = type == TYPE_Q3_K;
        const uint8_t * qs = b + (three ? 32 : 16);
        const uint8x16_t hmask[2] = {vld1q_u8(b), vld1q_u8(b + 16)};
        offset = three ? 4 : 0;
        for (int h = 0; h < 2; h++) {
            for (int half = 0; half < 2; half++) {
                const uint8x16_t q = vld1q_u8(qs + 32 * h + 16 * half);
                for (int s = 0; s < 4; s++) {
                    uint8x16_t c = vandq_u8(kqn_shr(q, 2 * s), low2);
                    if (three) c = vorrq_u8(c, kqn_bit(hmask[half], 4 * h + s, 4));
                    vst1q_u8(o + 128 * h + 32 * s + 16 * half, c);
                }
            }
        }
        break;
    }
    default:
        memset(out, 0, QKK);
    }
    if (offset) {
        for (int i = 0; i < QKK; i += 16) vst1q_s8(out + i, vsubq_s8(vld1q_s8(out + i), vdupq_n_s8((int8_t)offset)));
    }
}

/* the 16 group scales and corrections (value = scale * code - corr, with the codes as stored) */
NEON_INLINE void kqn_unpack_scales(int type, const uint8_t * b, float * scale, float * corr) {
    switch (type) {
    case TYPE_Q4_K:
    case TYPE_Q5_K: {
        const float d = neon_half(b), dmin = neon_half(b + 2);
        const uint8_t * s = b + 4;
        for (int j = 0; j < 8; j++) {
            const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
            const int mn = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
            scale[2 * j] = scale[2 * j + 1] = d * (float)sc;
            corr[2 * j] = corr[2 * j + 1] = dmin * (float)mn;
        }
        break;
    }
    case TYPE_Q6_K: {
        const float d = neon_half(b + 208);
        for (int g = 0; g < 16; g++) {
            scale[g] = d * (float)(int8_t)b[192 + g];
            corr[g] = 0.0f; /* the offset is taken off the codes */
        }
        break;
    }
    case TYPE_Q2_K: {
        const float d = neon_half(b + 80), dmin = neon_half(b + 82);
        for (int g = 0; g < 16; g++) {
            scale[g] = d * (float)(b[g] & 15);
            corr[g] = dmin * (float)(b[g] >> 4);
        }
        break;
    }
    case TYPE_Q3_K: {
        const float d = neon_half(b + 108);
        const uint8_t * s = b + 96;
        for (int g = 0; g < 16; g++) {
            const int low = g < 8 ? s[g] & 15 : s[g - 8] >> 4;
            const int high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
            scale[g] = d * (float)((low | high << 4) - 32);
            corr[g] = 0.0f;
        }
        break;
    }
    default:
        memset(scale, 0, 16 * sizeof(float));
        memset(corr, 0, 16 * sizeof(float));
    }
}

NEON_INLINE int kqn_has_min(int type) { return type == TYPE_Q2_K || type == TYPE_Q4_K || type == TYPE_Q5_K; }

/* acc + one super-block's product with one token's activations (super-block s of the row) */
NEON_INLINE float32x4_t kqn_block_dot(int type, const kqn_block * u, const kq_token * x, int64_t s, float32x4_t acc) {
    const int8_t * xq = x->code + s * QKK;
    const float * dx = x->dx + s * 16;
    const float * xs = x->xs + s * 16;
    for (int g = 0; g < 16; g += 4) {
        const int32x4_t zero = vdupq_n_s32(0);
        int32x4_t d[4];
        for (int i = 0; i < 4; i++) d[i] = neon_dot16(zero, vld1q_s8(u->code + 16 * (g + i)), vld1q_s8(xq + 16 * (g + i)));
        const int32x4_t dots = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3])); /* groups g..g+3 */
        acc = vfmaq_f32(acc, vmulq_f32(vld1q_f32(u->scale + g), vld1q_f32(dx + g)), vcvtq_f32_s32(dots));
        if (kqn_has_min(type)) acc = vfmsq_f32(acc, vld1q_f32(u->corr + g), vld1q_f32(xs + g));
    }
    return acc;
}

enum { KQN_CHUNK = 8, KQN_TOKENS = 8 };

NEON_INLINE void kqn_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                            int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nsb = n / QKK;
    const size_t bb = type_block_bytes(type);
    kqn_block u[KQN_CHUNK];
    /* a chunk of super-blocks of every token stays in cache while the rows pass over it */
    for (int64_t s0 = 0; s0 < nsb; s0 += KQN_CHUNK) {
        const int ns = nsb - s0 < KQN_CHUNK ? (int)(nsb - s0) : KQN_CHUNK;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t * row = w + (size_t)r * row_bytes;
            for (int s = 0; s < ns; s++) {
                kqn_unpack_codes(type, row + (size_t)(s0 + s) * bb, u[s].code);
                kqn_unpack_scales(type, row + (size_t)(s0 + s) * bb, u[s].scale, u[s].corr);
            }
            for (int t0 = 0; t0 < T; t0 += KQN_TOKENS) {
                const int tn = T - t0 < KQN_TOKENS ? T - t0 : KQN_TOKENS;
                float32x4_t acc[KQN_TOKENS];
                kq_token x[KQN_TOKENS];
                for (int j = 0; j < tn; j++) {
                    acc[j] = vdupq_n_f32(0.0f);
                    x[j] = kq_token_at(xp, n, t0 + j);
                }
                for (int s = 0; s < ns; s++)
                    for (int j = 0; j < tn; j++) acc[j] = kqn_block_dot(type, &u[s], &x[j], s0 + s, acc[j]);
                for (int j = 0; j < tn; j++) {
                    float * out = y + (size_t)(t0 + j) * (size_t)ldy + (size_t)r;
                    const float v = vaddvq_f32(acc[j]);
                    *out = s0 == 0 ? v : *out + v;
                }
            }
        }
    }
}

#define NEON_KQ_MATMUL(NAME, TYPE)                                                                                   \
    NEON_TARGET static void NAME(const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, \
                                 int64_t ldy, int64_t r0, int64_t r1) {                                            \
        kqn_matmul(TYPE, w, row_bytes, n, xp, T, y, ldy, r0, r1);                                                  \
    }
NEON_KQ_MATMUL(neon_matmul_q2_k, TYPE_Q2_K)
NEON_KQ_MATMUL(neon_matmul_q3_k, TYPE_Q3_K)
NEON_KQ_MATMUL(neon_matmul_q4_k, TYPE_Q4_K)
NEON_KQ_MATMUL(neon_matmul_q5_k, TYPE_Q5_K)
NEON_KQ_MATMUL(neon_matmul_q6_k, TYPE_Q6_K)

#endif /* RWKV_KERNELS_KQ_NEON_H */
