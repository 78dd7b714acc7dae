/*
 * kernels_avx2.c: AVX2 + FMA + F16C kernels (any x86-64 CPU since about 2013). Compiled with
 * target attributes, so the package builds with plain flags; kernels.c selects this set
 * only when the CPU reports the features.
 *
 * Quantized weights: a 32-value block is unpacked to 32 codes and multiplied with the int8
 * activations by VPMADDUBSW (u8 x s8 -> pairs of s16) and VPMADDWD (-> s32). Codes of the 4-
 * and 5-bit types are small unsigned numbers (< 32, so the s16 pairs cannot saturate);
 * Q8_0 codes are signed, handled with the sign trick (|w| times x with w's sign). Decode
 * streams one row at a time; up to 3 tokens use tiles of 4 rows x 2 tokens (AVX2 has 16
 * vector registers); 4 tokens and more use 8-row panels (see q_panel8). Float weights use
 * 4 x 2 tiles with FMA, F16C converting FP16 on the fly.
 */
#if defined(__x86_64__)

#include <immintrin.h>

/* Every function here carries this target attribute (per function, as gcc and clang both
 * accept; a function without it cannot inline the intrinsics, so a forgotten one fails to
 * build rather than running wider instructions where kernels.c did not select them). */
#define X86_TARGET __attribute__((target("avx2,fma,f16c")))

#include "kernels_x86.h"
#include "kquants.h"

#define INLINE static inline __attribute__((always_inline)) X86_TARGET

enum {
    ROWS = 4,
    TOKS = 2,
    Q_PAIRS_CHUNK = 64,
    P2_MIN_T = 4, /* tokens from which the panels pay */
    F_COLS_CHUNK = 1024,
    /* Decode rows are also fetched this far ahead into L2 (the hardware prefetcher alone stops
     * at every 4 KiB page): one thread, weights from memory (kernel_speed, 0.5-1 GB), Q8_0
     * 1.2x, Q4_0 1.1x faster. */
    PREFETCH_L2 = 6144,
};

X86_TARGET static size_t avx2_prepared_bytes(int type, int64_t n, int T) {
    return type_is_kquant(type) ? kq_prepared_bytes(n, T) : x86_prepared_bytes(type, n, T, X86_DECODE_NIBBLES);
}

X86_TARGET static void avx2_prepare_part(int type, const float * x, int64_t n, int T, void * dst, int part, int parts) {
    if (type_is_kquant(type)) {
        if (part == 0) kq_prepare_avx2(type, x, n, T, dst); /* not cut: one part does it all */
        return;
    }
    x86_prepare(type, x, n, T, dst, 0, X86_DECODE_NIBBLES, part, parts);
}

X86_TARGET static void avx2_prepare(int type, const float * x, int64_t n, int T, void * dst) {
    avx2_prepare_part(type, x, n, T, dst, 0, 1);
}

/* ---- quantized weights ---- */

/* The 32 codes of a block in value order (signed values for Q8_0). */
INLINE __m256i q_codes(int type, const uint8_t * a) {
    if (type == TYPE_Q8_0) return _mm256_loadu_si256((const __m256i *)(a + 2));
    const size_t qs = type == TYPE_Q4_0 ? 2 : type == TYPE_Q4_1 ? 4 : type == TYPE_Q5_0 ? 6 : 8;
    const __m128i q = _mm_loadu_si128((const __m128i *)(a + qs));
    const __m128i nib = _mm_set1_epi8(0x0f);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(q, nib)),
                                        _mm_and_si128(_mm_srli_epi16(q, 4), nib), 1);
    if (type == TYPE_Q5_0 || type == TYPE_Q5_1) {
        /* bit j of qh -> 0x10 in byte j: spread the 4 bytes over 8 bytes each, test one bit per byte */
        const uint32_t qh = load_u32(a + (type == TYPE_Q5_0 ? 2 : 4));
        __m256i bits = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
                                           _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2,
                                                            2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
        bits = _mm256_or_si256(bits, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL));
        bits = _mm256_cmpeq_epi8(bits, _mm256_set1_epi8(-1));
        v = _mm256_or_si256(v, _mm256_and_si256(bits, _mm256_set1_epi8(0x10)));
    }
    return v;
}

