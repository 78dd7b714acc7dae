/*
 * kernels_x86.h: what the AVX2 and AVX-512 kernel files share: the layout of prepared
 * activations and the code that prepares them. Included by kernels_avx2.c and
 * kernels_avx512.c, which first define X86_TARGET as their target attribute, so every
 * function here is compiled for the including file's instruction set (AVX2 is the floor).
 *
 * Prepared activations
 *   FP32 / FP16 / BF16 weights, up to X86_XT_MIN_T - 1 tokens: the T rows of x as float32,
 *   each padded with zeros to a multiple of 16 values (so the x side of a product never needs
 *   a masked load). From X86_XT_MIN_T tokens on (sequence mode), transposed: for each column
 *   k, the T tokens' values padded with zeros to a multiple of 16 (x86_round16(T) floats), so
 *   that one vector holds one column of 16 (AVX-512) or 8 (AVX2) tokens and a weight is
 *   broadcast against it: the weights then need no transposing, only converting.
 *   Quantized weights: x is quantized per 32-value block to int8 with a float scale
 *   (d = max|x| / 127, q = round(x / d)). Blocks go in pairs (one 64-byte vector of codes
 *   for AVX-512; AVX2 reads the halves). Per pair: float d[2] and int32 bias[2], where
 *   bias = -offset * sum(q) folds the weight code offset (8 for Q4_0, 16 for Q5_0, 128 for
 *   Q8_0 read as unsigned) into the integer dot product. Per block also
 *   s = d * sum(q), which the _1 types need for their per-block minimum: sum_j (c_j dw + m) x_j
 *   = dw dx sum_j c_j q_j + m s. A row with an odd number of blocks gets a zero block.
 *   Decode of the 4- and 5-bit types (fewer than XE_MAX_T tokens) orders the codes by
 *   nibble instead, in groups of 4 blocks a..d (zero blocks up to a whole group): 64 bytes of
 *   values 0-15 of a, b, c, d, then 64 bytes of values 16-31, the order in which one byte
 *   permute lays out those blocks' low and high nibbles (kernels_avx512.c, q5_group_decode;
 *   AVX2 reads it as pairs of blocks, kernels_avx2.c, q4_rows_decode).
 *   AVX-512 decode of Q4_0 and Q4_1 (X86_DECODE_RAW) orders the codes as the weight row
 *   stores its bytes instead, so that a 64-byte load of the row needs no permute: for each
 *   64 bytes of the row, 64 bytes of the activations of the low nibbles at the byte positions
 *   of the codes, then 64 of the high nibbles' (zeros at the block headers and past the row).
 */
#ifndef RWKV_KERNELS_X86_H
#define RWKV_KERNELS_X86_H

#include <float.h>
#include <immintrin.h>

#include "engine.h"

#ifndef X86_TARGET
#error "define X86_TARGET (the including file's target attribute) before including kernels_x86.h"
#endif
#define X86_INLINE static inline X86_TARGET
/* for helpers of the kernels' inner loops, whose constant arguments must fold */
#define X86_HOT static inline __attribute__((always_inline)) X86_TARGET

typedef struct xq_scale {
    float d[2];
    int32_t bias[2];
} xq_scale;

typedef struct xq_layout {
    int64_t nb;  /* blocks per row */
    int64_t np;  /* pairs of blocks per row */
    size_t qstride; /* bytes of codes per token: np pairs of 64, or (decode layouts) 128 per group of 4 blocks
                     * or per 64 bytes of a row */
    int raw;     /* decode layout in the row's byte order (X86_DECODE_RAW) */
    int64_t nbs; /* stride (floats) of the per-block s array, a multiple of 16 */
    size_t sc_off, s_off;
    size_t xe_off; /* decode (T < XE_MAX_T): per token d[nbs] and (float) bias[nbs]; 0 = none */
    size_t total;
} xq_layout;

enum { XE_MAX_T = 4 };

/* The decode layout of the 4- and 5-bit types (fewer than XE_MAX_T tokens) that a kernel
 * set asks for: by nibble (both paths), or in the row's byte order for Q4_0 and Q4_1
 * (AVX-512; its other types keep the nibble order). */
enum { X86_DECODE_NIBBLES = 1, X86_DECODE_RAW = 2 };

