/*
 * kernels_kq_scalar.c: the portable K-quant products (the reference the SIMD paths are tested
 * against) and the preparation of activations in the layout every path shares (kquants.h).
 *
 * Activations are quantized to int8 per 32-value block (dx = max|x| / 127, code = round(x /
 * dx), dx kept in float32: llama.cpp's K-quant products use one scale per 256 values, finer
 * blocks only lose less). A block holding a NaN or an infinity gets zero codes and a NaN
 * scale, so the products it enters are NaN; a block whose scale is below FLT_MIN gets zero
 * codes (1 / dx would overflow). Converting either to int would be undefined behaviour.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "kquants.h"

size_t kq_prepared_bytes(int64_t n, int T) { return (size_t)T * kq_token_bytes(n) + 64; }

void kq_prepare_scalar(int type, const float * x, int64_t n, int T, void * dst) {
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
            int8_t * q = code + b * 32;
            const int64_t len = n - b * 32 < 32 ? (n - b * 32 > 0 ? n - b * 32 : 0) : 32;
            float amax = 0.0f;
            bool finite = true;
            for (int64_t j = 0; j < len; j++) {
                const float a = fabsf(xt[b * 32 + j]);
                finite = finite && a <= FLT_MAX;
                amax = fmaxf(amax, a);
            }
            memset(q, 0, 32);
            float d = NAN;
            if (finite) {
                d = amax / 127.0f;
                const float id = d >= FLT_MIN ? 1.0f / d : 0.0f;
                for (int64_t j = 0; j < len; j++) q[j] = (int8_t)lrintf(xt[b * 32 + j] * id);
            }
            int32_t sum32 = 0;
            for (int h = 0; h < 2; h++) {
                int32_t sum = 0;
                for (int j = 0; j < 16; j++) sum += q[16 * h + j];
                dx[2 * b + h] = d;
                xs[2 * b + h] = d * (float)sum;
                if (offset) bias16[2 * b + h] = -offset * sum;
                sum32 += sum;
            }
            dxs32[(b / 8) * 16 + b % 8] = d;
            dxs32[(b / 8) * 16 + 8 + b % 8] = d * (float)sum32;
            if (offset) {
                for (int j = 0; j < 8; j++) bias4[8 * b + j] = -offset * (q[4 * j] + q[4 * j + 1] + q[4 * j + 2] + q[4 * j + 3]);
            }
        }
    }
}

/* Tokens per pass over a row: the row's super-blocks are unpacked once per pass. */
#define TILE 8

void kq_matmul_scalar(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                      int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nsb = n / QKK;
    const size_t bb = type_block_bytes(type);
    const int offset = kq_offset(type);
    kq_unpacked u;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * row = w + (size_t)r * row_bytes;
        for (int t0 = 0; t0 < T; t0 += TILE) {
            const int tn = T - t0 < TILE ? T - t0 : TILE;
            float acc[TILE] = {0};
            for (int64_t s = 0; s < nsb; s++) {
                kquant_unpack(type, row + (size_t)s * bb, &u);
                for (int t = 0; t < tn; t++) {
                    const kq_token x = kq_token_at(xp, n, t0 + t);
                    const int8_t * xq = x.code + s * QKK;
                    float sum = 0.0f;
                    for (int g = 0; g < 16; g++) {
                        int32_t dot = 0;
                        for (int j = 16 * g; j < 16 * g + 16; j++) dot += (int32_t)u.code[j] * xq[j];
                        const int64_t gi = s * 16 + g;
                        if (offset) {
                            sum += u.scale[g] * x.dx[gi] * (float)(dot + x.bias16[gi]);
                        } else {
                            sum += u.scale[g] * x.dx[gi] * (float)dot - u.corr[g] * x.xs[gi];
                        }
                    }
                    acc[t] += sum;
                }
            }
            for (int t = 0; t < tn; t++) y[(size_t)(t0 + t) * (size_t)ldy + (size_t)r] = acc[t];
        }
    }
}
