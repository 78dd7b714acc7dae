/*
 * kernels_amx.c: Intel AMX (Sapphire Rapids and later) for sequence mode (X86_XT_MIN_T rows and
 * more: prompt chunks, batches of 17 sequences and more). A tile multiply adds 16 x 16 sums of
 * products into 32-bit sums in one instruction: TDPBF16PS 16 x 16 x 32 BF16 products (8192
 * multiply-adds, where one AVX-512 FMA does 16), TDPBSSD / TDPBUSD 16 x 16 x 64 int8 ones.
 * FP16 and BF16 weights go to TDPBF16PS, the block types of rwkv.cpp files (Q4_0 to Q8_0) to
 * the int8 products; every other product (decode, batches of up to 16 rows, FP32 and K-quant
 * weights) and the vector functions are the AVX-512 set's, so this set is AVX-512 plus tiles.
 *
 * Half-precision weights. BF16 keeps 8 significant bits, FP16 11, float32 24. So values are cut into BF16 parts whose
 * sum is the value exactly: an FP16 weight w into wh (its 8 leading bits) and wl = w - wh (the
 * other 3), an activation x into xh, xm and xl (8 bits each). A product sums the five terms
 * wh xh, wl xh, wh xm, wl xm and wh xl (five tile multiplies); the one left out, wl xl, is below
 * 2^-23 |w x|, under float32's own rounding. So the tiles compute what the FMA paths compute,
 * up to the order of the float sums (tests/kernels_check.c holds them to the same bounds).
 * BF16 weights are their own wh: three multiplies. TDPBF16PS reads values below 1.2e-38 as
 * zero, which a sum of float32 products could not feel anyway. An infinite weight gives NaN
 * sums (its remainder is infinity minus infinity), as it does on every path against a zero
 * activation.
 *
 * Layout of the prepared activations (sequence mode, FP16 and BF16 weights): per step of 32
 * columns s and block of 16 tokens j (an even count of blocks, zero tokens past T), the tiles
 * of xh, xm and xl, 1 KiB each: 16 rows (column pairs p) of 64 bytes, the 16 tokens' values
 * of columns 32 s + 2 p and 32 s + 2 p + 1 side by side (the pairs layout that TDPBF16PS reads
 * its second operand in). The weights are the first operand as they are stored, 16 rows of 32
 * columns, once converted to BF16: no transposing on either side.
 *
 * A pass takes 16 weight rows and up to 64 tokens (four accumulator tiles, two weight tiles,
 * two activation tiles: the eight tile registers) over a chunk of AMX_CHUNK columns, whose
 * activation tiles (up to 768 KiB) stay in L2 while every row passes over them. Each step's
 * weights are converted by the vector units a few rows at a time between the multiplies of the
 * step before: converted all at once, the conversion and the tile unit took turns (the tile
 * loads wait for the converting stores), 1.3x slower.
 *
 * Block types: see "block types" below.
 */
/* Built where Linux can grant the tiles (kernels.c asks it) and the compiler knows AMX (gcc 11,
 * clang 12 and later); elsewhere the set is absent and kernels.c never offers it. */
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))

#include <immintrin.h>

#define X86_TARGET                                                                                             \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx512bf16," \
                          "amx-tile,amx-bf16,amx-int8")))

#include "kernels_x86.h"

#define INLINE static inline __attribute__((always_inline)) X86_TARGET

extern const kernels kernels_avx512;

enum {
    AMX_COLS = 32,  /* columns per step: one tile row of BF16 */
    AMX_PARTS = 3,  /* activation tiles per step and block: xh, xm, xl */
    AMX_CHUNK = 64, /* steps (2048 columns) per chunk */
    AMX_AHEAD = 8,  /* steps ahead that the weights are fetched into L2 */
    AMX_TILE = 1024 /* bytes of a full tile: 16 rows x 64 */
};