X86_INLINE size_t x86_align64(size_t v) { return (v + 63) & ~(size_t)63; }
X86_INLINE int64_t x86_round16(int64_t v) { return (v + 15) & ~(int64_t)15; }

X86_INLINE xq_layout xq_layout_of(int type, int64_t n, int T, int decode) {
    xq_layout L;
    L.nb = (n + QK - 1) / QK;
    L.np = (L.nb + 1) / 2;
    L.nbs = x86_round16(2 * L.np);
    L.raw = decode == X86_DECODE_RAW && T < XE_MAX_T && (type == TYPE_Q4_0 || type == TYPE_Q4_1);
    L.qstride = L.raw                    ? ((size_t)L.nb * q_block_bytes(type) + 63) / 64 * 128
                : decode && T < XE_MAX_T ? (size_t)((L.nb + 3) / 4) * 128
                                         : (size_t)L.np * 64;
    L.sc_off = x86_align64((size_t)T * L.qstride);
    L.s_off = x86_align64(L.sc_off + (size_t)T * (size_t)L.np * sizeof(xq_scale));
    L.xe_off = 0;
    L.total = L.s_off + (size_t)T * (size_t)L.nbs * sizeof(float);
    if (decode && T < XE_MAX_T) {
        L.xe_off = x86_align64(L.total);
        L.total = L.xe_off + (size_t)T * (size_t)L.nbs * 2 * sizeof(float);
    }
    L.total += 64;
    return L;
}

/* Tokens from which float activations are prepared transposed (see above). Below it, float
 * products keep decode's summation order per token (a batch of up to 16 sequences gives the
 * bits of decoding each alone). */
enum { X86_XT_MIN_T = 17 };

X86_INLINE size_t x86_prepared_bytes(int type, int64_t n, int T, int decode) {
    if (!type_is_quantized(type)) {
        const size_t rows = (size_t)T * (size_t)x86_round16(n), cols = (size_t)n * (size_t)x86_round16(T);
        return (rows > cols ? rows : cols) * sizeof(float) + 64;
    }
    size_t bytes = xq_layout_of(type, n, T, decode).total;
    /* a call with fewer tokens may use the decode layout */
    for (int t = 1; t < XE_MAX_T && t < T; t++) {
        const size_t b = xq_layout_of(type, n, t, decode).total;
        bytes = b > bytes ? b : bytes;
    }
    return bytes;
}

/* The offset a kernel subtracts from stored weight codes (Q8_0 depends on the kernel). */
X86_INLINE int x86_code_offset(int type, int q8_offset) {
    switch (type) {
    case TYPE_Q4_0: return 8;
    case TYPE_Q5_0: return 16;
    case TYPE_Q8_0: return q8_offset;
    default: return 0;
    }
}

/* The largest of 8 int32 lanes. */
X86_INLINE int32_t x86_hmax8_epi32(__m256i v) {
    __m128i m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(m);
}

X86_INLINE float x86_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

X86_INLINE int32_t x86_hsum8_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* Quantizes 32 floats to int8 codes q (round to nearest) with scale *d; returns sum(q);
 * *exact is the scale before rounding. half_scale: the scale is rounded to half precision
 * after the codes are chosen. rwkv.cpp's activations do that (and keep s = d * sum(q) in
 * half precision too); matching its arithmetic keeps our results on its side of the
 * published fixture limits (measured on the tiny fixtures: v7 Q4_1/Q5_1 failed otherwise).
 * Two kinds of block leave that arithmetic, identically on every kernel path: one holding a
 * NaN or an infinity (absurd weights upstream) gets zero codes and a NaN scale, so the
 * products it enters are NaN (converting NaN to int gives INT_MIN lanes, whose sums overflow);
 * one whose scale is below FLT_MIN (values under 1.5e-36) gets zero codes, as 1 / scale would
 * overflow to infinity. */