INLINE void q_block(int type, int R, int TT, const uint8_t * w, size_t row_bytes, int64_t b, const int8_t * xq,
                    const xq_scale * xs, int64_t np, size_t qstride, __m256 acc[ROWS][TOKS], int prefetch) {
    const size_t bb = q_block_bytes(type);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i codes[ROWS], mags[ROWS];
    __m256 dw[ROWS];
    for (int i = 0; i < R; i++) {
        const uint8_t * a = w + (size_t)i * row_bytes + (size_t)b * bb;
        if (prefetch) {
            _mm_prefetch((const char *)(a + 8 * bb), _MM_HINT_T0);
            _mm_prefetch((const char *)(a + PREFETCH_L2), _MM_HINT_T1);
        }
        codes[i] = q_codes(type, a);
        if (type == TYPE_Q8_0) mags[i] = _mm256_abs_epi8(codes[i]);
        dw[i] = _mm256_set1_ps(_cvtsh_ss(load_u16(a)));
    }
    for (int j = 0; j < TT; j++) {
        const xq_scale * sc = &xs[(size_t)j * np + b / 2];
        const __m256 dx = _mm256_broadcast_ss(&sc->d[b & 1]);
        const __m256i x = _mm256_load_si256((const __m256i *)(xq + (size_t)j * qstride + (size_t)b * 32));
        const __m256i bias = _mm256_zextsi128_si256(_mm_cvtsi32_si128(sc->bias[b & 1]));
        for (int i = 0; i < R; i++) {
            __m256i dot;
            if (type == TYPE_Q8_0) {
                dot = _mm256_madd_epi16(_mm256_maddubs_epi16(mags[i], _mm256_sign_epi8(x, codes[i])), ones);
            } else {
                dot = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(codes[i], x), ones), bias);
            }
            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw[i], dx), acc[i][j]);
        }
    }
}

INLINE void q_tile(int type, int R, int TT, const uint8_t * w, size_t row_bytes, const xq_layout * L, const int8_t * xq,
                   const xq_scale * xs, int64_t r, int t, int64_t b0, int64_t b1, int first, float * y, int64_t ldy) {
    __m256 acc[ROWS][TOKS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) acc[i][j] = _mm256_setzero_ps();
    const uint8_t * wr = w + (size_t)r * row_bytes;
    const int8_t * xt = xq + (size_t)t * L->qstride;
    const xq_scale * st = xs + (size_t)t * L->np;
    for (int64_t b = b0; b < b1; b++) q_block(type, R, TT, wr, row_bytes, b, xt, st, L->np, L->qstride, acc, TT == 1);
    for (int i = 0; i < R; i++) {
        for (int j = 0; j < TT; j++) {
            const float v = x86_hsum8(acc[i][j]);
            float * out = y + (size_t)(t + j) * ldy + (size_t)(r + i);
            *out = first ? v : *out + v;
        }
    }
}

/* ---- sequence mode: 8-row panels ----
 * As in the AVX-512 file: rows are unpacked once into panels where one vector holds 4 codes of
 * each of 8 rows, so VPMADDUBSW with one token's 4 activations broadcast advances 8 row sums.
 * The 4- and 5-bit codes (< 32) let 4 of those 16-bit products add up before widening (4 x 2 x
 * 31 x 127 < 32768); Q8_0 uses the sign trick, |w| times x with w's sign, widened each time. */
enum { P2_BLOCKS = 32, P2_TOKENS = 4 };

typedef struct q_panel8 {
    __m256i codes[P2_BLOCKS + 1][8]; /* [block][4-value group] -> dword i = row i */
    __m256i mags[P2_BLOCKS + 1][8];  /* Q8_0: |codes| */
    __m256 scales[P2_BLOCKS + 1];
    __m256 mins[P2_BLOCKS + 1];
} q_panel8;