X86_INLINE int amx_block_type(int type) {
    return type == TYPE_Q4_0 || type == TYPE_Q4_1 || type == TYPE_Q5_0 || type == TYPE_Q5_1 || type == TYPE_Q8_0;
}

/* Whether a product goes to the tiles: half-precision weights and the block types of rwkv.cpp
 * files, in sequence mode. */
X86_INLINE int amx_takes(int type, int64_t n, int T) {
    if (T < X86_XT_MIN_T) return 0;
    return type == TYPE_FP16 || type == TYPE_BF16 || (amx_block_type(type) && n % QK == 0);
}

X86_INLINE int64_t amx_steps(int64_t n) { return (n + AMX_COLS - 1) / AMX_COLS; }
/* blocks of 16 tokens, an even count (tokens go to the tiles two blocks at a time) */
X86_INLINE int amx_blocks(int T) { return ((T + 15) / 16 + 1) & ~1; }

/* Block types (see "block types" below): per block and 16 tokens a tile of 8 rows x 64 bytes,
 * then per block and 16 tokens the activations' scales d, then a second term: the code
 * offset's share -offset d sum(q) (Q4_0, Q5_0) or s = d sum(q) for the minimum (Q4_1, Q5_1). */
enum { AMX_Q_TILE = 512 };
X86_INLINE int amx_q_tokens(int T) { return (T + 15) / 16; }
X86_INLINE size_t amx_q_scales_at(int64_t n, int T) { return (size_t)(n / QK) * (size_t)amx_q_tokens(T) * AMX_Q_TILE; }
X86_INLINE size_t amx_q_terms_at(int64_t n, int T) {
    return amx_q_scales_at(n, T) + (size_t)(n / QK) * (size_t)amx_q_tokens(T) * 16 * sizeof(float);
}
X86_INLINE size_t amx_q_bytes(int64_t n, int T) {
    return amx_q_terms_at(n, T) + (size_t)(n / QK) * (size_t)amx_q_tokens(T) * 16 * sizeof(float) + 64;
}

X86_TARGET static size_t amx_prepared_bytes(int type, int64_t n, int T) {
    const size_t other = kernels_avx512.prepared_bytes(type, n, T);
    if (!amx_takes(type, n, T)) return other;
    const size_t own = amx_block_type(type) ? amx_q_bytes(n, T)
                                            : (size_t)amx_steps(n) * (size_t)amx_blocks(T) * AMX_PARTS * AMX_TILE + 64;
    return own > other ? own : other;
}

/* The leading 8 bits of each float (its BF16 cut) and the exact remainder. */
INLINE __m512 amx_cut(__m512 v) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0xffff0000u)));
}

/* Cuts 32 floats (16 in a, 16 in b; columns in order) into three parts of BF16 values whose sum
 * is each float exactly (see the top of the file). An infinity's remainders are 0, not NaN. */
INLINE void amx_split3(__m512 a, __m512 b, __m512i part[AMX_PARTS]) {
    const __mmask16 fa = (__mmask16)~_mm512_fpclass_ps_mask(a, 0x18), fb = (__mmask16)~_mm512_fpclass_ps_mask(b, 0x18);
    for (int i = 0; i < AMX_PARTS; i++) {
        const __m512 ah = amx_cut(a), bh = amx_cut(b);
        part[i] = (__m512i)_mm512_cvtne2ps_pbh(bh, ah); /* exact: a's values in the low half */
        a = _mm512_maskz_sub_ps(fa, a, ah);
        b = _mm512_maskz_sub_ps(fb, b, bh);
    }
}

