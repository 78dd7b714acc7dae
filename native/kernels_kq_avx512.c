/*
 * kernels_kq_avx512.c: K-quant products with AVX-512 (F, BW, VL, DQ, VBMI) + VNNI, selected by
 * kernels_avx512.c for these types.
 *
 * Every type is first brought to the shared form of kquants.h by a type-specific unpacking
 * of a super-block into registers: four vectors of 64 unsigned codes in value order, and
 * per 16-value group a scale and a correction (16 lanes each). From there one code serves
 * all five types:
 *   decode    VPDPBUSD of 64 codes with 64 int8 activations gives 16 sums of 4 values;
 *             lane l of pair p belongs to group 4p + l/4, whose scale (times the activations'
 *             dx) one VPERMPS brings to the lane; one FMA per pair, one more per super-block
 *             for the corrections.
 *   sequence  16-row panels as for the 32-value types (kernels_avx512.c): one vector holds 4
 *             codes of each of 16 rows, VPDPBUSD with 4 activations of one token broadcast
 *             advances 16 row sums; per 16-value group, the rows' scales and corrections are
 *             two more vectors.
 */
#if defined(__x86_64__)

#include <immintrin.h>

#define KQ_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")))
#include "kernels_kq_x86.h"

enum { PREFETCH = 2048 };

KQ_INLINE __m512i nibbles(__m512i v, int high) {
    return _mm512_and_si512(high ? _mm512_srli_epi64(v, 4) : v, _mm512_set1_epi8(0x0f));
}

/* 32 bytes in both halves of a vector. */
KQ_INLINE __m512i twice(const uint8_t * p) { return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)); }

/* Shifts the upper 32 bytes right by `up` bits, the lower by `low` (within 64-bit lanes). */
KQ_INLINE __m512i shift_halves(__m512i v, int low, int up) {
    return _mm512_srlv_epi64(v, _mm512_setr_epi64(low, low, low, low, up, up, up, up));
}

/* The byte mask that selects bit `low` in the lower 32 bytes and bit `up` in the upper 32. */
KQ_INLINE __m512i bits_of_halves(int low, int up) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8((char)(1 << low))), _mm256_set1_epi8((char)(1 << up)), 1);
}

/* One super-block's codes: values 64p .. 64p + 63 in code[p]. */
KQ_INLINE void kq_unpack_codes(int type, const uint8_t * b, __m512i code[4]) {
    switch (type) {
    case TYPE_Q4_K:
        for (int p = 0; p < 4; p++) code[p] = _mm512_and_si512(shift_halves(twice(b + 16 + 32 * p), 0, 4), _mm512_set1_epi8(0x0f));
        break;
    case TYPE_Q5_K: {
        const __m512i qh = twice(b + 16);
        for (int p = 0; p < 4; p++) {
            const __m512i v = _mm512_and_si512(shift_halves(twice(b + 48 + 32 * p), 0, 4), _mm512_set1_epi8(0x0f));
            const __mmask64 high = _mm512_test_epi8_mask(qh, bits_of_halves(2 * p, 2 * p + 1));
            code[p] = _mm512_mask_add_epi8(v, high, v, _mm512_set1_epi8(0x10));
        }
        break;
    }
    case TYPE_Q6_K:
        for (int h = 0; h < 2; h++) {
            const __m512i low = _mm512_loadu_si512((const void *)(b + 64 * h));
            const __m512i qh = twice(b + 128 + 32 * h);
            const __m512i hi0 = _mm512_and_si512(_mm512_sllv_epi64(qh, _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2)), _mm512_set1_epi8(0x30));
            const __m512i hi1 = _mm512_and_si512(shift_halves(qh, 0, 2), _mm512_set1_epi8(0x30));
            code[2 * h] = _mm512_or_si512(nibbles(low, 0), hi0);
            code[2 * h + 1] = _mm512_or_si512(nibbles(low, 1), hi1);
        }
        break;
    case TYPE_Q2_K:
        for (int p = 0; p < 4; p++) {
            const int h = p / 2, s = 2 * (p % 2);
            code[p] = _mm512_and_si512(shift_halves(twice(b + 16 + 32 * h), 2 * s, 2 * s + 2), _mm512_set1_epi8(3));
        }
        break;
    case TYPE_Q3_K: {
        const __m512i hm = twice(b);
        for (int p = 0; p < 4; p++) {
            const int h = p / 2, s = 2 * (p % 2);
            const __m512i low = _mm512_and_si512(shift_halves(twice(b + 32 + 32 * h), 2 * s, 2 * s + 2), _mm512_set1_epi8(3));
            const __mmask64 high = _mm512_test_epi8_mask(hm, bits_of_halves(4 * h + s, 4 * h + s + 1));
            code[p] = _mm512_mask_add_epi8(low, high, low, _mm512_set1_epi8(4));
        }
        break;
    }
    }
}