/* 8 x 8 transpose of dwords: out[j] lane i = in[i] lane j. */
INLINE void transpose8(__m256i v[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 4; i++) {
        a[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) { /* b[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3 */
        b[4 * i] = _mm256_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm256_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm256_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm256_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        v[c] = _mm256_permute2x128_si256(b[c], b[4 + c], 0x20);
        v[4 + c] = _mm256_permute2x128_si256(b[c], b[4 + c], 0x31);
    }
}

INLINE void q_panel8_fill(int type, q_panel8 * panel, const uint8_t * w, size_t row_bytes, int64_t r, int nr, int64_t b0,
                          int64_t b1) {
    const size_t bb = q_block_bytes(type);
    float * scales = (float *)panel->scales;
    float * mins = (float *)panel->mins;
    for (int b = 0; b < (int)(b1 - b0); b++) {
        __m256i codes[8];
        for (int i = 0; i < 8; i++) {
            if (i >= nr) {
                codes[i] = _mm256_setzero_si256();
                scales[b * 8 + i] = mins[b * 8 + i] = 0.0f;
                continue;
            }
            const uint8_t * a = w + (size_t)(r + i) * row_bytes + (size_t)(b0 + b) * bb;
            codes[i] = q_codes(type, a);
            scales[b * 8 + i] = _cvtsh_ss(load_u16(a));
            mins[b * 8 + i] = type == TYPE_Q4_1 || type == TYPE_Q5_1 ? _cvtsh_ss(load_u16(a + 2)) : 0.0f;
        }
        transpose8(codes);
        for (int g = 0; g < 8; g++) {
            panel->codes[b][g] = codes[g];
            if (type == TYPE_Q8_0) panel->mags[b][g] = _mm256_abs_epi8(codes[g]);
        }
    }
}

INLINE void q_panel8_apply(int type, int TT, const q_panel8 * panel, const xq_layout * L, const int8_t * xq,
                           const xq_scale * xs, const float * s, int t, int64_t b0, int64_t b1, int64_t r, int nr,
                           int first, float * y, int64_t ldy) {
    const int with_min = type == TYPE_Q4_1 || type == TYPE_Q5_1;
    const int with_bias = type == TYPE_Q4_0 || type == TYPE_Q5_0;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[P2_TOKENS];
    for (int j = 0; j < TT; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = b0; b < b1; b++) {
        const int pb = (int)(b - b0);
        __m256i dot[P2_TOKENS];
        for (int j = 0; j < TT; j++) {
            dot[j] = with_bias ? _mm256_set1_epi32(xs[(size_t)(t + j) * L->np + b / 2].bias[b & 1]) : _mm256_setzero_si256();
        }
        const int8_t * xb = xq + (size_t)t * L->qstride + (size_t)b * 32;
        if (type == TYPE_Q8_0) {
            for (int g = 0; g < 8; g++) {
                const __m256i codes = panel->codes[pb][g], mags = panel->mags[pb][g];
                for (int j = 0; j < TT; j++) {
                    const __m256i x4 = _mm256_set1_epi32((int32_t)load_u32(xb + (size_t)j * L->qstride + (size_t)g * 4));
                    const __m256i p = _mm256_maddubs_epi16(mags, _mm256_sign_epi8(x4, codes));
                    dot[j] = _mm256_add_epi32(dot[j], _mm256_madd_epi16(p, ones));
                }
            }
        } else {
            for (int h = 0; h < 8; h += 4) {
                __m256i sum16[P2_TOKENS];
                for (int j = 0; j < TT; j++) sum16[j] = _mm256_setzero_si256();
                for (int g = h; g < h + 4; g++) {
                    const __m256i codes = panel->codes[pb][g];
                    for (int j = 0; j < TT; j++) {
                        const __m256i x4 = _mm256_set1_epi32((int32_t)load_u32(xb + (size_t)j * L->qstride + (size_t)g * 4));
                        const __m256i p = _mm256_maddubs_epi16(codes, x4);
                        sum16[j] = g == h ? p : _mm256_add_epi16(sum16[j], p);
                    }
                }
                for (int j = 0; j < TT; j++) dot[j] = _mm256_add_epi32(dot[j], _mm256_madd_epi16(sum16[j], ones));
            }
        }
        for (int j = 0; j < TT; j++) {
            const __m256 dx = _mm256_set1_ps(xs[(size_t)(t + j) * L->np + b / 2].d[b & 1]);
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[j]), _mm256_mul_ps(panel->scales[pb], dx), acc[j]);
            if (with_min) acc[j] = _mm256_fmadd_ps(panel->mins[pb], _mm256_set1_ps(s[(size_t)(t + j) * L->nbs + b]), acc[j]);
        }
    }
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int j = 0; j < TT; j++) {
        float * out = y + (size_t)(t + j) * ldy + r;
        __m256 v = acc[j];
        if (!first) v = _mm256_add_ps(v, _mm256_maskload_ps(out, mask));
        _mm256_maskstore_ps(out, mask, v);
    }
}

INLINE void q_matmul_panels8(int type, const uint8_t * w, size_t row_bytes, const xq_layout * L, const void * xp, int T,
                             float * y, int64_t ldy, int64_t r0, int64_t r1) {
    const int8_t * xq = (const int8_t *)xp;
    const xq_scale * xs = (const xq_scale *)((const uint8_t *)xp + L->sc_off);
    const float * s = (const float *)((const uint8_t *)xp + L->s_off);
    q_panel8 panel;
    for (int64_t b0 = 0; b0 < L->nb; b0 += P2_BLOCKS) {
        const int64_t b1 = b0 + P2_BLOCKS < L->nb ? b0 + P2_BLOCKS : L->nb;
        const int first = b0 == 0;
        for (int64_t r = r0; r < r1; r += 8) {
            const int nr = r1 - r < 8 ? (int)(r1 - r) : 8;
            q_panel8_fill(type, &panel, w, row_bytes, r, nr, b0, b1);
            int t = 0;
            for (; t + 4 <= T; t += 4) q_panel8_apply(type, 4, &panel, L, xq, xs, s, t, b0, b1, r, nr, first, y, ldy);
            for (; t < T; t++) q_panel8_apply(type, 1, &panel, L, xq, xs, s, t, b0, b1, r, nr, first, y, ldy);
        }
    }
}

