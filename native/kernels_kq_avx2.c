/*
 * kernels_kq_avx2.c: K-quant products with AVX2 + FMA + F16C, selected by kernels_avx2.c for
 * these types (and the activations' preparation of the AVX-512 path too: the layout is one).
 *
 * As in kernels_kq_avx512.c, each type is unpacked to the shared form of kquants.h: eight
 * vectors of 32 unsigned codes in value order, and 16 per-group scales and corrections (two
 * vectors each). Codes meet int8 activations by VPMADDUBSW (u8 x s8 -> pairs of s16; codes
 * below 64 cannot saturate it) and VPMADDWD.
 *   decode    per 32 values: 8 sums of 4 values, lane l of chunk q belonging to group
 *             2q + l/4, its scale brought to the lane by VPERMPS; one FMA per chunk.
 *   sequence  8-row panels: one vector holds 4 codes of each of 8 rows; the 16-bit products
 *             of up to 4 groups (2 for Q6_K's 6-bit codes) add up before widening.
 */
#if defined(__x86_64__)

#include <immintrin.h>

#define KQ_TARGET __attribute__((target("avx2,fma,f16c")))
#include "kernels_kq_x86.h"

KQ_TARGET void kq_prepare_avx2(int type, const float * x, int64_t n, int T, void * dst) { kq_prepare_x86(type, x, n, T, dst); }

KQ_INLINE __m256i load32(const uint8_t * p) { return _mm256_loadu_si256((const __m256i *)p); }
KQ_INLINE __m256i mask8(__m256i v, int m) { return _mm256_and_si256(v, _mm256_set1_epi8((char)m)); }

/* 0xff in the bytes of v that have bit `bit` set */
KQ_INLINE __m256i bit_set(__m256i v, int bit) {
    const __m256i b = _mm256_set1_epi8((char)(1 << bit));
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, b), b);
}

KQ_INLINE void kq_unpack_codes(int type, const uint8_t * b, __m256i code[8]) {
    switch (type) {
    case TYPE_Q4_K:
        for (int p = 0; p < 4; p++) {
            const __m256i q = load32(b + 16 + 32 * p);
            code[2 * p] = mask8(q, 0x0f);
            code[2 * p + 1] = mask8(_mm256_srli_epi16(q, 4), 0x0f);
        }
        break;
    case TYPE_Q5_K: {
        const __m256i qh = load32(b + 16);
        for (int p = 0; p < 4; p++) {
            const __m256i q = load32(b + 48 + 32 * p);
            code[2 * p] = _mm256_or_si256(mask8(q, 0x0f), mask8(bit_set(qh, 2 * p), 0x10));
            code[2 * p + 1] = _mm256_or_si256(mask8(_mm256_srli_epi16(q, 4), 0x0f), mask8(bit_set(qh, 2 * p + 1), 0x10));
        }
        break;
    }
    case TYPE_Q6_K:
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = load32(b + 64 * h), l1 = load32(b + 64 * h + 32), qh = load32(b + 128 + 32 * h);
            code[4 * h] = _mm256_or_si256(mask8(l0, 0x0f), mask8(_mm256_slli_epi16(qh, 4), 0x30));
            code[4 * h + 1] = _mm256_or_si256(mask8(l1, 0x0f), mask8(_mm256_slli_epi16(qh, 2), 0x30));
            code[4 * h + 2] = _mm256_or_si256(mask8(_mm256_srli_epi16(l0, 4), 0x0f), mask8(qh, 0x30));
            code[4 * h + 3] = _mm256_or_si256(mask8(_mm256_srli_epi16(l1, 4), 0x0f), mask8(_mm256_srli_epi16(qh, 2), 0x30));
        }
        break;
    case TYPE_Q2_K:
        for (int h = 0; h < 2; h++) {
            const __m256i q = load32(b + 16 + 32 * h);
            code[4 * h] = mask8(q, 3);
            code[4 * h + 1] = mask8(_mm256_srli_epi16(q, 2), 3);
            code[4 * h + 2] = mask8(_mm256_srli_epi16(q, 4), 3);
            code[4 * h + 3] = mask8(_mm256_srli_epi16(q, 6), 3);
        }
        break;
    case TYPE_Q3_K: {
        const __m256i hm = load32(b);
        for (int h = 0; h < 2; h++) {
            const __m256i q = load32(b + 32 + 32 * h);
            for (int s = 0; s < 4; s++) {
                const __m256i low = mask8(s ? _mm256_srli_epi16(q, 2 * s) : q, 3);
                code[4 * h + s] = _mm256_or_si256(low, mask8(bit_set(hm, 4 * h + s), 4));
            }
        }
        break;
    }
    }
}