/* The tiles of steps [s_begin, s_end) (see the top of the file). */
X86_TARGET static void amx_prepare_steps(const float * x, int64_t n, int T, uint8_t * out, int64_t s_begin, int64_t s_end) {
    const int blocks = amx_blocks(T);
    /* dword p of a token's 32 columns (a column pair) goes to row p of the tile, at the token */
    const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(64));
    for (int64_t s = s_begin; s < s_end; s++) {
        const int64_t k = s * AMX_COLS, cols = n - k < AMX_COLS ? n - k : AMX_COLS;
        const __mmask16 ma = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1);
        const __mmask16 mb = cols >= 32 ? (__mmask16)0xffff : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
        for (int j = 0; j < blocks; j++) {
            uint8_t * tiles = out + (size_t)(s * blocks + j) * AMX_PARTS * AMX_TILE;
            for (int t = 0; t < 16; t++) {
                const int64_t token = (int64_t)j * 16 + t;
                __m512i part[AMX_PARTS] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
                if (token < T) {
                    const float * row = x + (size_t)token * (size_t)n + k;
                    amx_split3(_mm512_maskz_loadu_ps(ma, row), _mm512_maskz_loadu_ps(mb, row + 16), part);
                }
                for (int i = 0; i < AMX_PARTS; i++) _mm512_i32scatter_epi32(tiles + i * AMX_TILE + 4 * t, rows, part[i], 1);
            }
        }
    }
}

/* Block types: blocks [b_begin, b_end) of the T tokens quantized as the other paths quantize
 * them (x86_quantize_block), each block's codes for 16 tokens a tile of the tile product's
 * second operand (row p: the tokens' values 4 p to 4 p + 3 side by side), and per block for 16
 * tokens at a time their scales d and the second term (zeros past T). */
X86_TARGET static void amx_q_prepare_blocks(int type, const float * x, int64_t n, int T, uint8_t * out, int64_t b_begin,
                                            int64_t b_end) {
    const int tb = amx_q_tokens(T);
    const int offset = x86_code_offset(type, 0), with_min = type == TYPE_Q4_1 || type == TYPE_Q5_1;
    float * scales = (float *)(out + amx_q_scales_at(n, T));
    float * terms = (float *)(out + amx_q_terms_at(n, T));
    for (int64_t b = b_begin; b < b_end; b++) {
        for (int j = 0; j < tb; j++) {
            uint8_t * tile = out + (size_t)(b * tb + j) * AMX_Q_TILE;
            float * d = scales + (size_t)(b * tb + j) * 16;
            float * e = terms + (size_t)(b * tb + j) * 16;
            memset(tile, 0, AMX_Q_TILE);
            for (int t = 0; t < 16; t++) {
                const int64_t token = (int64_t)j * 16 + t;
                d[t] = e[t] = 0.0f;
                if (token >= T) continue;
                int8_t codes[QK];
                float exact;
                const int32_t sum = x86_quantize_block(x + (size_t)token * (size_t)n + b * QK, codes, &d[t], &exact, 1);
                /* as x86_prepare: the _1 types' s rounded to half precision, as rwkv.cpp keeps it */
                e[t] = with_min ? _cvtsh_ss(_cvtss_sh(exact * (float)sum, 0)) : -(float)offset * d[t] * (float)sum;
                for (int p = 0; p < QK / 4; p++) memcpy(tile + p * 64 + t * 4, codes + 4 * p, 4);
            }
        }
    }
}

X86_TARGET static void amx_prepare_part(int type, const float * x, int64_t n, int T, void * dst, int part, int parts) {
    if (!amx_takes(type, n, T)) {
        kernels_avx512.prepare_part(type, x, n, T, dst, part, parts);
        return;
    }
    if (amx_block_type(type)) {
        int64_t b_begin, b_end;
        x86_part_range(n / QK, 1, part, parts, &b_begin, &b_end);
        amx_q_prepare_blocks(type, x, n, T, (uint8_t *)dst, b_begin, b_end);
        return;
    }
    int64_t s_begin, s_end;
    x86_part_range(amx_steps(n), 1, part, parts, &s_begin, &s_end);
    amx_prepare_steps(x, n, T, (uint8_t *)dst, s_begin, s_end);
}

X86_TARGET static void amx_prepare(int type, const float * x, int64_t n, int T, void * dst) {
    amx_prepare_part(type, x, n, T, dst, 0, 1);
}