X86_INLINE int32_t x86_quantize_block(const float * x, int8_t * q, float * d, float * exact, int half_scale) {
    const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
    __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    /* |x| compared as integers: every NaN pattern sorts above infinity, above every finite value */
    const __m256i a = _mm256_max_epi32(
        _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(v0), magnitude), _mm256_and_si256(_mm256_castps_si256(v1), magnitude)),
        _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(v2), magnitude), _mm256_and_si256(_mm256_castps_si256(v3), magnitude)));
    const int32_t amax_bits = x86_hmax8_epi32(a);
    if (amax_bits >= 0x7f800000) {
        memset(q, 0, QK);
        *d = *exact = NAN;
        return 0;
    }
    float amax;
    memcpy(&amax, &amax_bits, sizeof amax);
    const float scale = amax / 127.0f;
    *d = half_scale ? _cvtsh_ss(_cvtss_sh(scale, 0)) : scale;
    *exact = scale;
    const __m256 id = _mm256_set1_ps(scale >= FLT_MIN ? 1.0f / scale : 0.0f);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, id)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, id));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, id)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, id));
    const int32_t sum = x86_hsum8_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    /* packs work within 128-bit lanes; the permute puts the 4-value groups back in order */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
    return sum;
}

/* ---- sequence mode for float weights: what both kernel files' tiles share ---- */

X86_HOT size_t x86_float_bytes(int type) { return type == TYPE_FP32 ? 4 : 2; }

/* Every cache line of [p, p + bytes): into L1 (l1) or L2. The hardware prefetcher does not
 * follow a tile's dozens of row streams (one 4 KiB page each at 2048 FP16 columns), so the
 * tiles fetch the weights they will convert themselves. */
X86_HOT void x86_prefetch_lines(const uint8_t * p, size_t bytes, int l1) {
    for (size_t b = 0; b < bytes; b += 64) {
        if (l1) {
            _mm_prefetch((const char *)(p + b), _MM_HINT_T0);
        } else {
            _mm_prefetch((const char *)(p + b), _MM_HINT_T1);
        }
    }
}

/* Into L1, while the group of rows [rb + g, + rg) at block k0 (cols columns) is multiplied:
 * the weights of the group after it, the next rows at the same block or, after the tile's
 * last group, its first rows at the next block (none past c1). The first conversion load of
 * each group otherwise waits on L2 (9% of the kernel's samples, measured). */
X86_HOT void x86_xt_prefetch_next(int type, const uint8_t * w, size_t row_bytes, int64_t rb, int64_t nr, int64_t g,
                                     int64_t rg, int64_t k0, int64_t cols, int64_t c1) {
    const size_t wb = x86_float_bytes(type);
    const int64_t gn = g + rg < nr ? g + rg : 0, kn = g + rg < nr ? k0 : k0 + cols;
    if (kn >= c1) return;
    const int64_t nn = nr - gn < rg ? nr - gn : rg;
    for (int64_t i = 0; i < nn; i++) x86_prefetch_lines(w + (size_t)(rb + gn + i) * row_bytes + (size_t)kn * wb, (size_t)cols * wb, 1);
}

/* Part `part` of `parts` of [0, n) in whole units: [*begin, *end). */
X86_INLINE void x86_part_range(int64_t n, int64_t unit, int part, int parts, int64_t * begin, int64_t * end) {
    const int64_t units = (n + unit - 1) / unit;
    *begin = units * part / parts * unit;
    *end = units * (part + 1) / parts * unit;
    if (*end > n) *end = n;
}

/* Part `part` of `parts` of the preparation (columns of the transposed float layout, tokens
 * of the others): the parts together write what one whole call (part 0 of 1) writes. */
