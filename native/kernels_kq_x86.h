/*
 * kernels_kq_x86.h: what the AVX2 and AVX-512 K-quant kernels share: the activations'
 * preparation (the layout of kquants.h, the same numbers as kq_prepare_scalar) and the
 * unpacking of the packed sub-block scales. The including file defines KQ_TARGET, its target
 * attribute, first; AVX2 is the floor.
 */
#ifndef RWKV_KERNELS_KQ_X86_H
#define RWKV_KERNELS_KQ_X86_H

#include <float.h>
#include <immintrin.h>
#include <math.h>

#include "kquants.h"

#ifndef KQ_TARGET
#error "define KQ_TARGET (the including file's target attribute) before including kernels_kq_x86.h"
#endif
#define KQ_INLINE static inline __attribute__((always_inline)) KQ_TARGET

/* A decoded super-block's lines KQ_PREFETCH_L2 bytes ahead into L2 (each kernel file fetches
 * its own nearer lines into L1; kernels_x86.h's x86_prefetch_lines, which these files do not
 * include, does the same for the other decode rows): 1.5B-shape GGUF decode, AVX-512, Q6_K 1.1x, Q4_K 1.02-1.06x;
 * at the 169M shape 1.13-1.35x on both paths. */
enum { KQ_PREFETCH_L2 = 6144 };

KQ_INLINE void kq_prefetch_l2(const uint8_t * b, size_t bb) {
    for (size_t at = 0; at < bb; at += 64) _mm_prefetch((const char *)(b + KQ_PREFETCH_L2 + at), _MM_HINT_T1);
}

KQ_INLINE int32_t kq_hmax8_epi32(__m256i v) {
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(m);
}

KQ_INLINE int32_t kq_hsum_epi32(__m128i s) {
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* One 32-value block of x (all 32 readable) to codes, dx, xs and (offset != 0) the biases. */
KQ_INLINE void kq_quantize_block(const float * x, int8_t * q, float * dx, float * xs, int32_t * bias16, int32_t * bias4, float * dx32,
                                 float * xs32, int offset) {
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
    const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    /* |x| compared as integers: NaN patterns sort above infinity, above every finite value */
    const __m256i a = _mm256_max_epi32(
        _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(v0), magnitude), _mm256_and_si256(_mm256_castps_si256(v1), magnitude)),
        _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(v2), magnitude), _mm256_and_si256(_mm256_castps_si256(v3), magnitude)));
    const int32_t amax_bits = kq_hmax8_epi32(a);
    if (amax_bits >= 0x7f800000) {
        memset(q, 0, 32);
        dx[0] = dx[1] = xs[0] = xs[1] = *dx32 = *xs32 = NAN;
        if (offset) {
            bias16[0] = bias16[1] = 0;
            memset(bias4, 0, 8 * sizeof(int32_t));
        }
        return;
    }
    float amax;
    memcpy(&amax, &amax_bits, sizeof amax);
    const float d = amax / 127.0f;
    const __m256 id = _mm256_set1_ps(d >= FLT_MIN ? 1.0f / d : 0.0f);
    const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, id)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, id));
    const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, id)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, id));
    const __m256i lo = _mm256_add_epi32(i0, i1), hi = _mm256_add_epi32(i2, i3);
    const int32_t s0 = kq_hsum_epi32(_mm_add_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1)));
    const int32_t s1 = kq_hsum_epi32(_mm_add_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1)));
    /* packs work within 128-bit lanes; the permute puts the 4-value groups back in order */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    dx[0] = dx[1] = *dx32 = d;
    xs[0] = d * (float)s0;
    xs[1] = d * (float)s1;
    *xs32 = d * (float)(s0 + s1);
    if (offset) {
        bias16[0] = -offset * s0;
        bias16[1] = -offset * s1;
        /* sums of 4 consecutive codes: pairs by VPMADDUBSW with ones, then pairs of pairs */
        const __m256i sums4 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(1));
        _mm256_storeu_si256((__m256i *)bias4, _mm256_mullo_epi32(sums4, _mm256_set1_epi32(-offset)));
    }
}

KQ_INLINE void kq_prepare_x86(int type, const float * x, int64_t n, int T, void * dst) {
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
            float * d32 = dxs32 + (b / 8) * 16 + b % 8;
            kq_quantize_block(src, code + b * 32, dx + 2 * b, xs + 2 * b, bias16 + 2 * b, bias4 + 8 * b, d32, d32 + 8, offset);
        }
    }
}

/* Q4_K / Q5_K: the 8 six-bit scales and the 8 minimums as bytes [sc_0..7, m_0..7], from the
 * 12 bytes at s (16 bytes are read: s lies 4 bytes into a 144- or 176-byte block). */
KQ_INLINE __m128i kq_scales_mins_4k(const uint8_t * s) {
    const __m128i v = _mm_loadu_si128((const __m128i *)s);
    /* low parts: sc_0..3 = s0..3, sc_4..7 from s8..11, m_0..3 = s4..7, m_4..7 from s8..11 (high nibbles) */
    const __m128i a = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    /* the top 2 bits of s0..3 (for sc_4..7) and s4..7 (for m_4..7) */
    const __m128i b = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    const __m128i upper = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1);
    const __m128i low = _mm_and_si128(_mm_blendv_epi8(a, _mm_srli_epi16(a, 4), upper),
                                      _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
    return _mm_or_si128(low, _mm_and_si128(_mm_srli_epi16(b, 2), _mm_set1_epi8(0x30)));
}

/* Q4_K / Q5_K: the 8 six-bit scales (bytes 0..7 of *sc) and minimums (*mn) from scales[12]. */
KQ_INLINE void kq_scales_4k(const uint8_t * s, uint64_t * sc, uint64_t * mn) {
    const uint32_t a0 = load_u32(s), a1 = load_u32(s + 4), a2 = load_u32(s + 8);
    const uint32_t sc_lo = a0 & 0x3f3f3f3fu, mn_lo = a1 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (a2 & 0x0f0f0f0fu) | ((a0 >> 2) & 0x30303030u);
    const uint32_t mn_hi = ((a2 >> 4) & 0x0f0f0f0fu) | ((a1 >> 2) & 0x30303030u);
    *sc = (uint64_t)sc_lo | (uint64_t)sc_hi << 32;
    *mn = (uint64_t)mn_lo | (uint64_t)mn_hi << 32;
}

/* Q3_K: the 16 six-bit scales (still biased by 32) as bytes, from scales[12]. */
KQ_INLINE __m128i kq_scales_3k(const uint8_t * s) {
    const uint32_t a0 = load_u32(s), a1 = load_u32(s + 4), a2 = load_u32(s + 8);
    const uint32_t s0 = (a0 & 0x0f0f0f0fu) | ((a2 << 4) & 0x30303030u);
    const uint32_t s1 = (a1 & 0x0f0f0f0fu) | ((a2 << 2) & 0x30303030u);
    const uint32_t s2 = ((a0 >> 4) & 0x0f0f0f0fu) | (a2 & 0x30303030u);
    const uint32_t s3 = ((a1 >> 4) & 0x0f0f0f0fu) | ((a2 >> 2) & 0x30303030u);
    return _mm_setr_epi32((int)s0, (int)s1, (int)s2, (int)s3);
}

#endif /* RWKV_KERNELS_KQ_X86_H */