/* The tile registers' shapes (LDTILECFG's 64 bytes). */
typedef struct amx_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64))) amx_config;

/* Loads the tile shapes: tile i has rows[i] rows of colsb[i] bytes. */
INLINE void amx_configure(const uint8_t rows[8], const uint16_t colsb[8]) {
    amx_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int i = 0; i < 8; i++) {
        config.rows[i] = rows[i];
        config.colsb[i] = colsb[i];
    }
    _tile_loadconfig(&config);
}

/* One step (32 columns from k) of rows [r, r + 16) (zeros past nr rows) into the hi tile and,
 * for FP16, the lo tile after it; the same column of the rows AMX_AHEAD steps later is
 * fetched into L2 (the hardware prefetcher does not follow 16 row streams a page apart). */
INLINE void amx_convert(int type, const uint8_t * w, size_t row_bytes, int64_t n, int64_t r, int64_t nr, int64_t k,
                        uint8_t * hi, int i0, int i1) {
    const int64_t cols = n - k < AMX_COLS ? n - k : AMX_COLS;
    const __mmask32 full = cols >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << cols) - 1);
    for (int64_t i = i0; i < i1; i++) {
        const uint8_t * p = w + (size_t)(r + i) * row_bytes + (size_t)k * 2;
        if (i < nr && k + AMX_AHEAD * AMX_COLS < n) _mm_prefetch((const char *)(p + AMX_AHEAD * AMX_COLS * 2), _MM_HINT_T1);
        const __m512i raw = _mm512_maskz_loadu_epi16(i < nr ? full : 0, p);
        if (type == TYPE_BF16) {
            _mm512_store_si512((void *)(hi + i * 64), raw);
            continue;
        }
        /* wh: the weight cut to its 8 leading bits (exact in BF16); wl = w - wh, exact */
        const __m512 a = _mm512_cvtph_ps(_mm512_castsi512_si256(raw)), b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
        const __m512 ah = amx_cut(a), bh = amx_cut(b);
        _mm512_store_si512((void *)(hi + i * 64), (__m512i)_mm512_cvtne2ps_pbh(bh, ah));
        const __m512i lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, bh), _mm512_sub_ps(a, ah));
        _mm512_store_si512((void *)(hi + AMX_TILE + i * 64), lo);
    }
}

/* Rows [r, r + nr) (nr <= 16) x tokens of blocks [g, g + gb) (gb 2 or 4) over steps [s0, s1):
 * the sums stay in tiles 0 to gb - 1 from the first step to the last, then go to sums (16 rows
 * x 64 tokens). The rows of the next step are converted q at a time after each block's
 * multiplies (see the top of the file). */