static const int32_t GROUP_PAIRS[16] __attribute__((aligned(64))) = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7};

/* One super-block's scales and corrections, lane g for group g. */
/* Q4_K / Q5_K: [d sc_0..7, dmin m_0..7], the 32-value sub-blocks' scales and minimums. */
KQ_INLINE __m512 kq_scales_mins_512(const uint8_t * b) {
    const __m512 sm = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(kq_scales_mins_4k(b + 4)));
    const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load_u32(b))); /* d, dmin */
    const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_mul_ps(sm, _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(dd)));
}

KQ_INLINE void kq_unpack_scales(int type, const uint8_t * b, __m512 * scale, __m512 * corr) {
    switch (type) {
    case TYPE_Q4_K:
    case TYPE_Q5_K: {
        const __m512 v = kq_scales_mins_512(b);
        const __m512i pairs = _mm512_load_si512((const void *)GROUP_PAIRS);
        *scale = _mm512_permutexvar_ps(pairs, v);
        *corr = _mm512_permutexvar_ps(_mm512_add_epi32(pairs, _mm512_set1_epi32(8)), v);
        break;
    }
    case TYPE_Q6_K: {
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 192))));
        *scale = _mm512_mul_ps(sc, _mm512_set1_ps(_cvtsh_ss(load_u16(b + 208))));
        *corr = _mm512_mul_ps(*scale, _mm512_set1_ps(32.0f));
        break;
    }
    case TYPE_Q2_K: {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
        *scale = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15))), _mm512_set1_ps(_cvtsh_ss(load_u16(b + 80))));
        *corr = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), _mm512_set1_ps(_cvtsh_ss(load_u16(b + 82))));
        break;
    }
    case TYPE_Q3_K: {
        const __m512i v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(kq_scales_3k(b + 96)), _mm512_set1_epi32(32));
        *scale = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(_cvtsh_ss(load_u16(b + 108))));
        *corr = _mm512_mul_ps(*scale, _mm512_set1_ps(4.0f));
        break;
    }
    }
}

/* ---- decode ---- */

/* lane l of pair p: group 4p + l / 4 */
static const int32_t LANE_GROUPS[4][16] __attribute__((aligned(64))) = {
    {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
    {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
    {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
    {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15},
};

/* lane l of pair p: sub-block 2p + l / 8 (the types of 32-value sub-blocks) */
static const int32_t LANE_SUBBLOCKS[4][16] __attribute__((aligned(64))) = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
};

/* Q4_K, Q5_K: one vector [d sc_j dx_j (j < 8), dmin m_j dx_j sum_j] per super-block serves all
 * four pairs (a permute each) and the minimums (the upper half, summed at the end). */
KQ_INLINE float kq_row_decode_32(int type, const uint8_t * row, int64_t nsb, const kq_token * x) {
    const size_t bb = type_block_bytes(type);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), corr_acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const uint8_t * b = row + (size_t)s * bb;
        _mm_prefetch((const char *)(b + PREFETCH), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + PREFETCH + 64), _MM_HINT_T0);
        kq_prefetch_l2(b, bb);
        __m512i code[4];
        kq_unpack_codes(type, b, code);
        const __m512 eff = _mm512_mul_ps(kq_scales_mins_512(b), _mm512_loadu_ps(x->dxs32 + s * 16));
        corr_acc = _mm512_mask_add_ps(corr_acc, 0xff00, corr_acc, eff);
        const int8_t * xq = x->code + s * QKK;
        for (int p = 0; p < 4; p += 2) {
            const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), code[p], _mm512_loadu_si512((const void *)(xq + 64 * p)));
            const __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), code[p + 1], _mm512_loadu_si512((const void *)(xq + 64 * p + 64)));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_permutexvar_ps(_mm512_load_si512((const void *)LANE_SUBBLOCKS[p]), eff), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_permutexvar_ps(_mm512_load_si512((const void *)LANE_SUBBLOCKS[p + 1]), eff), acc1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_sub_ps(_mm512_add_ps(acc0, acc1), corr_acc));
}