KQ_INLINE void kq_unpack_scales(int type, const uint8_t * b, __m256 scale[2], __m256 corr[2]) {
    switch (type) {
    case TYPE_Q4_K:
    case TYPE_Q5_K: {
        uint64_t sc, mn;
        kq_scales_4k(b + 4, &sc, &mn);
        const __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc))),
                                       _mm256_set1_ps(_cvtsh_ss(load_u16(b))));
        const __m256 m = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mn))),
                                       _mm256_set1_ps(_cvtsh_ss(load_u16(b + 2))));
        const __m256i lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
        scale[0] = _mm256_permutevar8x32_ps(s, lo);
        scale[1] = _mm256_permutevar8x32_ps(s, hi);
        corr[0] = _mm256_permutevar8x32_ps(m, lo);
        corr[1] = _mm256_permutevar8x32_ps(m, hi);
        break;
    }
    case TYPE_Q6_K: {
        const __m128i v = _mm_loadu_si128((const __m128i *)(b + 192));
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(b + 208)));
        scale[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), d);
        scale[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))), d);
        for (int i = 0; i < 2; i++) corr[i] = _mm256_mul_ps(scale[i], _mm256_set1_ps(32.0f));
        break;
    }
    case TYPE_Q2_K: {
        const __m128i v = _mm_loadu_si128((const __m128i *)b);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(b + 80))), dmin = _mm256_set1_ps(_cvtsh_ss(load_u16(b + 82)));
        for (int i = 0; i < 2; i++) {
            const __m256i w = _mm256_cvtepu8_epi32(i ? _mm_srli_si128(v, 8) : v);
            scale[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(w, _mm256_set1_epi32(15))), d);
            corr[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w, 4)), dmin);
        }
        break;
    }
    case TYPE_Q3_K: {
        const __m128i v = kq_scales_3k(b + 96);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(load_u16(b + 108)));
        for (int i = 0; i < 2; i++) {
            const __m256i w = _mm256_sub_epi32(_mm256_cvtepu8_epi32(i ? _mm_srli_si128(v, 8) : v), _mm256_set1_epi32(32));
            scale[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(w), d);
            corr[i] = _mm256_mul_ps(scale[i], _mm256_set1_ps(4.0f));
        }
        break;
    }
    }
}

KQ_INLINE __m256i dot32(__m256i code, const int8_t * x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(code, _mm256_loadu_si256((const __m256i *)x)), _mm256_set1_epi16(1));
}

KQ_INLINE float kq_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- decode ---- */

KQ_INLINE float kq_row_decode(int type, const uint8_t * row, int64_t nsb, const kq_token * x) {
    const size_t bb = type_block_bytes(type);
    const int offset = kq_offset(type) != 0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), corr_acc = _mm256_setzero_ps();
    for (int64_t s = 0; s < nsb; s++) {
        const uint8_t * b = row + (size_t)s * bb;
        _mm_prefetch((const char *)(b + 1024), _MM_HINT_T0);
        kq_prefetch_l2(b, bb);
        __m256i code[8];
        __m256 scale[2], corr[2];
        kq_unpack_codes(type, b, code);
        kq_unpack_scales(type, b, scale, corr);
        const float * d = x->dx + s * 16;
        if (!offset) {
            corr_acc = _mm256_fmadd_ps(corr[0], _mm256_loadu_ps(x->xs + s * 16), corr_acc);
            corr_acc = _mm256_fmadd_ps(corr[1], _mm256_loadu_ps(x->xs + s * 16 + 8), corr_acc);
        }
        const __m256 eff[2] = {_mm256_mul_ps(scale[0], _mm256_loadu_ps(d)), _mm256_mul_ps(scale[1], _mm256_loadu_ps(d + 8))};
        const int8_t * xq = x->code + s * QKK;
        const int32_t * bias = x->bias4 + s * 64;
        for (int q = 0; q < 8; q += 2) {
            const __m256i i0 = _mm256_setr_epi32(2 * (q % 4), 2 * (q % 4), 2 * (q % 4), 2 * (q % 4), 2 * (q % 4) + 1,
                                                 2 * (q % 4) + 1, 2 * (q % 4) + 1, 2 * (q % 4) + 1);
            const __m256i i1 = _mm256_add_epi32(i0, _mm256_set1_epi32(2));
            __m256i d0 = dot32(code[q], xq + 32 * q), d1 = dot32(code[q + 1], xq + 32 * q + 32);
            if (offset) {
                d0 = _mm256_add_epi32(d0, _mm256_loadu_si256((const __m256i *)(bias + 8 * q)));
                d1 = _mm256_add_epi32(d1, _mm256_loadu_si256((const __m256i *)(bias + 8 * q + 8)));
            }
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_permutevar8x32_ps(eff[q / 4], i0), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_permutevar8x32_ps(eff[q / 4], i1), acc1);
        }
    }
    return kq_hsum8(_mm256_sub_ps(_mm256_add_ps(acc0, acc1), corr_acc));
}

/* ---- sequence mode: 8-row panels ---- */

enum { PANEL_SB = 2, PANEL_TOKENS = 4 };

typedef struct kq_panel8 {
    __m256i code[PANEL_SB * 64]; /* [4-value group] -> dword i = row i */
    __m256 scale[PANEL_SB * 16]; /* [16-value group] -> lane i = row i */
    __m256 corr[PANEL_SB * 16];
} kq_panel8;