INLINE void amx_rows(int type, int gb, const uint8_t * w, size_t row_bytes, int64_t n, int64_t r, int64_t nr,
                     const uint8_t * xp, int blocks, int g, int64_t s0, int64_t s1, uint8_t (*abuf)[2 * AMX_TILE],
                     float * sums) {
    const size_t x_step = (size_t)blocks * AMX_PARTS * AMX_TILE;
    const int q = 16 / gb;
    _tile_zero(0);
    _tile_zero(1);
    if (gb > 2) {
        _tile_zero(2);
        _tile_zero(3);
    }
    amx_convert(type, w, row_bytes, n, r, nr, s0 * AMX_COLS, abuf[0], 0, 16);
    for (int64_t s = s0; s < s1; s++) {
        const uint8_t * a = abuf[(s - s0) & 1];
        uint8_t * next = abuf[(s - s0 + 1) & 1];
        const int64_t kn = s + 1 < s1 ? (s + 1) * AMX_COLS : -1;
        const uint8_t * b = xp + (size_t)s * x_step + (size_t)g * AMX_PARTS * AMX_TILE;
        _tile_loadd(4, a, 64);                               /* wh */
        if (type == TYPE_FP16) _tile_loadd(5, a + AMX_TILE, 64); /* wl */
        /* tile 6: xh, then xl; tile 7: xm */
#define AMX_BLOCK(J)                                                                                                   \
    _tile_loadd(6, b + (J) * AMX_PARTS * AMX_TILE, 64);                                                                \
    _tile_loadd(7, b + (J) * AMX_PARTS * AMX_TILE + AMX_TILE, 64);                                                     \
    if (type == TYPE_FP16) _tile_dpbf16ps(J, 5, 6);                                                                    \
    _tile_dpbf16ps(J, 4, 6);                                                                                           \
    _tile_dpbf16ps(J, 4, 7);                                                                                           \
    if (type == TYPE_FP16) _tile_dpbf16ps(J, 5, 7);                                                                    \
    _tile_loadd(6, b + (J) * AMX_PARTS * AMX_TILE + 2 * AMX_TILE, 64);                                                 \
    _tile_dpbf16ps(J, 4, 6);                                                                                           \
    if (kn >= 0) amx_convert(type, w, row_bytes, n, r, nr, kn, next, (J) * q, (J) * q + q);
        AMX_BLOCK(0)
        AMX_BLOCK(1)
        if (gb > 2) {
            AMX_BLOCK(2)
            AMX_BLOCK(3)
        }
#undef AMX_BLOCK
    }
    _tile_stored(0, sums, 256);
    _tile_stored(1, sums + 16, 256);
    if (gb > 2) {
        _tile_stored(2, sums + 32, 256);
        _tile_stored(3, sums + 48, 256);
    }
}

/* y rows [r, r + nr), tokens [0, T) = (first) or += the sums (stride floats per row). */
INLINE void amx_store(const float * sums, int64_t stride, float * y, int64_t ldy, int T, int64_t r, int64_t nr, int first) {
    for (int t = 0; t < T; t++) {
        float * out = y + (size_t)t * (size_t)ldy + r;
        for (int64_t i = 0; i < nr; i++) out[i] = first ? sums[i * stride + t] : out[i] + sums[i * stride + t];
    }
}

X86_TARGET static void amx_matmul_tiles(int type, const uint8_t * w, size_t row_bytes, int64_t n, const uint8_t * xp,
                                        int T, float * y, int64_t ldy, int64_t r0, int64_t r1) {
    static const uint8_t rows[8] = {16, 16, 16, 16, 16, 16, 16, 16}; /* every tile 16 x 64 bytes */
    static const uint16_t colsb[8] = {64, 64, 64, 64, 64, 64, 64, 64};
    amx_configure(rows, colsb);
    const int blocks = amx_blocks(T);
    const int64_t steps = amx_steps(n);
    uint8_t abuf[2][2 * AMX_TILE] __attribute__((aligned(64)));
    float sums[16 * 64] __attribute__((aligned(64)));
    for (int64_t s0 = 0; s0 < steps; s0 += AMX_CHUNK) {
        const int64_t s1 = s0 + AMX_CHUNK < steps ? s0 + AMX_CHUNK : steps;
        for (int64_t r = r0; r < r1; r += 16) {
            const int64_t nr = r1 - r < 16 ? r1 - r : 16;
            for (int g = 0; g < blocks; g += 4) { /* 64 tokens at a time */
                const int gb = blocks - g < 4 ? blocks - g : 4;
                if (type == TYPE_FP16) {
                    if (gb > 2) {
                        amx_rows(TYPE_FP16, 4, w, row_bytes, n, r, nr, xp, blocks, g, s0, s1, abuf, sums);
                    } else {
                        amx_rows(TYPE_FP16, 2, w, row_bytes, n, r, nr, xp, blocks, g, s0, s1, abuf, sums);
                    }
                } else {
                    if (gb > 2) {
                        amx_rows(TYPE_BF16, 4, w, row_bytes, n, r, nr, xp, blocks, g, s0, s1, abuf, sums);
                    } else {
                        amx_rows(TYPE_BF16, 2, w, row_bytes, n, r, nr, xp, blocks, g, s0, s1, abuf, sums);
                    }
                }
                const int t0 = g * 16, tn = T - t0 < 64 ? T - t0 : 64;
                amx_store(sums, 64, y + (size_t)t0 * (size_t)ldy, ldy, tn, r, nr, s0 == 0);
            }
        }
    }
    _tile_release();
}