/* ---- decode of the 4- and 5-bit types ----
 * The activations come in nibble order (kernels_x86.h): for a pair of blocks a, b, 32 bytes
 * of values 0-15 of a and b, and 32 of values 16-31. The packed codes of the pair (16 bytes
 * each) are loaded into the two halves of one vector; an AND gives the pair's 32 low nibbles
 * and a shift and an AND its 32 high ones, so a pair costs 4 instructions to unpack (a block
 * alone cost 4). The products of low and high halves are added as 16-bit sums (< 2 x 2 x 31 x
 * 127) and widened once. Block scales and the code offset or minimum come per 8 blocks, as
 * vectors (one gather of the blocks' first 4 bytes), and each pair takes its scales with one
 * permute: lanes 0-3 of a pair's dot product are block a, 4-7 block b. */
static const int32_t PAIR_OF_8[4][8] __attribute__((aligned(32))) = {
    {0, 0, 0, 0, 1, 1, 1, 1}, {2, 2, 2, 2, 3, 3, 3, 3}, {4, 4, 4, 4, 5, 5, 5, 5}, {6, 6, 6, 6, 7, 7, 7, 7}};

/* The 64 codes of the pair at a (b only when both): low nibbles in *lo, high ones in *hi,
 * each [block a's 16 | block b's 16], with the 5th bits of the Q5 types. */
INLINE void q4_pair_codes(int type, const uint8_t * a, int both, __m256i * lo, __m256i * hi) {
    const size_t bb = q_block_bytes(type);
    const size_t qs = type == TYPE_Q4_0 ? 2 : type == TYPE_Q4_1 ? 4 : type == TYPE_Q5_0 ? 6 : 8;
    const __m128i qa = _mm_loadu_si128((const __m128i *)(a + qs));
    const __m128i qb = both ? _mm_loadu_si128((const __m128i *)(a + bb + qs)) : _mm_setzero_si128();
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(qa), qb, 1);
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    *lo = _mm256_and_si256(v, nibble);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
    if (type == TYPE_Q5_0 || type == TYPE_Q5_1) {
        const size_t at = type == TYPE_Q5_0 ? 2 : 4;
        const __m256i qh = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi32((int)load_u32(a + at))),
                                                   _mm_set1_epi32(both ? (int)load_u32(a + bb + at) : 0), 1);
        /* byte i of a half <- the qh byte holding its bit; then one bit tested per byte */
        const __m256i spread_lo = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                                                   1, 1, 1, 1, 1, 1, 1);
        const __m256i bits = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfeLL), ones = _mm256_set1_epi8(-1);
        const __m256i sixteen = _mm256_set1_epi8(0x10);
        const __m256i h_lo = _mm256_cmpeq_epi8(_mm256_or_si256(_mm256_shuffle_epi8(qh, spread_lo), bits), ones);
        const __m256i h_hi = _mm256_cmpeq_epi8(
            _mm256_or_si256(_mm256_shuffle_epi8(qh, _mm256_add_epi8(spread_lo, _mm256_set1_epi8(2))), bits), ones);
        *lo = _mm256_or_si256(*lo, _mm256_and_si256(h_lo, sixteen));
        *hi = _mm256_or_si256(*hi, _mm256_and_si256(h_hi, sixteen));
    }
}

/* R (1 or 2) rows of W from row against T (< P2_MIN_T) tokens, y[t * ldy + i] = row i . token t.
 * Two rows share the activations' loads; each row's sum keeps the order of a row alone. */
