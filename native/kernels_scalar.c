/*
 * kernels_scalar.c: the portable kernels, the reference every SIMD path is tested against.
 *
 * Float weights (FP32, FP16) multiply float activations. Quantized weights multiply int8
 * activations, quantized per 32-value block the way rwkv.cpp does it (d = max|x| / 127,
 * q = round(x / d), d then rounded to half precision; for the _1 types also
 * s = d * sum(q) in half precision): the integer dot product of a block's codes with q is
 * exact, so every path computes the same numbers up to the order of the float sums, and the
 * results land where rwkv.cpp's do (its published fixture limits assume this arithmetic).
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "engine.h"
#include "kquants.h"

/* Prepared int8 activations of one token: per block the codes, d, sum(q) and s. */
typedef struct q8_block {
    int8_t q[QK];
    float d;
    int32_t sum;
    float s;
} q8_block;

static size_t scalar_prepared_bytes(int type, int64_t n, int T) {
    if (type_is_kquant(type)) return kq_prepared_bytes(n, T);
    if (!type_is_quantized(type)) return (size_t)n * (size_t)T * sizeof(float);
    return (size_t)((n + QK - 1) / QK) * (size_t)T * sizeof(q8_block);
}

static float half_round(float f) { return fp16_to_fp32(fp32_to_fp16(f)); }

static void scalar_prepare(int type, const float * x, int64_t n, int T, void * dst) {
    if (type_is_kquant(type)) {
        kq_prepare_scalar(type, x, n, T, dst);
        return;
    }
    if (!type_is_quantized(type)) {
        memcpy(dst, x, (size_t)n * (size_t)T * sizeof(float));
        return;
    }
    q8_block * out = (q8_block *)dst;
    const int64_t nb = n / QK;
    for (int64_t i = 0; i < nb * T; i++) {
        const float * v = x + i * QK;
        /* NaN and infinity (absurd weights upstream) and scales below FLT_MIN leave rwkv.cpp's
         * arithmetic as the SIMD paths do (see x86_quantize_block): converting NaN, or a value
         * times an infinite 1 / d, to an integer is undefined behaviour */
        float amax = 0.0f;
        bool finite = true;
        for (int j = 0; j < QK; j++) {
            const float a = fabsf(v[j]);
            finite = finite && a <= FLT_MAX;
            amax = fmaxf(amax, a);
        }
        if (!finite) {
            memset(out[i].q, 0, QK);
            out[i].d = out[i].s = NAN;
            out[i].sum = 0;
            continue;
        }
        const float d = amax / 127.0f;
        const float id = d >= FLT_MIN ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < QK; j++) {
            out[i].q[j] = (int8_t)lrintf(v[j] * id);
            sum += out[i].q[j];
        }
        out[i].d = half_round(d);
        out[i].sum = sum;
        out[i].s = half_round(d * (float)sum);
    }
}

/* The codes of a block as stored (unsigned 0..15 / 0..31, or signed for Q8_0), the scale,
 * the minimum (_1 types) and the offset the codes carry (value = (code - offset) d + m). */
static void unpack_block(int type, const uint8_t * b, int32_t * codes, float * d, float * m, int32_t * offset) {
    *d = fp16_to_fp32(load_u16(b));
    *m = 0.0f;
    *offset = 0;
    if (type == TYPE_Q8_0) {
        for (int j = 0; j < QK; j++) codes[j] = (int8_t)b[2 + j];
        return;
    }
    const int has_min = type == TYPE_Q4_1 || type == TYPE_Q5_1;
    const int five = type == TYPE_Q5_0 || type == TYPE_Q5_1;
    if (has_min) *m = fp16_to_fp32(load_u16(b + 2));
    const uint8_t * qs = b + 2 + (has_min ? 2 : 0) + (five ? 4 : 0);
    const uint32_t qh = five ? load_u32(b + 2 + (has_min ? 2 : 0)) : 0;
    for (int j = 0; j < 16; j++) {
        codes[j] = (qs[j] & 0x0f) | (int32_t)(((qh >> j) & 1) << 4);
        codes[j + 16] = (qs[j] >> 4) | (int32_t)(((qh >> (j + 16)) & 1) << 4);
    }
    if (!has_min) *offset = five ? 16 : 8;
}