/* dot(row, x) for one token. */
KQ_INLINE float kq_row_decode(int type, const uint8_t * row, int64_t nsb, const kq_token * x) {
    if (type == TYPE_Q4_K || type == TYPE_Q5_K) return kq_row_decode_32(type, row, nsb, x);
    const size_t bb = type_block_bytes(type);
    const int offset = kq_offset(type) != 0;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), corr_acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const uint8_t * b = row + (size_t)s * bb;
        _mm_prefetch((const char *)(b + PREFETCH), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + PREFETCH + 64), _MM_HINT_T0);
        kq_prefetch_l2(b, bb);
        __m512i code[4];
        __m512 scale, corr;
        kq_unpack_codes(type, b, code);
        kq_unpack_scales(type, b, &scale, &corr);
        const __m512 eff = _mm512_mul_ps(scale, _mm512_loadu_ps(x->dx + s * 16));
        if (!offset) corr_acc = _mm512_fmadd_ps(corr, _mm512_loadu_ps(x->xs + s * 16), corr_acc);
        const int8_t * xq = x->code + s * QKK;
        const int32_t * bias = x->bias4 + s * 64;
        for (int p = 0; p < 4; p += 2) {
            const __m512i z0 = offset ? _mm512_loadu_si512((const void *)(bias + 16 * p)) : _mm512_setzero_si512();
            const __m512i z1 = offset ? _mm512_loadu_si512((const void *)(bias + 16 * p + 16)) : _mm512_setzero_si512();
            const __m512i d0 = _mm512_dpbusd_epi32(z0, code[p], _mm512_loadu_si512((const void *)(xq + 64 * p)));
            const __m512i d1 = _mm512_dpbusd_epi32(z1, code[p + 1], _mm512_loadu_si512((const void *)(xq + 64 * p + 64)));
            acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_permutexvar_ps(_mm512_load_si512((const void *)LANE_GROUPS[p]), eff), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_permutexvar_ps(_mm512_load_si512((const void *)LANE_GROUPS[p + 1]), eff), acc1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_sub_ps(_mm512_add_ps(acc0, acc1), corr_acc));
}

/* ---- sequence mode: 16-row panels ---- */

enum { PANEL_SB = 2, PANEL_TOKENS = 8 };

typedef struct kq_panel {
    __m512i code[PANEL_SB * 64]; /* [4-value group] -> dword i = row i */
    __m512 scale[PANEL_SB * 16]; /* [16-value group] -> lane i = row i */
    __m512 corr[PANEL_SB * 16];
} kq_panel;

/* 16 x 16 dword transpose (as in kernels_avx512.c): out[j] lane i = in[i] lane j. */
KQ_INLINE void kq_transpose16(__m512i v[16]) {
    __m512i a[16], b[16];
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i s0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), s1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xee);
        const __m512i s2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44), s3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xee);
        v[c] = _mm512_shuffle_i32x4(s0, s2, 0x88);
        v[4 + c] = _mm512_shuffle_i32x4(s0, s2, 0xdd);
        v[8 + c] = _mm512_shuffle_i32x4(s1, s3, 0x88);
        v[12 + c] = _mm512_shuffle_i32x4(s1, s3, 0xdd);
    }
}