X86_INLINE void x86_prepare(int type, const float * x, int64_t n, int T, void * dst, int q8_offset, int decode, int part,
                            int parts) {
    uint8_t * base = (uint8_t *)dst;
    int64_t t_begin, t_end;
    x86_part_range(T, 1, part, parts, &t_begin, &t_end);
    if (!type_is_quantized(type) && T >= X86_XT_MIN_T) {
        const int64_t ts = x86_round16(T);
        float * out = (float *)base;
        int64_t k_begin, k_end;
        x86_part_range(n, 16, part, parts, &k_begin, &k_end);
        /* 16 x 16 tiles through a small buffer: both sides stay in cache lines */
        for (int64_t k0 = k_begin; k0 < k_end; k0 += 16) {
            const int64_t kn = n - k0 < 16 ? n - k0 : 16;
            for (int64_t t0 = 0; t0 < ts; t0 += 16) {
                float tile[16][16];
                for (int64_t t = 0; t < 16; t++) {
                    for (int64_t k = 0; k < kn; k++) tile[k][t] = t0 + t < T ? x[(size_t)(t0 + t) * n + k0 + k] : 0.0f;
                }
                for (int64_t k = 0; k < kn; k++) memcpy(out + (size_t)(k0 + k) * ts + t0, tile[k], sizeof tile[k]);
            }
        }
        return;
    }
    if (!type_is_quantized(type)) {
        const int64_t ns = x86_round16(n);
        float * out = (float *)base;
        for (int64_t t = t_begin; t < t_end; t++) {
            memcpy(out + (size_t)t * ns, x + (size_t)t * n, (size_t)n * sizeof(float));
            for (int64_t c = n; c < ns; c++) out[(size_t)t * ns + c] = 0.0f;
        }
        return;
    }
    const xq_layout L = xq_layout_of(type, n, T, decode);
    const int offset = x86_code_offset(type, q8_offset);
    const int with_min = type == TYPE_Q4_1 || type == TYPE_Q5_1;
    const int nibble_order = L.xe_off && type != TYPE_Q8_0 && !L.raw;
    const size_t bb = q_block_bytes(type), header = bb - QK / 2; /* raw order: a block's first code byte */
    int8_t * q = (int8_t *)base;
    xq_scale * sc = (xq_scale *)(base + L.sc_off);
    float * s = (float *)(base + L.s_off);
    for (int64_t t = t_begin; t < t_end; t++) {
        const float * xt = x + (size_t)t * n;
        int8_t * qt = q + (size_t)t * L.qstride;
        xq_scale * sct = sc + (size_t)t * L.np;
        float * st = s + (size_t)t * L.nbs;
        if (nibble_order || L.raw) memset(qt, 0, L.qstride);
        for (int64_t b = 0; b < L.nb; b++) {
            float d, exact;
            int8_t codes[QK];
            const int32_t sum = x86_quantize_block(xt + b * QK, nibble_order || L.raw ? codes : qt + b * QK, &d, &exact, 1);
            if (nibble_order) {
                int8_t * group = qt + (b / 4) * 128 + (b % 4) * 16;
                memcpy(group, codes, 16);
                memcpy(group + 64, codes + 16, 16);
            } else if (L.raw) {
                for (size_t j = 0; j < QK / 2; j++) {
                    const size_t at = (size_t)b * bb + header + j;
                    qt[at / 64 * 128 + at % 64] = codes[j];
                    qt[at / 64 * 128 + 64 + at % 64] = codes[j + QK / 2];
                }
            }
            sct[b / 2].d[b & 1] = d;
            sct[b / 2].bias[b & 1] = -offset * sum;
            st[b] = with_min ? _cvtsh_ss(_cvtss_sh(exact * (float)sum, 0)) : d * (float)sum;
        }
        for (int64_t b = L.nb; b < 2 * L.np; b++) {
            if (!nibble_order && !L.raw) memset(qt + b * QK, 0, QK);
            sct[b / 2].d[b & 1] = 0.0f;
            sct[b / 2].bias[b & 1] = 0;
        }
        for (int64_t b = L.nb; b < L.nbs; b++) st[b] = 0.0f;
        if (L.xe_off) {
            float * xd = (float *)(base + L.xe_off) + (size_t)t * L.nbs * 2;
            float * xb = xd + L.nbs;
            for (int64_t b = 0; b < L.nbs; b++) {
                xd[b] = b < 2 * L.np ? sct[b / 2].d[b & 1] : 0.0f;
                xb[b] = b < 2 * L.np ? (float)sct[b / 2].bias[b & 1] : 0.0f;
            }
        }
    }
}

/* Adds the per-block minimum term of the _1 types, sum_b m_b s_b, for rows [r0, r1), all
 * T tokens, blocks [b0, b1); the rows are still in cache from the main product. */
