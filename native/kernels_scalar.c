/*
 * kernels_scalar.c: the portable kernels, the reference every SIMD path is tested against.
 * Weights are dequantized a block at a time and multiplied with float activations.
 */
#include <stdlib.h>

#include "engine.h"

static size_t scalar_prepared_bytes(int type, int64_t n, int T) { return (size_t)n * (size_t)T * sizeof(float); }

static void scalar_prepare(int type, const float * x, int64_t n, int T, void * dst) {
    memcpy(dst, x, (size_t)n * (size_t)T * sizeof(float));
}

/* Tokens per pass over a row: the row's blocks are decoded once per pass. */
#define SCALAR_TILE 8

static void scalar_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T,
                          float * y, int64_t ldy, int64_t r0, int64_t r1) {
    const float * x = (const float *)xp;
    const int64_t step = type_is_quantized(type) ? QK : 64;
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

const kernels kernels_scalar = {
    .name = "scalar",
    .prepared_bytes = scalar_prepared_bytes,
    .prepare = scalar_prepare,
    .matmul = scalar_matmul,
};
