/*
 * tensor.c: the tensor types: half floats (IEEE binary16 and bfloat16), the quantized block
 * layouts of rwkv.cpp files and their reference quantizer (bit-compatible with rwkv.cpp's, see
 * QUANT_FORMATS.md). The K-quants of GGUF files are in kquants.c.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "engine.h"
#include "kquants.h"

/* Block sizes in bytes; 0 = not a valid type id. */
static const size_t BLOCK_BYTES[TYPE_COUNT] = {
    [TYPE_FP32] = 4, [TYPE_FP16] = 2, [TYPE_BF16] = 2,
    [TYPE_Q4_0] = 18, [TYPE_Q4_1] = 20, [TYPE_Q5_0] = 22, [TYPE_Q5_1] = 24, [TYPE_Q8_0] = 34,
    [TYPE_Q2_K] = 84, [TYPE_Q3_K] = 110, [TYPE_Q4_K] = 144, [TYPE_Q5_K] = 176, [TYPE_Q6_K] = 210,
};
static const char * const TYPE_NAMES[TYPE_COUNT] = {
    [TYPE_FP32] = "FP32", [TYPE_FP16] = "FP16", [TYPE_BF16] = "BF16",
    [TYPE_Q4_0] = "Q4_0", [TYPE_Q4_1] = "Q4_1", [TYPE_Q5_0] = "Q5_0", [TYPE_Q5_1] = "Q5_1", [TYPE_Q8_0] = "Q8_0",
    [TYPE_Q2_K] = "Q2_K", [TYPE_Q3_K] = "Q3_K", [TYPE_Q4_K] = "Q4_K", [TYPE_Q5_K] = "Q5_K", [TYPE_Q6_K] = "Q6_K",
};

bool type_is_valid(int type) { return type >= 0 && type < TYPE_COUNT && BLOCK_BYTES[type] != 0; }
bool type_is_kquant(int type) { return type >= TYPE_Q2_K && type <= TYPE_Q6_K; }
bool type_is_quantized(int type) {
    return type_is_kquant(type) || (type_is_valid(type) && type >= TYPE_Q4_0 && type <= TYPE_Q8_0);
}
bool type_in_rwkv_cpp_files(int type) { return type_is_valid(type) && type <= TYPE_Q8_0; }
int64_t type_block_values(int type) { return type_is_kquant(type) ? QKK : type_is_quantized(type) ? QK : 1; }
const char * type_name(int type) { return type_is_valid(type) ? TYPE_NAMES[type] : "unknown"; }

int type_from_name(const char * name) {
    for (int t = 0; t < TYPE_COUNT; t++) {
        if (TYPE_NAMES[t] && strcmp(TYPE_NAMES[t], name) == 0) return t;
    }
    return -1;
}

size_t type_block_bytes(int type) { return BLOCK_BYTES[type]; }

size_t type_row_bytes(int type, int64_t n) { return (size_t)(n / type_block_values(type)) * BLOCK_BYTES[type]; }

/* ---- half precision ---- */

float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24 is exact in float32 */
        float f = (float)mantissa * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    uint32_t bits = exponent == 31 ? (sign | 0x7f800000u | (mantissa << 13))
                                   : (sign | ((exponent + 112) << 23) | (mantissa << 13));
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t magnitude = x & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) { /* inf, nan (keep it a nan) */
        return sign | 0x7c00 | (magnitude > 0x7f800000u ? (uint16_t)(0x200 | ((magnitude >> 13) & 0x3ff)) : 0);
    }
    if (magnitude >= 0x477ff000u) return sign | 0x7c00; /* rounds past 65504 */
    if (magnitude < 0x38800000u) {
        /* subnormal half: count units of 2^-24, rounding to nearest even */
        float a;
        memcpy(&a, &magnitude, 4);
        return sign | (uint16_t)lrintf(a * 16777216.0f);
    }
    uint32_t h = ((((magnitude >> 23) - 127 + 15) << 10) | ((magnitude & 0x7fffff) >> 13));
    uint32_t rest = magnitude & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* a carry into the exponent is right */
    return sign | (uint16_t)h;
}

/* bfloat16 is the upper half of a float32: widening is exact. */
float bf16_to_fp32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* ---- dequantization ---- */

static void dequantize_block(int type, const uint8_t * b, float * y) {
    switch (type) {
    case TYPE_Q4_0: {
        float d = fp16_to_fp32(load_u16(b));
        const uint8_t * qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = ((qs[j] & 0x0f) - 8) * d;
            y[j + 16] = ((qs[j] >> 4) - 8) * d;
        }
        break;
    }
    case TYPE_Q4_1: {
        float d = fp16_to_fp32(load_u16(b)), m = fp16_to_fp32(load_u16(b + 2));
        const uint8_t * qs = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = (qs[j] & 0x0f) * d + m;
            y[j + 16] = (qs[j] >> 4) * d + m;
        }
        break;
    }
    case TYPE_Q5_0: {
        float d = fp16_to_fp32(load_u16(b));
        uint32_t qh = load_u32(b + 2);
        const uint8_t * qs = b + 6;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = (lo - 16) * d;
            y[j + 16] = (hi - 16) * d;
        }
        break;
    }
    case TYPE_Q5_1: {
        float d = fp16_to_fp32(load_u16(b)), m = fp16_to_fp32(load_u16(b + 2));
        uint32_t qh = load_u32(b + 4);
        const uint8_t * qs = b + 8;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[j] = lo * d + m;
            y[j + 16] = hi * d + m;
        }
        break;
    }
    case TYPE_Q8_0: {
        float d = fp16_to_fp32(load_u16(b));
        const int8_t * qs = (const int8_t *)(b + 2);
        for (int j = 0; j < 32; j++) y[j] = qs[j] * d;
        break;
    }
    }
}