/* 8 x 8 dword transpose: out[j] lane i = in[i] lane j. */
KQ_INLINE void kq_transpose8(__m256i v[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 4; i++) {
        a[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
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

KQ_INLINE void kq_panel8_fill(int type, kq_panel8 * panel, const uint8_t * w, size_t row_bytes, int64_t r, int nr, int64_t s0,
                              int ns) {
    const size_t bb = type_block_bytes(type);
    float * scale = (float *)panel->scale;
    float * corr = (float *)panel->corr;
    for (int s = 0; s < ns; s++) {
        __m256i code[8][8];
        for (int i = 0; i < 8; i++) {
            if (i >= nr) {
                for (int q = 0; q < 8; q++) code[i][q] = _mm256_setzero_si256();
                for (int g = 0; g < 16; g++) scale[(s * 16 + g) * 8 + i] = corr[(s * 16 + g) * 8 + i] = 0.0f;
                continue;
            }
            const uint8_t * b = w + (size_t)(r + i) * row_bytes + (size_t)(s0 + s) * bb;
            kq_unpack_codes(type, b, code[i]);
            __m256 sc[2], co[2];
            kq_unpack_scales(type, b, sc, co);
            float sv[16], cv[16];
            _mm256_storeu_ps(sv, sc[0]);
            _mm256_storeu_ps(sv + 8, sc[1]);
            _mm256_storeu_ps(cv, co[0]);
            _mm256_storeu_ps(cv + 8, co[1]);
            for (int g = 0; g < 16; g++) {
                scale[(s * 16 + g) * 8 + i] = sv[g];
                corr[(s * 16 + g) * 8 + i] = cv[g];
            }
        }
        for (int q = 0; q < 8; q++) {
            __m256i v[8];
            for (int i = 0; i < 8; i++) v[i] = code[i][q];
            kq_transpose8(v); /* v[j]: values 32q + 4j .. + 3 of each row */
            for (int j = 0; j < 8; j++) panel->code[s * 64 + q * 8 + j] = v[j];
        }
    }
}

KQ_INLINE void kq_panel8_apply(int type, int TT, const kq_panel8 * panel, int ns, const void * xp, int64_t n, int64_t s0, int t,
                               int64_t r, int nr, int first, float * y, int64_t ldy) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int offset = kq_offset(type) != 0;
    const int run = type == TYPE_Q6_K ? 2 : 4; /* 4-value groups whose 16-bit products may add up */
    kq_token x[PANEL_TOKENS];
    for (int j = 0; j < TT; j++) x[j] = kq_token_at(xp, n, t + j);
    __m256 acc[PANEL_TOKENS];
    for (int j = 0; j < TT; j++) acc[j] = _mm256_setzero_ps();
    for (int g = 0; g < ns * 16; g++) {
        const int64_t group = s0 * 16 + g;
        __m256i dot[PANEL_TOKENS];
        for (int j = 0; j < TT; j++) dot[j] = offset ? _mm256_set1_epi32(x[j].bias16[group]) : _mm256_setzero_si256();
        for (int k0 = 0; k0 < 4; k0 += run) {
            __m256i sum16[PANEL_TOKENS];
            for (int k = k0; k < k0 + run; k++) {
                const __m256i code = panel->code[g * 4 + k];
                for (int j = 0; j < TT; j++) {
                    const __m256i p = _mm256_maddubs_epi16(code, _mm256_set1_epi32((int32_t)load_u32(x[j].code + group * 16 + k * 4)));
                    sum16[j] = k == k0 ? p : _mm256_add_epi16(sum16[j], p);
                }
            }
            for (int j = 0; j < TT; j++) dot[j] = _mm256_add_epi32(dot[j], _mm256_madd_epi16(sum16[j], ones));
        }
        const __m256 scale = panel->scale[g];
        for (int j = 0; j < TT; j++) {
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[j]), _mm256_mul_ps(scale, _mm256_set1_ps(x[j].dx[group])), acc[j]);
            if (!offset) acc[j] = _mm256_fnmadd_ps(panel->corr[g], _mm256_set1_ps(x[j].xs[group]), acc[j]);
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

KQ_INLINE void kq_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y, int64_t ldy,
                         int64_t r0, int64_t r1) {
    const int64_t nsb = n / QKK;
    if (T >= 4) {
        kq_panel8 panel;
        for (int64_t s0 = 0; s0 < nsb; s0 += PANEL_SB) {
            const int ns = nsb - s0 < PANEL_SB ? (int)(nsb - s0) : PANEL_SB;
            for (int64_t r = r0; r < r1; r += 8) {
                const int nr = r1 - r < 8 ? (int)(r1 - r) : 8;
                kq_panel8_fill(type, &panel, w, row_bytes, r, nr, s0, ns);
                int t = 0;
                for (; t + 4 <= T; t += 4) kq_panel8_apply(type, 4, &panel, ns, xp, n, s0, t, r, nr, s0 == 0, y, ldy);
                for (; t < T; t++) kq_panel8_apply(type, 1, &panel, ns, xp, n, s0, t, r, nr, s0 == 0, y, ldy);
            }
        }
        return;
    }
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

KQ_TARGET void kq_matmul_avx2(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
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