/* Tokens per pass over a row: the row's blocks are decoded once per pass. */
#define SCALAR_TILE 8

static void quantized_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const q8_block * x, int T,
                             float * y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = n / QK;
    const size_t bb = type_block_bytes(type);
    int32_t codes[QK];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * row = w + (size_t)r * row_bytes;
        for (int t0 = 0; t0 < T; t0 += SCALAR_TILE) {
            const int tn = T - t0 < SCALAR_TILE ? T - t0 : SCALAR_TILE;
            float acc[SCALAR_TILE] = {0};
            for (int64_t b = 0; b < nb; b++) {
                float d, m;
                int32_t offset;
                unpack_block(type, row + (size_t)b * bb, codes, &d, &m, &offset);
                for (int t = 0; t < tn; t++) {
                    const q8_block * xb = &x[(size_t)(t0 + t) * (size_t)nb + (size_t)b];
                    int32_t dot = 0;
                    for (int j = 0; j < QK; j++) dot += codes[j] * xb->q[j];
                    acc[t] += d * xb->d * (float)(dot - offset * xb->sum) + m * xb->s;
                }
            }
            for (int t = 0; t < tn; t++) y[(size_t)(t0 + t) * (size_t)ldy + (size_t)r] = acc[t];
        }
    }
}

static void float_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const float * x, int T, float * y,
                         int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t step = 64;
    const size_t step_bytes = type_row_bytes(type, step);
    float values[64];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * row = w + (size_t)r * row_bytes;
        for (int t0 = 0; t0 < T; t0 += SCALAR_TILE) {
            const int tn = T - t0 < SCALAR_TILE ? T - t0 : SCALAR_TILE;
            float acc[SCALAR_TILE] = {0};
            for (int64_t c = 0; c < n; c += step) {
                const int64_t len = n - c < step ? n - c : step;
                dequantize_row(type, row + (size_t)(c / step) * step_bytes, values, len);
                for (int t = 0; t < tn; t++) {
                    const float * xt = x + (size_t)(t0 + t) * (size_t)n + c;
                    float s = 0.0f;
                    for (int64_t j = 0; j < len; j++) s += values[j] * xt[j];
                    acc[t] += s;
                }
            }
            for (int t = 0; t < tn; t++) y[(size_t)(t0 + t) * (size_t)ldy + (size_t)r] = acc[t];
        }
    }
}

static void scalar_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                          int64_t ldy, int64_t r0, int64_t r1) {
    if (type_is_kquant(type)) {
        kq_matmul_scalar(type, w, row_bytes, n, xp, T, y, ldy, r0, r1);
    } else if (type_is_quantized(type)) {
        quantized_matmul(type, w, row_bytes, n, (const q8_block *)xp, T, y, ldy, r0, r1);
    } else {
        float_matmul(type, w, row_bytes, n, (const float *)xp, T, y, ldy, r0, r1);
    }
}

static void scalar_exp(float * y, const float * x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = expf(x[i]);
}

static void scalar_sigmoid(float * y, const float * x, int64_t n) {
    /* e = e^-|x| never overflows: for x below -88.7, 1 + e^-x would be infinite (see x86_sigmoid8) */
    for (int64_t i = 0; i < n; i++) {
        const float e = expf(-fabsf(x[i]));
        y[i] = (x[i] >= 0.0f ? 1.0f : e) / (1.0f + e);
    }
}

const kernels kernels_scalar = {
    .exp = scalar_exp,
    .sigmoid = scalar_sigmoid,
    .name = "scalar",
    .prepared_bytes = scalar_prepared_bytes,
    .prepare = scalar_prepare,
    .matmul = scalar_matmul,
};
