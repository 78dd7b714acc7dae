/*
 * kquants.c: the K-quant block formats of GGUF files, written from the format's published
 * description (GGUF_NOTES.md), checked in tests against an independent reader (the `gguf`
 * package's NumPy dequantization).
 *
 * A K-quant row is a sequence of super-blocks of 256 values, packed without padding; `half`
 * is IEEE binary16, little endian. Inside a super-block the values form sub-blocks (16 or 32
 * values) with small integer scales, which a half-precision super-scale d (and, for the
 * types with minimums, dmin) turns into floats.
 *
 * Q4_K, 144 bytes: half d; half dmin; u8 scales[12]; u8 qs[128]
 *   8 sub-blocks j of 32 values, each with a 6-bit scale sc_j and a 6-bit minimum m_j, packed
 *   into scales[12]: for j < 4, sc_j = scales[j] & 63 and m_j = scales[j + 4] & 63; for j >= 4
 *   the low 4 bits come from scales[j + 4] (sc_j the low nibble, m_j the high nibble) and the
 *   high 2 bits are the top bits of scales[j - 4] (sc_j) and of scales[j] (m_j).
 *   Codes: 4 groups of 64 values; group k's 32 bytes qs[32k .. 32k + 31] hold values
 *   64k + l in their low nibbles and 64k + 32 + l in their high nibbles (l < 32), so sub-block
 *   2k is the low nibbles and 2k + 1 the high nibbles of the same 32 bytes.
 *   value = d * sc_j * q - dmin * m_j, q in 0..15.
 * Q5_K, 176 bytes: half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
 *   As Q4_K, with a fifth bit per value: value 32j + l of sub-block j has bit j of qh[l] as its
 *   bit 4. value = d * sc_j * q - dmin * m_j, q in 0..31.
 * Q6_K, 210 bytes: u8 ql[128]; u8 qh[64]; i8 scales[16]; half d
 *   16 sub-blocks of 16 values with signed 8-bit scales. Two halves h of 128 values; in half h,
 *   for l < 32, with L = ql + 64h and H = qh + 32h:
 *     value 128h + l      = (L[l] & 15)      | ((H[l] >> 0) & 3) << 4
 *     value 128h + 32 + l = (L[l + 32] & 15) | ((H[l] >> 2) & 3) << 4
 *     value 128h + 64 + l = (L[l] >> 4)      | ((H[l] >> 4) & 3) << 4
 *     value 128h + 96 + l = (L[l + 32] >> 4) | ((H[l] >> 6) & 3) << 4
 *   value i = d * scales[i / 16] * (q - 32), q in 0..63.
 * Q2_K, 84 bytes: u8 scales[16]; u8 qs[64]; half d; half dmin
 *   16 sub-blocks of 16 values; scales[k] holds sub-block k's 4-bit scale (low nibble) and
 *   4-bit minimum (high nibble). Two halves h of 128 values: value 128h + 32s + l (s < 4,
 *   l < 32) is bits 2s, 2s + 1 of qs[32h + l].
 *   value i = d * sc_k * q - dmin * m_k, k = i / 16, q in 0..3.
 * Q3_K, 110 bytes: u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d
 *   16 sub-blocks of 16 values with 6-bit scales stored with a bias of 32: for sub-block k the
 *   low 4 bits are the low nibble of scales[k] (k < 8) or the high nibble of scales[k - 8]
 *   (k >= 8); the high 2 bits are bits 2(k / 4), 2(k / 4) + 1 of scales[8 + k % 4].
 *   Value 128h + 32s + l takes its low 2 bits as Q2_K does and its third bit from bit 4h + s
 *   of hmask[l]; a clear third bit means the value is 4 lower:
 *   value i = d * (sc_k - 32) * (q - 4), q = low2 + 4 * bit in 0..7.
 */
#include <string.h>

#include "kquants.h"

/* The 6-bit scales and minimums of Q4_K and Q5_K. */
static void scales_4k(const uint8_t * s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 15) | ((s[j] >> 6) << 4));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

/* The 6-bit biased scales of Q3_K, as signed scales. */
static void scales_3k(const uint8_t * s, int sc[16]) {
    for (int k = 0; k < 16; k++) {
        const int low = k < 8 ? s[k] & 15 : s[k - 8] >> 4;
        const int high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        sc[k] = (low | high << 4) - 32;
    }
}