INLINE void q4_rows_decode(int type, int R, const uint8_t * row, size_t row_bytes, const xq_layout * L, const int8_t * xq,
                           const float * xe, const float * xs, int T, float * y, int64_t ldy) {
    const size_t bb = q_block_bytes(type);
    const int with_min = type == TYPE_Q4_1 || type == TYPE_Q5_1;
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i offsets = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)bb));
    __m256 acc[2][P2_MIN_T - 1], extra[2][P2_MIN_T - 1];
    for (int i = 0; i < R; i++)
        for (int t = 0; t < T; t++) acc[i][t] = extra[i][t] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < L->nb; b0 += 8) {
        const int blocks = L->nb - b0 < 8 ? (int)(L->nb - b0) : 8;
        const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(blocks), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 scales[2][P2_MIN_T - 1];
        for (int i = 0; i < R; i++) {
            const uint8_t * a = row + (size_t)i * row_bytes + (size_t)b0 * bb;
            /* the first 4 bytes of each block: d, then m (_1 types) */
            const __m256i heads = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)a, offsets, lanes, 1);
            const __m256i d16 = _mm256_packus_epi32(_mm256_and_si256(heads, _mm256_set1_epi32(0xffff)), _mm256_setzero_si256());
            const __m256 dw = _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(d16, 0x08)));
            __m256 mw = _mm256_setzero_ps();
            if (with_min) {
                const __m256i m16 = _mm256_packus_epi32(_mm256_srli_epi32(heads, 16), _mm256_setzero_si256());
                mw = _mm256_cvtph_ps(_mm256_castsi256_si128(_mm256_permute4x64_epi64(m16, 0x08)));
            }
            for (int t = 0; t < T; t++) {
                const float * xd = xe + (size_t)t * L->nbs * 2;
                scales[i][t] = _mm256_mul_ps(dw, _mm256_loadu_ps(xd + b0));
                extra[i][t] = with_min ? _mm256_fmadd_ps(mw, _mm256_loadu_ps(xs + (size_t)t * L->nbs + b0), extra[i][t])
                                       : _mm256_fmadd_ps(scales[i][t], _mm256_loadu_ps(xd + L->nbs + b0), extra[i][t]);
            }
        }
        /* unrolled (p constant: its scale permute and activation offsets are too): in L2
         * 1.08-1.17x the rate of the loop that ran to the block count (every 4/5-bit type, 768
         * and 2048 columns), from memory 1.04-1.07x (Q5_1, Q4_0; benchmarks/kernel_speed.c, one
         * thread) */
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            if (2 * p >= blocks) break;
            const int64_t b = b0 + 2 * p;
            const size_t at = (size_t)(b / 4) * 128 + (size_t)((b / 2) % 2) * 32;
            const __m256i pick = _mm256_load_si256((const __m256i *)PAIR_OF_8[p]);
            __m256i lo[2], hi[2];
            for (int i = 0; i < R; i++) {
                const uint8_t * pa = row + (size_t)i * row_bytes + (size_t)b * bb;
                _mm_prefetch((const char *)(pa + 1024), _MM_HINT_T0);
                _mm_prefetch((const char *)(pa + PREFETCH_L2), _MM_HINT_T1);
                q4_pair_codes(type, pa, 2 * p + 1 < blocks, &lo[i], &hi[i]);
            }
            for (int t = 0; t < T; t++) {
                const int8_t * xg = xq + (size_t)t * L->qstride + at;
                const __m256i xlo = _mm256_load_si256((const __m256i *)xg), xhi = _mm256_load_si256((const __m256i *)(xg + 64));
                for (int i = 0; i < R; i++) {
                    const __m256i sum16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo[i], xlo), _mm256_maddubs_epi16(hi[i], xhi));
                    const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(sum16, ones));
                    acc[i][t] = _mm256_fmadd_ps(dot, _mm256_permutevar8x32_ps(scales[i][t], pick), acc[i][t]);
                }
            }
        }
    }
    for (int i = 0; i < R; i++)
        for (int t = 0; t < T; t++) y[(size_t)t * ldy + i] = x86_hsum8(_mm256_add_ps(acc[i][t], extra[i][t]));
}

INLINE void q_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                     int64_t ldy, int64_t r0, int64_t r1) {
    const xq_layout L = xq_layout_of(type, n, T, X86_DECODE_NIBBLES);
    const int8_t * xq = (const int8_t *)xp;
    const xq_scale * xs = (const xq_scale *)((const uint8_t *)xp + L.sc_off);
    if (T >= P2_MIN_T) {
        q_matmul_panels8(type, w, row_bytes, &L, xp, T, y, ldy, r0, r1);
        return;
    }
    if (type != TYPE_Q8_0) { /* decode: two rows at a time (engine 1.0-1.05x over one), activations in nibble order */
        const float * xe = (const float *)((const uint8_t *)xp + L.xe_off);
        const float * xs_min = (const float *)((const uint8_t *)xp + L.s_off);
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) q4_rows_decode(type, 2, w + (size_t)r * row_bytes, row_bytes, &L, xq, xe, xs_min, T, y + r, ldy);
        for (; r < r1; r++) q4_rows_decode(type, 1, w + (size_t)r * row_bytes, row_bytes, &L, xq, xe, xs_min, T, y + r, ldy);
        return;
    }
    const int64_t chunk = T > TOKS ? 2 * Q_PAIRS_CHUNK : L.nb;
    const int with_min = type == TYPE_Q4_1 || type == TYPE_Q5_1;
    for (int64_t b0 = 0; b0 < L.nb; b0 += chunk) {
        const int64_t b1 = b0 + chunk < L.nb ? b0 + chunk : L.nb;
        const int first = b0 == 0;
        for (int64_t r = r0; r < r1;) {
            const int R = r1 - r >= ROWS ? ROWS : 1; /* decode too: 4 independent sums (see f_matmul) */
            int t = 0;
            if (R == ROWS) {
                for (; t + 2 <= T; t += 2) q_tile(type, ROWS, 2, w, row_bytes, &L, xq, xs, r, t, b0, b1, first, y, ldy);
                for (; t < T; t++) q_tile(type, ROWS, 1, w, row_bytes, &L, xq, xs, r, t, b0, b1, first, y, ldy);
            } else {
                for (; t + 2 <= T; t += 2) q_tile(type, 1, 2, w, row_bytes, &L, xq, xs, r, t, b0, b1, first, y, ldy);
                for (; t < T; t++) q_tile(type, 1, 1, w, row_bytes, &L, xq, xs, r, t, b0, b1, first, y, ldy);
            }
            if (with_min) x86_add_min_term(type, w, row_bytes, r, r + R, b0, b1, xp, &L, T, y, ldy);
            r += R;
        }
    }
}