/* ---- block types: TDPBSSD / TDPBUSD, int8 codes into int32 ----
 * Each 32-value block has a scale on both sides (the weight's d, the activation's), so a tile
 * product covers one block: 16 weight rows x 32 codes times 8 rows of 16 tokens x 4 codes.
 * Q8_0 codes (signed) are read straight from the weights (a tile load takes any row stride,
 * and a block's 32 codes follow its 2-byte scale); 4- and 5-bit codes are unpacked first,
 * AMX_Q_CHUNK blocks of 16 rows at a time, to bytes 0-31 (unsigned), their offset (Q4_0 8,
 * Q5_0 16) left to the activations' second term. The 16 x 16 integer sums go through memory
 * to the vector units, which convert them and add d_w (d_x sum + term) (the _1 types:
 * d_w d_x sum + m_w s_x) into float accumulators, 16 rows x 16 tokens in 16 registers,
 * AMX_Q_LAG blocks behind the tile unit. The integer sums equal the other paths'; only the
 * order of the float sums differs. */
enum { AMX_Q_CHUNK = 64, AMX_Q_LAG = 2, AMX_Q_RING = 4 };

/* 0, 1: weights (rows x 32 codes); 2, 3: activations (8 x 64); 4, 5: sums (rows x 16 int32) */
INLINE void amx_q_config(int rows) {
    const uint8_t r = (uint8_t)rows, shape_rows[8] = {r, r, QK / 4, QK / 4, r, r, 0, 0};
    const uint16_t colsb[8] = {QK, QK, 64, 64, 64, 64, 0, 0};
    amx_configure(shape_rows, colsb);
}

/* Bytes 0-31 of one block's codes into out (32 bytes, values in order). */
INLINE void amx_q_unpack(int type, const uint8_t * block, uint8_t * out) {
    const size_t qs = type == TYPE_Q4_0 ? 2 : type == TYPE_Q4_1 ? 4 : type == TYPE_Q5_0 ? 6 : 8;
    const __m128i packed = _mm_loadu_si128((const __m128i *)(block + qs)), nibble = _mm_set1_epi8(0x0f);
    __m256i codes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(packed, nibble)),
                                            _mm_and_si128(_mm_srli_epi16(packed, 4), nibble), 1);
    if (type == TYPE_Q5_0 || type == TYPE_Q5_1) {
        const __mmask32 high = (__mmask32)load_u32(block + (type == TYPE_Q5_0 ? 2 : 4));
        codes = _mm256_mask_add_epi8(codes, high, codes, _mm256_set1_epi8(16));
    }
    _mm256_store_si256((__m256i *)out, codes);
}

/* acc[i] += d_w[i] (d_x (float) sums row i + term), or for the _1 types d_w[i] d_x sums + m[i] s. */
INLINE void amx_q_scale(int type, __m512 acc[16], const int32_t * sums, const float * dw, const float * mw, const float * dx,
                        const float * term) {
    const __m512 xs = _mm512_load_ps(dx), xt = _mm512_load_ps(term);
    const int with_min = type == TYPE_Q4_1 || type == TYPE_Q5_1;
    for (int i = 0; i < 16; i++) {
        const __m512 c = _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(sums + 16 * i)));
        const __m512 v = with_min || type == TYPE_Q8_0 ? _mm512_mul_ps(c, xs) : _mm512_fmadd_ps(c, xs, xt);
        acc[i] = _mm512_fmadd_ps(v, _mm512_set1_ps(dw[i]), acc[i]);
        if (with_min) acc[i] = _mm512_fmadd_ps(xt, _mm512_set1_ps(mw[i]), acc[i]);
    }
}