/* The panel's per-group factors: for Q4_K / Q5_K one per 32-value sub-block (8 per
 * super-block, the scale and minimum), for the others one per 16-value group. */
KQ_INLINE int kq_group_values(int type) { return type == TYPE_Q4_K || type == TYPE_Q5_K ? 32 : 16; }

KQ_INLINE void kq_panel_fill(int type, kq_panel * panel, const uint8_t * w, size_t row_bytes, int64_t r, int nr, int64_t s0,
                             int ns) {
    const size_t bb = type_block_bytes(type);
    const int groups = QKK / kq_group_values(type);
    float * scale = (float *)panel->scale;
    float * corr = (float *)panel->corr;
    for (int s = 0; s < ns; s++) {
        __m512i code[16][4];
        for (int i = 0; i < 16; i++) {
            if (i >= nr) {
                for (int p = 0; p < 4; p++) code[i][p] = _mm512_setzero_si512();
                for (int g = 0; g < groups; g++) scale[(s * groups + g) * 16 + i] = corr[(s * groups + g) * 16 + i] = 0.0f;
                continue;
            }
            const uint8_t * b = w + (size_t)(r + i) * row_bytes + (size_t)(s0 + s) * bb;
            kq_unpack_codes(type, b, code[i]);
            float sv[16], cv[16];
            if (groups == 8) { /* [d sc_0..7, dmin m_0..7] */
                _mm512_storeu_ps(sv, kq_scales_mins_512(b));
                memcpy(cv, sv + 8, 8 * sizeof(float));
            } else {
                __m512 sc, co;
                kq_unpack_scales(type, b, &sc, &co);
                _mm512_storeu_ps(sv, sc);
                _mm512_storeu_ps(cv, co);
            }
            for (int g = 0; g < groups; g++) {
                scale[(s * groups + g) * 16 + i] = sv[g];
                corr[(s * groups + g) * 16 + i] = cv[g];
            }
        }
        for (int p = 0; p < 4; p++) {
            __m512i v[16];
            for (int i = 0; i < 16; i++) v[i] = code[i][p];
            kq_transpose16(v); /* v[j]: dword j (values 4j .. 4j + 3 of the pair) of each row */
            for (int j = 0; j < 16; j++) panel->code[s * 64 + p * 16 + j] = v[j];
        }
    }
}

/* y rows [r, r + nr) of tokens [t, t + TT) (+)= the panel's super-blocks times the tokens.
 * Per group (GV values, one scale per row): GV / 4 VPDPBUSD per token into one integer sum,
 * then the scale times the token's dx, and the minimum times its sum (types with minimums);
 * the offsets of Q6_K / Q3_K start the integer sum. */
KQ_INLINE void kq_panel_apply(int type, int TT, const kq_panel * panel, int ns, const void * xp, int64_t n, int64_t s0, int t,
                              int64_t r, int nr, int first, float * y, int64_t ldy) {
    const int offset = kq_offset(type) != 0;
    const int gv = kq_group_values(type), groups = QKK / gv;
    kq_token x[PANEL_TOKENS];
    for (int j = 0; j < TT; j++) x[j] = kq_token_at(xp, n, t + j);
    __m512 acc[PANEL_TOKENS];
    for (int j = 0; j < TT; j++) acc[j] = _mm512_setzero_ps();
    for (int g = 0; g < ns * groups; g++) {
        const int64_t sb = s0 + g / groups, in_sb = g % groups; /* super-block in the row, group in it */
        __m512i dot[PANEL_TOKENS];
        for (int j = 0; j < TT; j++) dot[j] = offset ? _mm512_set1_epi32(x[j].bias16[sb * 16 + in_sb]) : _mm512_setzero_si512();
        for (int k = 0; k < gv / 4; k++) {
            const __m512i code = panel->code[g * (gv / 4) + k];
            for (int j = 0; j < TT; j++) {
                const int8_t * xq = x[j].code + sb * QKK + in_sb * gv + k * 4;
                dot[j] = _mm512_dpbusd_epi32(dot[j], code, _mm512_set1_epi32((int32_t)load_u32(xq)));
            }
        }
        const __m512 scale = panel->scale[g];
        for (int j = 0; j < TT; j++) {
            float dx, xs;
            if (gv == 32) {
                dx = x[j].dxs32[sb * 16 + in_sb];
                xs = x[j].dxs32[sb * 16 + 8 + in_sb];
            } else {
                dx = x[j].dx[sb * 16 + in_sb];
                xs = x[j].xs[sb * 16 + in_sb];
            }
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[j]), _mm512_mul_ps(scale, _mm512_set1_ps(dx)), acc[j]);
            if (!offset) acc[j] = _mm512_fnmadd_ps(panel->corr[g], _mm512_set1_ps(xs), acc[j]);
        }
    }
    const __mmask16 mask = (__mmask16)((1u << nr) - 1);
    for (int j = 0; j < TT; j++) {
        float * out = y + (size_t)(t + j) * ldy + r;
        __m512 v = acc[j];
        if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, out));
        _mm512_mask_storeu_ps(out, mask, v);
    }
}