#define Q_MATMUL(NAME, TYPE)                                                                                          \
    X86_TARGET static void NAME(const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, int64_t ldy, \
                     int64_t r0, int64_t r1) {                                                                        \
        q_matmul(TYPE, w, row_bytes, n, xp, T, y, ldy, r0, r1);                                                        \
    }
Q_MATMUL(matmul_q4_0, TYPE_Q4_0)
Q_MATMUL(matmul_q4_1, TYPE_Q4_1)
Q_MATMUL(matmul_q5_0, TYPE_Q5_0)
Q_MATMUL(matmul_q5_1, TYPE_Q5_1)
Q_MATMUL(matmul_q8_0, TYPE_Q8_0)

/* ---- FP32 / FP16 weights ---- */

INLINE __m256 f_load(int type, const uint8_t * row, int64_t k, int64_t left) {
    if (type == TYPE_BF16) { /* the upper half of a float32 */
        const uint8_t * p = row + (size_t)k * 2;
        __m128i h;
        if (left >= 8) {
            h = _mm_loadu_si128((const __m128i *)p);
        } else {
            uint16_t tail[8] = {0};
            memcpy(tail, p, (size_t)left * 2);
            h = _mm_loadu_si128((const __m128i *)tail);
        }
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (type == TYPE_FP16) {
        const uint8_t * p = row + (size_t)k * 2;
        if (left >= 8) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        uint16_t tail[8] = {0};
        memcpy(tail, p, (size_t)left * 2);
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tail));
    }
    const float * p = (const float *)(row + (size_t)k * 4);
    if (left >= 8) return _mm256_loadu_ps(p);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)left), lanes));
}

INLINE void f_step(int type, int R, int TT, const uint8_t * wr, size_t row_bytes, const float * x, int64_t ns,
                   int64_t k, int64_t left, __m256 acc[ROWS][TOKS], int prefetch) {
    __m256 wv[ROWS];
    for (int i = 0; i < R; i++) {
        const uint8_t * row = wr + (size_t)i * row_bytes;
        const size_t at = (size_t)k * x86_float_bytes(type);
        if (prefetch && at % 64 == 0) { /* once per cache line */
            _mm_prefetch((const char *)(row + at + 128 * x86_float_bytes(type)), _MM_HINT_T0);
            _mm_prefetch((const char *)(row + at + PREFETCH_L2), _MM_HINT_T1);
        }
        wv[i] = f_load(type, row, k, left);
    }
    for (int j = 0; j < TT; j++) {
        const __m256 xv = _mm256_load_ps(x + (size_t)j * ns + k);
        for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
}

INLINE void f_tile(int type, int R, int TT, const uint8_t * w, size_t row_bytes, const float * x, int64_t ns, int64_t r,
                   int t, int64_t k0, int64_t k1, int first, float * y, int64_t ldy) {
    __m256 acc[ROWS][TOKS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < TT; j++) acc[i][j] = _mm256_setzero_ps();
    const uint8_t * wr = w + (size_t)r * row_bytes;
    const float * xt = x + (size_t)t * ns;
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) f_step(type, R, TT, wr, row_bytes, xt, ns, k, 8, acc, TT == 1);
    if (k < k1) f_step(type, R, TT, wr, row_bytes, xt, ns, k, k1 - k, acc, 0);
    for (int i = 0; i < R; i++) {
        for (int j = 0; j < TT; j++) {
            const float v = x86_hsum8(acc[i][j]);
            float * out = y + (size_t)(t + j) * ldy + (size_t)(r + i);
            *out = first ? v : *out + v;
        }
    }
}