void dequantize_row(int type, const void * src, float * dst, int64_t n) {
    const uint8_t * s = (const uint8_t *)src;
    switch (type) {
    case TYPE_FP32:
        memcpy(dst, s, (size_t)n * 4);
        return;
    case TYPE_FP16:
        for (int64_t i = 0; i < n; i++) dst[i] = fp16_to_fp32(load_u16(s + 2 * i));
        return;
    case TYPE_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_fp32(load_u16(s + 2 * i));
        return;
    case TYPE_Q2_K:
    case TYPE_Q3_K:
    case TYPE_Q4_K:
    case TYPE_Q5_K:
    case TYPE_Q6_K:
        kquant_dequantize_row(type, s, dst, n);
        return;
    default: {
        size_t bb = BLOCK_BYTES[type];
        for (int64_t i = 0; i < n / QK; i++) dequantize_block(type, s + i * bb, dst + i * QK);
    }
    }
}

/* ---- quantization: rwkv.cpp's arithmetic, all in float32 ---- */

/* A weight scaled and offset into [0, cap] (plus rounding slack), truncated to its code.
 * Converting a float outside int's range to int is undefined behaviour in C, and blocks of
 * finite but extreme values get there (max - min overflowing to infinity, 1 / d of a
 * subnormal d), so the value is clamped first. Blocks of ordinary values never reach the
 * clamps: their codes are rwkv.cpp's. */
static int unsigned_code(float v, int cap) {
    if (!(v >= 0.0f)) return 0; /* NaN included */
    if (v >= (float)cap) return cap;
    return (int)v;
}

static int8_t signed_code(float v) {
    if (!(v >= -127.0f)) return v != v ? 0 : -127;
    if (v >= 127.0f) return 127;
    return (int8_t)v;
}

static void quantize_block(int type, const float * x, uint8_t * b) {
    switch (type) {
    case TYPE_Q4_0:
    case TYPE_Q5_0: {
        /* symmetric: the value of largest magnitude (sign kept, first wins) maps to -8 / -16 */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const bool five = type == TYPE_Q5_0;
        const float d = max / (five ? -16.0f : -8.0f);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const int cap = five ? 31 : 15;
        const float bias = five ? 16.5f : 8.5f;
        uint16_t dh = fp32_to_fp16(d);
        memcpy(b, &dh, 2);
        uint8_t * qs = b + (five ? 6 : 2);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const int lo = unsigned_code(x[j] * id + bias, cap);
            const int hi = unsigned_code(x[j + 16] * id + bias, cap);
            qs[j] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= (uint32_t)((lo >> 4) & 1) << j;
            qh |= (uint32_t)((hi >> 4) & 1) << (j + 16);
        }
        if (five) memcpy(b + 2, &qh, 4);
        break;
    }
    case TYPE_Q4_1:
    case TYPE_Q5_1: {
        /* affine: min maps to 0, max to 15 / 31 */
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const bool five = type == TYPE_Q5_1;
        const float d = (max - min) / (five ? 31.0f : 15.0f);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t dh = fp32_to_fp16(d), mh = fp32_to_fp16(min);
        memcpy(b, &dh, 2);
        memcpy(b + 2, &mh, 2);
        uint8_t * qs = b + (five ? 8 : 4);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const int lo = unsigned_code((x[j] - min) * id + 0.5f, five ? 31 : 15);
            const int hi = unsigned_code((x[j + 16] - min) * id + 0.5f, five ? 31 : 15);
            qs[j] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= (uint32_t)((lo >> 4) & 1) << j;
            qh |= (uint32_t)((hi >> 4) & 1) << (j + 16);
        }
        if (five) memcpy(b + 4, &qh, 4);
        break;
    }
    case TYPE_Q8_0: {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t dh = fp32_to_fp16(d);
        memcpy(b, &dh, 2);
        for (int j = 0; j < QK; j++) b[2 + j] = (uint8_t)signed_code(roundf(x[j] * id));
        break;
    }
    }
}

void quantize_row(int type, const float * src, void * dst, int64_t n) {
    uint8_t * d = (uint8_t *)dst;
    if (type == TYPE_FP32) {
        memcpy(d, src, (size_t)n * 4);
    } else if (type == TYPE_FP16) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = fp32_to_fp16(src[i]);
            memcpy(d + 2 * i, &h, 2);
        }
    } else {
        size_t bb = BLOCK_BYTES[type];
        for (int64_t i = 0; i < n / QK; i++) quantize_block(type, src + i * QK, d + i * bb);
    }
}