KQ_INLINE void kq_matmul_panels(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                                int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nsb = n / QKK;
    kq_panel panel;
    for (int64_t s0 = 0; s0 < nsb; s0 += PANEL_SB) {
        const int ns = nsb - s0 < PANEL_SB ? (int)(nsb - s0) : PANEL_SB;
        const int first = s0 == 0;
        for (int64_t r = r0; r < r1; r += 16) {
            const int nr = r1 - r < 16 ? (int)(r1 - r) : 16;
            kq_panel_fill(type, &panel, w, row_bytes, r, nr, s0, ns);
            int t = 0;
            for (; t + 8 <= T; t += 8) kq_panel_apply(type, 8, &panel, ns, xp, n, s0, t, r, nr, first, y, ldy);
            for (; t + 4 <= T; t += 4) kq_panel_apply(type, 4, &panel, ns, xp, n, s0, t, r, nr, first, y, ldy);
            for (; t < T; t++) kq_panel_apply(type, 1, &panel, ns, xp, n, s0, t, r, nr, first, y, ldy);
        }
    }
}

enum { KQ_PANEL_MIN_T = 4 }; /* tokens from which the panels pay */

KQ_INLINE void kq_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, int64_t ldy,
                         int64_t r0, int64_t r1) {
    if (T >= KQ_PANEL_MIN_T) {
        kq_matmul_panels(type, w, row_bytes, n, xp, T, y, ldy, r0, r1);
        return;
    }
    const int64_t nsb = n / QKK;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * row = w + (size_t)r * row_bytes;
        for (int t = 0; t < T; t++) {
            const kq_token x = kq_token_at(xp, n, t);
            y[(size_t)t * ldy + r] = kq_row_decode(type, row, nsb, &x);
        }
    }
}

#define KQ_MATMUL(NAME, TYPE)                                                                                                     \
    KQ_TARGET static void NAME(const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, int64_t ldy, \
                               int64_t r0, int64_t r1) {                                                                         \
        kq_matmul(TYPE, w, row_bytes, n, xp, T, y, ldy, r0, r1);                                                                 \
    }
KQ_MATMUL(matmul_q2_k, TYPE_Q2_K)
KQ_MATMUL(matmul_q3_k, TYPE_Q3_K)
KQ_MATMUL(matmul_q4_k, TYPE_Q4_K)
KQ_MATMUL(matmul_q5_k, TYPE_Q5_K)
KQ_MATMUL(matmul_q6_k, TYPE_Q6_K)

KQ_TARGET void kq_matmul_avx512(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                                int64_t ldy, int64_t r0, int64_t r1) {
    switch (type) {
    case TYPE_Q2_K: matmul_q2_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q3_K: matmul_q3_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q4_K: matmul_q4_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q5_K: matmul_q5_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    case TYPE_Q6_K: matmul_q6_k(w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    }
}

#endif /* __x86_64__ */