/* Sequence mode (X86_XT_MIN_T tokens and more), as in the AVX-512 file: the activations come
 * transposed (kernels_x86.h), one vector = one column of 8 tokens; a group of XT_RG rows is
 * converted to float32 XT_COLS columns at a time into a buffer in L1, and each weight is
 * broadcast against up to 3 token vectors: 4 x 3 accumulators of the 16 registers, per column
 * 3 vector loads and 4 broadcasts for 12 FMAs. The rows' sums go to a tile of XT_ROWS rows x
 * 64 tokens, written out once per chunk of columns. */
enum { XT_COLS = 64, XT_ROWS = 32, XT_TOKENS = 64, XT_RG = 4, XT_CHUNK = 2048 };

/* As in the AVX-512 file: every cache line of the row's block XT_AHEAD blocks later into L2. */
enum { XT_AHEAD = 2 };

INLINE void xt_convert(int type, float * dst, const uint8_t * row, int64_t k0, int64_t len) {
    const size_t wb = x86_float_bytes(type);
    x86_prefetch_lines(row + (size_t)(k0 + XT_AHEAD * XT_COLS) * wb, XT_COLS * wb, 0);
    int64_t k = 0;
    for (; k + 8 <= len; k += 8) _mm256_store_ps(dst + k, f_load(type, row, k0 + k, 8));
    if (k < len) _mm256_store_ps(dst + k, f_load(type, row, k0 + k, len - k));
}

/* RG rows (weights in wb, stride XT_COLS) x TV vectors of 8 tokens over len columns of xt
 * (stride ts floats per column), into the tile (stride XT_TOKENS): stored when first, else added. */
INLINE void xt_micro(int RG, int TV, const float * wb, const float * xt, int64_t ts, int64_t len, float * tile, int first) {
    __m256 acc[12];
    for (int i = 0; i < RG * TV; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t k = 0; k < len; k++) {
        __m256 xv[3];
        for (int v = 0; v < TV; v++) xv[v] = _mm256_load_ps(xt + (size_t)k * ts + 8 * v);
        for (int i = 0; i < RG; i++) {
            const __m256 wv = _mm256_broadcast_ss(wb + i * XT_COLS + k);
            for (int v = 0; v < TV; v++) acc[i * TV + v] = _mm256_fmadd_ps(wv, xv[v], acc[i * TV + v]);
        }
    }
    for (int i = 0; i < RG; i++) {
        for (int v = 0; v < TV; v++) {
            float * out = tile + i * XT_TOKENS + 8 * v;
            _mm256_store_ps(out, first ? acc[i * TV + v] : _mm256_add_ps(acc[i * TV + v], _mm256_load_ps(out)));
        }
    }
}

/* The token vectors [0, nv) of RG rows, 3 at a time. */
INLINE void xt_group(int RG, const float * wb, const float * xt, int64_t ts, int64_t len, int nv, float * tile, int first) {
    int v = 0;
    for (; v + 3 <= nv; v += 3) xt_micro(RG, 3, wb, xt + 8 * v, ts, len, tile + 8 * v, first);
    if (nv - v == 2) xt_micro(RG, 2, wb, xt + 8 * v, ts, len, tile + 8 * v, first);
    if (nv - v == 1) xt_micro(RG, 1, wb, xt + 8 * v, ts, len, tile + 8 * v, first);
}