X86_INLINE void x86_add_min_term(int type, const uint8_t * w, size_t row_bytes, int64_t r0, int64_t r1, int64_t b0,
                                    int64_t b1, const void * xp, const xq_layout * L, int T, float * y, int64_t ldy) {
    const size_t bb = type_block_bytes(type);
    const float * s = (const float *)((const uint8_t *)xp + L->s_off);
    enum { CH = 128 };
    float m[CH + 8];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * row = w + (size_t)r * row_bytes;
        for (int64_t c0 = b0; c0 < b1; c0 += CH) {
            const int64_t c1 = c0 + CH < b1 ? c0 + CH : b1, len = c1 - c0, len8 = (len + 7) & ~(int64_t)7;
            for (int64_t b = 0; b < len; b++) m[b] = _cvtsh_ss(load_u16(row + (size_t)(c0 + b) * bb + 2));
            for (int64_t b = len; b < len8; b++) m[b] = 0.0f;
            for (int t = 0; t < T; t++) {
                const float * st = s + (size_t)t * L->nbs + c0;
                __m256 acc = _mm256_setzero_ps();
                for (int64_t b = 0; b < len8; b += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(m + b), _mm256_loadu_ps(st + b), acc);
                y[(size_t)t * ldy + r] += x86_hsum8(acc);
            }
        }
    }
}

/* ---- e^x for the forward passes: Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial
 * for e^r on [-ln2/2, ln2/2] (the classic single-precision minimax coefficients), times 2^n.
 * 2^n is applied as 2^(n/2) then 2^(n - n/2), each a normal float, so that e^x past FLT_MAX
 * overflows to infinity and e^x below FLT_MIN comes out subnormal, rounded once by the last
 * multiply, as expf's. x is clamped to [-104, 89] first: expf is 0 below -103.98 and infinite
 * above 88.73, and the clamped values give exactly that. NaN in gives NaN out. Within 2 ulp
 * of expf over the whole float range (tests/kernels_check.c sweeps it). ---- */
#define X86_EXP_LO (-104.0f)
#define X86_EXP_HI 89.0f
#define X86_LOG2E 1.44269504088896341f
#define X86_LN2_HI 0.693359375f
#define X86_LN2_LO (-2.12194440e-4f)
#define X86_EXP_P0 1.9875691500e-4f
#define X86_EXP_P1 1.3981999507e-3f
#define X86_EXP_P2 8.3334519073e-3f
#define X86_EXP_P3 4.1665795894e-2f
#define X86_EXP_P4 1.6666665459e-1f
#define X86_EXP_P5 5.0000001201e-1f

X86_INLINE __m256 x86_exp8(__m256 x) {
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    /* max_ps returns its second operand when the first is NaN: NaN lanes compute e^-104 */
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(X86_EXP_LO)), _mm256_set1_ps(X86_EXP_HI));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(X86_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(X86_LN2_HI), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(X86_LN2_LO), r);
    __m256 p = _mm256_set1_ps(X86_EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(X86_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(X86_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(X86_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(X86_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(X86_EXP_P5));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* n in [-150, 128]: both halves in [-75, 64], so both exponents n_i + 127 are normal */
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    const __m256 e = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    return _mm256_blendv_ps(e, _mm256_add_ps(x, x), nan); /* x + x: a quiet NaN */
}

X86_TARGET static void x86_exp_array(float * y, const float * x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, x86_exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float in[8] = {0}, out[8];
        memcpy(in, x + i, (size_t)(n - i) * sizeof(float));
        _mm256_storeu_ps(out, x86_exp8(_mm256_loadu_ps(in)));
        memcpy(y + i, out, (size_t)(n - i) * sizeof(float));
    }
}

/* 1 / (1 + e^-x) as e / (1 + e) for x < 0, with e = e^-|x| <= 1 never overflowing: for x below
 * -88.7, 1 + e^-x would be infinite and the result 0 instead of e^x (subnormal, or near
 * FLT_MIN). NaN in gives NaN out. */
X86_INLINE __m256 x86_sigmoid8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 e = x86_exp8(_mm256_or_ps(x, _mm256_set1_ps(-0.0f)));
    const __m256 positive = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
    return _mm256_div_ps(_mm256_blendv_ps(e, one, positive), _mm256_add_ps(one, e));
}

X86_TARGET static void x86_sigmoid_array(float * y, const float * x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, x86_sigmoid8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float in[8] = {0}, out[8];
        memcpy(in, x + i, (size_t)(n - i) * sizeof(float));
        _mm256_storeu_ps(out, x86_sigmoid8(_mm256_loadu_ps(in)));
        memcpy(y + i, out, (size_t)(n - i) * sizeof(float));
    }
}

#endif /* RWKV_KERNELS_X86_H */