void kquant_unpack(int type, const uint8_t * b, kq_unpacked * out) {
    uint8_t * q = out->code;
    switch (type) {
    case TYPE_Q4_K:
    case TYPE_Q5_K: {
        const float d = fp16_to_fp32(load_u16(b)), dmin = fp16_to_fp32(load_u16(b + 2));
        uint8_t sc[8], mn[8];
        scales_4k(b + 4, sc, mn);
        const int five = type == TYPE_Q5_K;
        const uint8_t * qh = b + 16;
        const uint8_t * qs = b + (five ? 48 : 16);
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) {
                q[64 * k + l] = qs[32 * k + l] & 15;
                q[64 * k + 32 + l] = qs[32 * k + l] >> 4;
            }
        }
        if (five) {
            for (int j = 0; j < 8; j++)
                for (int l = 0; l < 32; l++) q[32 * j + l] |= (uint8_t)(((qh[l] >> j) & 1) << 4);
        }
        for (int g = 0; g < 16; g++) {
            out->scale[g] = d * (float)sc[g / 2];
            out->corr[g] = dmin * (float)mn[g / 2];
        }
        break;
    }
    case TYPE_Q6_K: {
        const uint8_t * ql = b;
        const uint8_t * qh = b + 128;
        const int8_t * sc = (const int8_t *)(b + 192);
        const float d = fp16_to_fp32(load_u16(b + 208));
        for (int h = 0; h < 2; h++) {
            const uint8_t * L = ql + 64 * h;
            const uint8_t * H = qh + 32 * h;
            uint8_t * o = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (uint8_t)((L[l] & 15) | ((H[l] & 3) << 4));
                o[32 + l] = (uint8_t)((L[l + 32] & 15) | (((H[l] >> 2) & 3) << 4));
                o[64 + l] = (uint8_t)((L[l] >> 4) | (((H[l] >> 4) & 3) << 4));
                o[96 + l] = (uint8_t)((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4));
            }
        }
        for (int g = 0; g < 16; g++) {
            out->scale[g] = d * (float)sc[g];
            out->corr[g] = 32.0f * out->scale[g];
        }
        break;
    }
    case TYPE_Q2_K: {
        const uint8_t * sc = b;
        const uint8_t * qs = b + 16;
        const float d = fp16_to_fp32(load_u16(b + 80)), dmin = fp16_to_fp32(load_u16(b + 82));
        for (int h = 0; h < 2; h++)
            for (int s = 0; s < 4; s++)
                for (int l = 0; l < 32; l++) q[128 * h + 32 * s + l] = (qs[32 * h + l] >> (2 * s)) & 3;
        for (int g = 0; g < 16; g++) {
            out->scale[g] = d * (float)(sc[g] & 15);
            out->corr[g] = dmin * (float)(sc[g] >> 4);
        }
        break;
    }
    case TYPE_Q3_K: {
        const uint8_t * hmask = b;
        const uint8_t * qs = b + 32;
        const float d = fp16_to_fp32(load_u16(b + 108));
        int sc[16];
        scales_3k(b + 96, sc);
        for (int h = 0; h < 2; h++)
            for (int s = 0; s < 4; s++)
                for (int l = 0; l < 32; l++) {
                    const int low = (qs[32 * h + l] >> (2 * s)) & 3;
                    const int high = (hmask[l] >> (4 * h + s)) & 1;
                    q[128 * h + 32 * s + l] = (uint8_t)(low | high << 2);
                }
        for (int g = 0; g < 16; g++) {
            out->scale[g] = d * (float)sc[g];
            out->corr[g] = 4.0f * out->scale[g];
        }
        break;
    }
    default:
        memset(out, 0, sizeof *out);
    }
}

void kquant_dequantize_row(int type, const uint8_t * src, float * dst, int64_t n) {
    const size_t bb = type_block_bytes(type);
    kq_unpacked u;
    for (int64_t i = 0; i < n / QKK; i++) {
        kquant_unpack(type, src + (size_t)i * bb, &u);
        float * y = dst + i * QKK;
        for (int j = 0; j < QKK; j++) y[j] = u.scale[j / 16] * (float)u.code[j] - u.corr[j / 16];
    }
}