INLINE void f_matmul_xt(int type, const uint8_t * w, size_t row_bytes, int64_t n, const float * x, int T, float * y,
                        int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t ts = x86_round16(T);
    float wbuf[XT_RG * XT_COLS] __attribute__((aligned(32)));
    float tile[XT_ROWS * XT_TOKENS] __attribute__((aligned(32)));
    for (int64_t t0 = 0; t0 < T; t0 += XT_TOKENS) {
        const int64_t tn = T - t0 < XT_TOKENS ? T - t0 : XT_TOKENS;
        const int nv = (int)((tn + 7) / 8);
        for (int64_t c0 = 0; c0 < n; c0 += XT_CHUNK) {
            const int64_t c1 = c0 + XT_CHUNK < n ? c0 + XT_CHUNK : n;
            for (int64_t rb = r0; rb < r1; rb += XT_ROWS) {
                const int64_t nr = r1 - rb < XT_ROWS ? r1 - rb : XT_ROWS;
                for (int64_t k0 = c0; k0 < c1; k0 += XT_COLS) {
                    const int64_t len = c1 - k0 < XT_COLS ? c1 - k0 : XT_COLS;
                    const float * xt = x + (size_t)k0 * ts + t0;
                    for (int64_t g = 0; g < nr; g += XT_RG) {
                        const int64_t ng = nr - g < XT_RG ? nr - g : XT_RG;
                        for (int64_t i = 0; i < ng; i++) {
                            xt_convert(type, wbuf + i * XT_COLS, w + (size_t)(rb + g + i) * row_bytes, k0, len);
                        }
                        x86_xt_prefetch_next(type, w, row_bytes, rb, nr, g, XT_RG, k0, XT_COLS, c1);
                        /* a short last group keeps its rows in one pass */
                        switch (ng) {
                        case 1: xt_group(1, wbuf, xt, ts, len, nv, tile + g * XT_TOKENS, k0 == c0); break;
                        case 2: xt_group(2, wbuf, xt, ts, len, nv, tile + g * XT_TOKENS, k0 == c0); break;
                        case 3: xt_group(3, wbuf, xt, ts, len, nv, tile + g * XT_TOKENS, k0 == c0); break;
                        default: xt_group(XT_RG, wbuf, xt, ts, len, nv, tile + g * XT_TOKENS, k0 == c0); break;
                        }
                    }
                }
                for (int64_t t = 0; t < tn; t++) {
                    float * out = y + (size_t)(t0 + t) * ldy + rb;
                    if (c0 == 0) {
                        for (int64_t i = 0; i < nr; i++) out[i] = tile[i * XT_TOKENS + t];
                    } else {
                        for (int64_t i = 0; i < nr; i++) out[i] += tile[i * XT_TOKENS + t];
                    }
                }
            }
        }
    }
}

INLINE void f_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                     int64_t ldy, int64_t r0, int64_t r1) {
    const float * x = (const float *)xp;
    if (T >= X86_XT_MIN_T) {
        f_matmul_xt(type, w, row_bytes, n, x, T, y, ldy, r0, r1);
        return;
    }
    const int64_t ns = x86_round16(n);
    const int64_t chunk = T > TOKS ? F_COLS_CHUNK : n;
    for (int64_t k0 = 0; k0 < n; k0 += chunk) {
        const int64_t k1 = k0 + chunk < n ? k0 + chunk : n;
        const int first = k0 == 0;
        for (int64_t r = r0; r < r1;) {
            /* decode too: one row's single chain of dependent multiply-adds bound FP16 decode to
             * 13 GB/s in L2 (29 GB/s with 4 rows; from memory 6.5 -> 13.8, Q8_0 7.2 -> 9.7), and
             * each row's sum keeps its order, so a token decodes as it does within a batch */
            const int R = r1 - r >= ROWS ? ROWS : 1;
            int t = 0;
            if (R == ROWS) {
                for (; t + 2 <= T; t += 2) f_tile(type, ROWS, 2, w, row_bytes, x, ns, r, t, k0, k1, first, y, ldy);
                for (; t < T; t++) f_tile(type, ROWS, 1, w, row_bytes, x, ns, r, t, k0, k1, first, y, ldy);
            } else {
                for (; t + 2 <= T; t += 2) f_tile(type, 1, 2, w, row_bytes, x, ns, r, t, k0, k1, first, y, ldy);
                for (; t < T; t++) f_tile(type, 1, 1, w, row_bytes, x, ns, r, t, k0, k1, first, y, ldy);
            }
            r += R;
        }
    }
}

X86_TARGET static void matmul_fp32(const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, int64_t ldy,
                        int64_t r0, int64_t r1) {
    f_matmul(TYPE_FP32, w, row_bytes, n, xp, T, y, ldy, r0, r1);
}

X86_TARGET static void matmul_fp16(const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, int64_t ldy,
                        int64_t r0, int64_t r1) {
    f_matmul(TYPE_FP16, w, row_bytes, n, xp, T, y, ldy, r0, r1);
}

X86_TARGET static void matmul_bf16(const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                                   int64_t ldy, int64_t r0, int64_t r1) {
    f_matmul(TYPE_BF16, w, row_bytes, n, xp, T, y, ldy, r0, r1);
}

X86_TARGET static void avx2_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                        int64_t ldy, int64_t r0, int64_t r1) {
    switch (type) {
    case TYPE_FP32: matmul_fp32(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_FP16: matmul_fp16(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q4_0: matmul_q4_0(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q4_1: matmul_q4_1(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q5_0: matmul_q5_0(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q5_1: matmul_q5_1(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q8_0: matmul_q8_0(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_BF16: matmul_bf16(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    default: kq_matmul_avx2(type, w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    }
}


const kernels kernels_avx2 = {
    .exp = x86_exp_array,
    .sigmoid = x86_sigmoid_array,
    .name = "avx2",
    .prepared_bytes = avx2_prepared_bytes,
    .prepare = avx2_prepare,
    .prepare_part = avx2_prepare_part,
    .matmul = avx2_matmul,
};

#endif /* __x86_64__ */