/* One block's tile product: tile registers A (weights), B (activations), C (the sums). */
#define AMX_Q_PRODUCT(A, B, C, WEIGHTS, STRIDE, X)                                                                     \
    do {                                                                                                               \
        _tile_loadd(A, WEIGHTS, STRIDE);                                                                               \
        _tile_loadd(B, X, 64);                                                                                         \
        _tile_zero(C);                                                                                                 \
        if (type == TYPE_Q8_0) {                                                                                       \
            _tile_dpbssd(C, A, B);                                                                                     \
        } else {                                                                                                       \
            _tile_dpbusd(C, A, B);                                                                                     \
        }                                                                                                              \
    } while (0)

INLINE void amx_q_rows(int type, const uint8_t * rows, size_t row_bytes, int64_t nr, const uint8_t * xp, int T, int64_t nb,
                       float * y, int64_t ldy, float * dw, float * mw, uint8_t * codes, int32_t (*ring)[256]) {
    const size_t bb = q_block_bytes(type);
    const int tb = amx_q_tokens(T);
    const float * scales = (const float *)(xp + amx_q_scales_at(nb * QK, T));
    const float * terms = (const float *)(xp + amx_q_terms_at(nb * QK, T));
    const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32((int)row_bytes));
    const size_t x_block = (size_t)tb * AMX_Q_TILE;
    for (int64_t c0 = 0; c0 < nb; c0 += AMX_Q_CHUNK) {
        const int64_t c1 = c0 + AMX_Q_CHUNK < nb ? c0 + AMX_Q_CHUNK : nb;
        for (int64_t b = c0; b < c1; b++) { /* the rows' d (and m), 16 per block */
            const __m512i heads = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), (__mmask16)((1u << nr) - 1), offsets,
                                                              rows + (size_t)b * bb, 1);
            _mm512_store_ps(dw + (b - c0) * 16, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(heads)));
            if (type == TYPE_Q4_1 || type == TYPE_Q5_1) {
                _mm512_store_ps(mw + (b - c0) * 16, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(heads, 16))));
            }
            if (type != TYPE_Q8_0) {
                for (int64_t i = 0; i < nr; i++) amx_q_unpack(type, rows + (size_t)i * row_bytes + (size_t)b * bb, codes + ((b - c0) * 16 + i) * QK);
            }
        }
        for (int j = 0; j < tb; j++) {
            __m512 acc[16];
            for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
            const uint8_t * xt = xp + (size_t)j * AMX_Q_TILE;
            for (int64_t b = c0; b < c1; b += 2) {
                const int pair = b + 1 < c1;
                if (type == TYPE_Q8_0) {
                    AMX_Q_PRODUCT(0, 2, 4, rows + (size_t)b * bb + 2, row_bytes, xt + (size_t)b * x_block);
                    if (pair) AMX_Q_PRODUCT(1, 3, 5, rows + (size_t)(b + 1) * bb + 2, row_bytes, xt + (size_t)(b + 1) * x_block);
                } else {
                    AMX_Q_PRODUCT(0, 2, 4, codes + (b - c0) * 16 * QK, QK, xt + (size_t)b * x_block);
                    if (pair) AMX_Q_PRODUCT(1, 3, 5, codes + (b + 1 - c0) * 16 * QK, QK, xt + (size_t)(b + 1) * x_block);
                }
                /* the vector units scale the pair before while the tile unit multiplies this one,
                 * whose sums are stored only after that work: a tile store waits for its multiply
                 * (stored right after it, the vector units waited too: 1.01-1.11x slower in
                 * kernel_speed) */
                for (int64_t p = b - AMX_Q_LAG; p < b - AMX_Q_LAG + 2; p++) {
                    if (p < c0) continue;
                    const size_t at = (size_t)(p * tb + j) * 16;
                    amx_q_scale(type, acc, ring[p % AMX_Q_RING], dw + (p - c0) * 16, mw + (p - c0) * 16, scales + at, terms + at);
                }
                _tile_stored(4, ring[b % AMX_Q_RING], 64);
                if (pair) _tile_stored(5, ring[(b + 1) % AMX_Q_RING], 64);
            }
            /* the blocks still behind: those of the last pair */
            for (int64_t p = c0 + ((c1 - c0 - 1) & ~(int64_t)1); p < c1; p++) {
                const size_t at = (size_t)(p * tb + j) * 16;
                amx_q_scale(type, acc, ring[p % AMX_Q_RING], dw + (p - c0) * 16, mw + (p - c0) * 16, scales + at, terms + at);
            }
            float out[16 * 16] __attribute__((aligned(64)));
            for (int i = 0; i < 16; i++) _mm512_store_ps(out + 16 * i, acc[i]);
            const int tn = T - 16 * j < 16 ? T - 16 * j : 16;
            amx_store(out, 16, y + (size_t)(16 * j) * (size_t)ldy, ldy, tn, 0, nr, c0 == 0);
        }
    }
}
#undef AMX_Q_PRODUCT

X86_TARGET static void amx_q_tiles(int type, const uint8_t * w, size_t row_bytes, int64_t n, const uint8_t * xp, int T,
                                   float * y, int64_t ldy, int64_t r0, int64_t r1) {
    float dw[AMX_Q_CHUNK * 16] __attribute__((aligned(64)));
    float mw[AMX_Q_CHUNK * 16] __attribute__((aligned(64)));
    uint8_t codes[AMX_Q_CHUNK * 16 * QK] __attribute__((aligned(64)));
    int32_t ring[AMX_Q_RING][256] __attribute__((aligned(64)));
    amx_q_config(16);
    for (int64_t r = r0; r < r1; r += 16) {
        const int64_t nr = r1 - r < 16 ? r1 - r : 16;
        if (nr < 16) amx_q_config((int)nr); /* the last rows: no tile row past them */
        const uint8_t * rows = w + (size_t)r * row_bytes;
        switch (type) {
        case TYPE_Q4_0: amx_q_rows(TYPE_Q4_0, rows, row_bytes, nr, xp, T, n / QK, y + r, ldy, dw, mw, codes, ring); break;
        case TYPE_Q4_1: amx_q_rows(TYPE_Q4_1, rows, row_bytes, nr, xp, T, n / QK, y + r, ldy, dw, mw, codes, ring); break;
        case TYPE_Q5_0: amx_q_rows(TYPE_Q5_0, rows, row_bytes, nr, xp, T, n / QK, y + r, ldy, dw, mw, codes, ring); break;
        case TYPE_Q5_1: amx_q_rows(TYPE_Q5_1, rows, row_bytes, nr, xp, T, n / QK, y + r, ldy, dw, mw, codes, ring); break;
        default: amx_q_rows(TYPE_Q8_0, rows, row_bytes, nr, xp, T, n / QK, y + r, ldy, dw, mw, codes, ring); break;
        }
    }
    _tile_release();
}

X86_TARGET static void amx_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                                  int64_t ldy, int64_t r0, int64_t r1) {
    if (amx_takes(type, n, T) && amx_block_type(type)) {
        amx_q_tiles(type, w, row_bytes, n, (const uint8_t *)xp, T, y, ldy, r0, r1);
    } else if (amx_takes(type, n, T)) {
        amx_matmul_tiles(type, w, row_bytes, n, (const uint8_t *)xp, T, y, ldy, r0, r1);
    } else {
        kernels_avx512.matmul(type, w, row_bytes, n, xp, T, y, ldy, r0, r1);
    }
}

const kernels kernels_amx = {
    .exp = x86_exp_array,
    .sigmoid = x86_sigmoid_array,
    .name = "amx",
    .prepared_bytes = amx_prepared_bytes,
    .prepare = amx_prepare,
    .prepare_part = amx_prepare_part,
    .matmul = amx_matmul,
};

#endif /* x86-64 Linux, a compiler with AMX */
