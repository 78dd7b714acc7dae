/*
 * kernels_avx512.c: AVX-512 (F, BW, VL, DQ, VBMI) + VNNI kernels. Compiled with target
 * attributes, so the package builds with plain flags; kernels.c selects this set only when
 * the CPU reports the features (Zen 4, Ice Lake and later).
 *
 * Decode (fewer than XE_MAX_T tokens) is bound by memory: each weight row is streamed once,
 * one row at a time with a software prefetch ahead (interleaved row streams measured 2x
 * slower). A pair of quantized 32-value blocks is unpacked by one masked load and VPERMB to
 * 64 unsigned codes and multiplied with int8 activations by VPDPBUSD; block scales come 16 at
 * a time from one gather, so the code offset and the _1 types' minimum cost one FMA per 16
 * blocks.
 *
 * Sequence mode (XE_MAX_T tokens and more) is bound by arithmetic: rows are unpacked once into
 * 16-row panels laid out so that one vector holds 4 codes (quantized) or 1 value (float) of
 * each of the 16 rows; every token then advances 16 row sums per instruction with its
 * activations broadcast, and the panel stays in L1 while the chunk's tokens pass over it.
 */
#if defined(__x86_64__)

#include <immintrin.h>

/* Every function here carries this target attribute (per function, as gcc and clang both
 * accept; a function without it cannot inline the intrinsics, so a forgotten one fails to
 * build rather than running wider instructions where kernels.c did not select them). */
#define X86_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")))

#include "kernels_x86.h"
#include "kquants.h"

#define INLINE static inline __attribute__((always_inline)) X86_TARGET

enum {
    /* Decode row streams fetch ahead themselves (the hardware prefetcher alone stops at every
     * 4 KiB page): rows unpacked by q_rows_decode (the 5-bit types, Q8_0) Q_PREFETCH bytes
     * ahead into L1 and Q_PREFETCH_L2 into L2; float rows F_PREFETCH ahead into L1 and
     * F_PREFETCH_L2 into L2 (they fetched nothing before: 1.5B shape FP16 decode 1.05-1.15x
     * faster, 169M 1.2x). Q_rows_decode fetched 3072 ahead into L1 alone (2 threads: +20-40%
     * against nothing; an L2 stream on top, at 6144, lost from DRAM: 1.5B, one thread, 0.92x)
     * until its 5-bit groups ran 1.15-1.25x faster: 1024 and 4096 then gave 1.02-1.06x (Q5_0,
     * Q5_1) and 1.05x (Q8_0) at 1.5B with one thread; 1536 and 4096 as much, the other pairs
     * tried (512-4096 into L1, 3072-8192 or none into L2) less. Q4_0 and Q4_1 rows, read in their own byte order with fewer instructions
     * per byte (q4_raw_rows_decode), gain from it: RAW_PREFETCH into L1 and RAW_PREFETCH_L2
     * into L2 decode 1.06-1.09x faster than 3072 into L1 alone (1.5B, 1 and 2 threads),
     * 1.07-1.15x at 169M. */
    Q_PREFETCH = 1024,
    Q_PREFETCH_L2 = 4096,
    RAW_PREFETCH = 1024,
    RAW_PREFETCH_L2 = 6144,
    F_PREFETCH = 1536,
    F_PREFETCH_L2 = 6144,
    F_DECODE_PAIR_COLS = 4096, /* float decode: wider rows go two at a time (measured both ways) */
    Q_DECODE_PAIR_COLS = 1024, /* 4/5-bit decode: shorter rows two at a time (+3-10%; Q8_0 lost) */
};

X86_TARGET static size_t avx512_prepared_bytes(int type, int64_t n, int T) {
    return type_is_kquant(type) ? kq_prepared_bytes(n, T) : x86_prepared_bytes(type, n, T, X86_DECODE_RAW);
}

X86_TARGET static void xt_prepare(const float * x, int64_t n, int T, float * out, int64_t k_begin, int64_t k_end);

X86_TARGET static void avx512_prepare_part(int type, const float * x, int64_t n, int T, void * dst, int part, int parts) {
    if (type_is_kquant(type)) {
        if (part == 0) kq_prepare_avx2(type, x, n, T, dst); /* the layout and numbers every path shares; not cut */
        return;
    }
    if (!type_is_quantized(type) && T >= X86_XT_MIN_T) {
        int64_t k_begin, k_end;
        x86_part_range(n, 16, part, parts, &k_begin, &k_end);
        xt_prepare(x, n, T, (float *)dst, k_begin, k_end);
        return;
    }
    x86_prepare(type, x, n, T, dst, 128, X86_DECODE_RAW, part, parts);
}

X86_TARGET static void avx512_prepare(int type, const float * x, int64_t n, int T, void * dst) {
    avx512_prepare_part(type, x, n, T, dst, 0, 1);
}

/* ---- quantized weights ---- */

/* Byte tables for unpacking a pair of blocks with VPERMB from one 64-byte load of the pair.
 * codes: output byte i (block i / 32, value i % 32) <- the byte holding that value's nibble;
 * qh: output byte i <- the byte of qh holding bit i % 32 of block i / 32. */
#define SEQ8(o) (o), (o) + 1, (o) + 2, (o) + 3, (o) + 4, (o) + 5, (o) + 6, (o) + 7
#define SEQ16(o) SEQ8(o), SEQ8((o) + 8)
#define REP8(o) (o), (o), (o), (o), (o), (o), (o), (o)
#define CODES(qs, bb) {SEQ16(qs), SEQ16(qs), SEQ16((bb) + (qs)), SEQ16((bb) + (qs))}
#define HIGHS(qh, bb) {REP8(qh), REP8((qh) + 1), REP8((qh) + 2), REP8((qh) + 3), \
                       REP8((bb) + (qh)), REP8((bb) + (qh) + 1), REP8((bb) + (qh) + 2), REP8((bb) + (qh) + 3)}
static const uint8_t CODES_Q4_0[64] __attribute__((aligned(64))) = CODES(2, 18);
static const uint8_t CODES_Q4_1[64] __attribute__((aligned(64))) = CODES(4, 20);
static const uint8_t CODES_Q5_0[64] __attribute__((aligned(64))) = CODES(6, 22);
static const uint8_t CODES_Q5_1[64] __attribute__((aligned(64))) = CODES(8, 24);
static const uint8_t HIGHS_Q5_0[64] __attribute__((aligned(64))) = HIGHS(2, 22);
static const uint8_t HIGHS_Q5_1[64] __attribute__((aligned(64))) = HIGHS(4, 24);
static const uint8_t BIT_OF_BYTE[64] __attribute__((aligned(64))) = {
    1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128,
    1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};

INLINE __m512i table(const uint8_t * t) { return _mm512_load_si512((const void *)t); }

/* Unpacks the pair of blocks at a (only the first when !both): 64 unsigned codes in value
 * order and the block scales broadcast over each block's 8 lanes, [da x8, db x8]. */
INLINE void q_unpack(int type, const uint8_t * a, int both, __m512i * codes, __m512 * scales, __m512 * mins) {
    const size_t bb = q_block_bytes(type);
    const __m512i scale_index = _mm512_setr_epi32(0, 0, 0, 0, (int)(bb / 2 * 0x10001), (int)(bb / 2 * 0x10001),
                                                  (int)(bb / 2 * 0x10001), (int)(bb / 2 * 0x10001), 0, 0, 0, 0, 0, 0, 0, 0);
    if (type == TYPE_Q8_0) {
        /* a pair is 68 bytes: two loads of codes, one of the scales */
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(a + 2));
        const __m256i hi = both ? _mm256_loadu_si256((const __m256i *)(a + bb + 2)) : _mm256_set1_epi8((char)0x80);
        *codes = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), _mm512_set1_epi8((char)0x80));
        const __m512i head = _mm512_maskz_loadu_epi8(both ? (__mmask64)0xfffffffffULL : (__mmask64)0x3, a);
        *scales = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(scale_index, head)));
        return;
    }
    const __mmask64 span = both ? (((__mmask64)1 << (2 * bb)) - 1) : (((__mmask64)1 << bb) - 1);
    const __m512i pair = _mm512_maskz_loadu_epi8(span, a);
    const uint8_t * perm = type == TYPE_Q4_0 ? CODES_Q4_0 : type == TYPE_Q4_1 ? CODES_Q4_1 : type == TYPE_Q5_0 ? CODES_Q5_0 : CODES_Q5_1;
    __m512i v = _mm512_permutexvar_epi8(table(perm), pair);
    /* values 16..31 of each block are the high nibbles */
    v = _mm512_srlv_epi16(v, _mm512_setr_epi32(0, 0, 0, 0, 0x40004, 0x40004, 0x40004, 0x40004, 0, 0, 0, 0, 0x40004, 0x40004,
                                                0x40004, 0x40004));
    v = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
    if (type == TYPE_Q5_0 || type == TYPE_Q5_1) {
        const __m512i highs = _mm512_permutexvar_epi8(table(type == TYPE_Q5_0 ? HIGHS_Q5_0 : HIGHS_Q5_1), pair);
        const __mmask64 bits = _mm512_test_epi8_mask(highs, table(BIT_OF_BYTE));
        v = _mm512_mask_add_epi8(v, bits, v, _mm512_set1_epi8(16));
    }
    *codes = v;
    *scales = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(scale_index, pair)));
    if (mins) { /* the _1 types: m follows d in each block */
        const __m512i min_index = _mm512_add_epi16(scale_index, _mm512_set1_epi16(1));
        *mins = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(min_index, pair)));
    }
}

/* Decode. The block scales of 8 pairs are gathered at once into one vector (lane = block),
 * multiplied with the activations' scales, and each pair then takes its two lanes with one
 * permute; the code-offset and minimum terms are per block too, so they cost one FMA per 16
 * blocks. What remains per pair is unpacking, VPDPBUSD, a conversion and an FMA. */
static const int32_t PAIR_LANES[8][16] __attribute__((aligned(64))) = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},         {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},         {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},         {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13}, {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

/* 64 codes of the pair at a (both blocks, or only the first) for the decode loop. */
INLINE __m512i q_codes_only(int type, const uint8_t * a, int both) {
    __m512i codes;
    __m512 unused;
    if (type == TYPE_Q8_0) {
        const size_t bb = q_block_bytes(type);
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(a + 2));
        const __m256i hi = both ? _mm256_loadu_si256((const __m256i *)(a + bb + 2)) : _mm256_set1_epi8((char)0x80);
        return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), _mm512_set1_epi8((char)0x80));
    }
    q_unpack(type, a, both, &codes, &unused, NULL); /* the unused scales are dropped by the compiler */
    return codes;
}

INLINE __m512 q_pair_decode(int type, const uint8_t * a, int both, const int8_t * xq, __m512 scales16, int p, __m512 acc) {
    _mm_prefetch((const char *)(a + Q_PREFETCH), _MM_HINT_T0);
    _mm_prefetch((const char *)(a + Q_PREFETCH_L2), _MM_HINT_T1);
    const __m512i codes = q_codes_only(type, a, both);
    const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, _mm512_load_si512((const void *)xq));
    const __m512 scale = _mm512_permutexvar_ps(_mm512_load_si512((const void *)PAIR_LANES[p]), scales16);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc);
}

/* Decode of the 5-bit types, 4 blocks at a time (Q4_0 and Q4_1, which have no qh bytes, need
 * no byte permute in q4_raw_rows_decode below; this way they ran at 0.8-0.9x of it in L2): two
 * loads of the blocks' bytes and one two-source byte permute (VPERMI2B) put the 4 x 16 bytes
 * of packed codes in one vector;
 * an AND gives the 64 low nibbles (values 0-15 of each block) and a shift and an AND the 64
 * high ones (values 16-31), which meet the activations in the nibble order of kernels_x86.h
 * (no per-half shifts, half the permutes of unpacking pair by pair). The 5th bits are ready
 * as masks: per 16 blocks, two 8-lane gathers of the blocks' first 8 bytes (d, m, qh) and a
 * byte permute give the 16 d (and m) and the 16 qh, whose low halves (5th bits of values
 * 0-15) and high halves are stored as one 64-bit mask per group of 4 blocks, so a group
 * spends only a mask load and a masked add per 64 codes on them (a permute and a bit test
 * each before: 1.15-1.25x the rate in L2 with the unrolled groups below). Lanes 4k..4k+3 of
 * the dot products belong to block k, whose scale comes from the 16 gathered ones by one
 * permute. */
#define QUAD(o) (o), (o) + 1, (o) + 2, (o) + 3, (o) + 4, (o) + 5, (o) + 6, (o) + 7, (o) + 8, (o) + 9, (o) + 10, (o) + 11, \
                (o) + 12, (o) + 13, (o) + 14, (o) + 15
#define CODES4(qs, bb) {QUAD(qs), QUAD((bb) + (qs)), QUAD(2 * (bb) + (qs)), QUAD(3 * (bb) + (qs))}
static const uint8_t CODES4_Q5_0[64] __attribute__((aligned(64))) = CODES4(6, 22);
static const uint8_t CODES4_Q5_1[64] __attribute__((aligned(64))) = CODES4(8, 24);
/* From 16 blocks' first 8 bytes (two 8-lane gathers, block l at bytes 8l..8l+7 of the pair):
 * HEADS8: d of the 16 blocks (bytes 0-31), then m (32-63); FIFTH8: the low halves of qh (bits
 * 0-15, the 5th bits of values 0-15) of the 16 blocks, then the high halves. */
#define HEAD8(l, o) 8 * (l) + (o), 8 * (l) + (o) + 1
#define HEADS16(o) HEAD8(0, o), HEAD8(1, o), HEAD8(2, o), HEAD8(3, o), HEAD8(4, o), HEAD8(5, o), HEAD8(6, o), HEAD8(7, o), \
                   HEAD8(8, o), HEAD8(9, o), HEAD8(10, o), HEAD8(11, o), HEAD8(12, o), HEAD8(13, o), HEAD8(14, o), HEAD8(15, o)
static const uint8_t HEADS8[64] __attribute__((aligned(64))) = {HEADS16(0), HEADS16(2)};
static const uint8_t FIFTH8_Q5_0[64] __attribute__((aligned(64))) = {HEADS16(2), HEADS16(4)};
static const uint8_t FIFTH8_Q5_1[64] __attribute__((aligned(64))) = {HEADS16(4), HEADS16(6)};
static const int32_t QUAD_LANES[4][16] __attribute__((aligned(64))) = {
    {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},         {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
    {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11}, {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};

/* Blocks [0, nblocks) (<= 4) of the group at a against the group's activations xg (nibble
 * order); k: the group's place among the 16 blocks whose scales16 and 5th-bit masks (fifth:
 * [low/high half][group]) were gathered. */
INLINE __m512 q5_group_decode(int type, const uint8_t * a, int nblocks, const int8_t * xg, __m512 scales16,
                               uint64_t fifth[2][4], int k, __m512 acc) {
    const size_t bb = q_block_bytes(type);
    const __mmask64 lo5 = _load_mask64((__mmask64 *)&fifth[0][k]), hi5 = _load_mask64((__mmask64 *)&fifth[1][k]);
    const size_t bytes = (size_t)nblocks * bb;
    _mm_prefetch((const char *)(a + Q_PREFETCH), _MM_HINT_T0);
    _mm_prefetch((const char *)(a + Q_PREFETCH + 64), _MM_HINT_T0);
    _mm_prefetch((const char *)(a + Q_PREFETCH_L2), _MM_HINT_T1);
    _mm_prefetch((const char *)(a + Q_PREFETCH_L2 + 64), _MM_HINT_T1);
    __m512i lo_bytes, hi_bytes;
    if (nblocks == 4) {
        lo_bytes = _mm512_loadu_si512((const void *)a);
        hi_bytes = _mm512_maskz_loadu_epi8(((__mmask64)1 << (4 * bb - 64)) - 1, a + 64);
    } else {
        lo_bytes = _mm512_maskz_loadu_epi8(bytes >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << bytes) - 1, a);
        hi_bytes = bytes > 64 ? _mm512_maskz_loadu_epi8(((__mmask64)1 << (bytes - 64)) - 1, a + 64) : _mm512_setzero_si512();
    }
    const uint8_t * perm = type == TYPE_Q5_0 ? CODES4_Q5_0 : CODES4_Q5_1;
    const __m512i packed = _mm512_permutex2var_epi8(lo_bytes, table(perm), hi_bytes);
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    __m512i lo = _mm512_and_si512(packed, nibble);
    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
    const __m512i sixteen = _mm512_set1_epi8(16);
    lo = _mm512_mask_add_epi8(lo, lo5, lo, sixteen);
    hi = _mm512_mask_add_epi8(hi, hi5, hi, sixteen);
    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_load_si512((const void *)xg));
    dot = _mm512_dpbusd_epi32(dot, hi, _mm512_load_si512((const void *)(xg + 64)));
    const __m512 scale = _mm512_permutexvar_ps(_mm512_load_si512((const void *)QUAD_LANES[k]), scales16);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc);
}

/* Decode (the 5-bit types and Q8_0) of R rows (R = 1, or 2 for short rows, whose fixed costs
 * per row - a gather per 16 blocks, the final sum - then overlap) with one token:
 * out[i] = row i . x. */
INLINE void q_rows_decode(int type, int R, const uint8_t * row, size_t row_bytes, const xq_layout * L, const int8_t * xq,
                          const float * xd, const float * xbias, const float * xs, float * out) {
    const size_t bb = q_block_bytes(type);
    const int with_min = type == TYPE_Q5_1;
    const int with_bias = !with_min;
    const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32((int)bb));
    __m512 a0[2], a1[2];
    for (int i = 0; i < R; i++) a0[i] = a1[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < L->np; g += 8) {
        const int64_t b0 = 2 * g;
        const int64_t blocks = L->nb - b0 < 16 ? L->nb - b0 : 16;
        __m512 scales16[2];
        uint64_t fifth[2][2][4] __attribute__((aligned(64))); /* [row][low/high half][group] */
        for (int i = 0; i < R; i++) {
            const uint8_t * a = row + (size_t)i * row_bytes + (size_t)b0 * bb;
            __m512i heads;
            if (type == TYPE_Q8_0) { /* the first 2 bytes of each block: d */
                heads = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), (__mmask16)((1u << blocks) - 1), offsets, a, 1);
                heads = _mm512_zextsi256_si512(_mm512_cvtepi32_epi16(heads));
            } else { /* the first 8 bytes of each block: d, (m), qh */
                const __mmask8 m0 = blocks >= 8 ? (__mmask8)0xff : (__mmask8)((1u << blocks) - 1);
                const __mmask8 m1 = blocks > 8 ? (__mmask8)((1u << (blocks - 8)) - 1) : 0;
                const __m512i g0 = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), m0, _mm512_castsi512_si256(offsets), a, 1);
                const __m512i g1 = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), m1, _mm512_castsi512_si256(offsets), a + 8 * bb, 1);
                heads = _mm512_permutex2var_epi8(g0, table(HEADS8), g1);
                _mm512_store_si512((void *)fifth[i], _mm512_permutex2var_epi8(g0, table(type == TYPE_Q5_0 ? FIFTH8_Q5_0 : FIFTH8_Q5_1), g1));
            }
            const __m512 d = _mm512_cvtph_ps(_mm512_castsi512_si256(heads));
            scales16[i] = _mm512_mul_ps(d, _mm512_load_ps(xd + b0));
            if (with_bias) a1[i] = _mm512_fmadd_ps(scales16[i], _mm512_load_ps(xbias + b0), a1[i]);
            if (with_min) {
                const __m512 m = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(heads, 1));
                a1[i] = _mm512_fmadd_ps(m, _mm512_load_ps(xs + b0), a1[i]);
            }
        }
        const uint8_t * a = row + (size_t)b0 * bb;
        if (type != TYPE_Q8_0) { /* xq in nibble order: 128 bytes per group of 4 blocks */
            if (blocks == 16) { /* the common case, unrolled: no branch per group */
                for (int k = 0; k < 4; k += 2) {
                    for (int i = 0; i < R; i++) {
                        const uint8_t * ai = a + (size_t)i * row_bytes + (size_t)(4 * k) * bb;
                        a0[i] = q5_group_decode(type, ai, 4, xq + (b0 / 4 + k) * 128, scales16[i], fifth[i], k, a0[i]);
                        a1[i] = q5_group_decode(type, ai + 4 * bb, 4, xq + (b0 / 4 + k + 1) * 128, scales16[i], fifth[i], k + 1, a1[i]);
                    }
                }
                continue;
            }
            for (int k = 0; 4 * k < blocks; k++) {
                const int nblocks = blocks - 4 * k < 4 ? (int)(blocks - 4 * k) : 4;
                for (int i = 0; i < R; i++) {
                    const uint8_t * ai = a + (size_t)i * row_bytes + (size_t)(4 * k) * bb;
                    if (k & 1) {
                        a1[i] = q5_group_decode(type, ai, nblocks, xq + (b0 / 4 + k) * 128, scales16[i], fifth[i], k, a1[i]);
                    } else {
                        a0[i] = q5_group_decode(type, ai, nblocks, xq + (b0 / 4 + k) * 128, scales16[i], fifth[i], k, a0[i]);
                    }
                }
            }
        } else if (blocks == 16) {
            for (int p = 0; p < 8; p += 2) {
                for (int i = 0; i < R; i++) {
                    const uint8_t * ai = a + (size_t)i * row_bytes;
                    a0[i] = q_pair_decode(type, ai + (size_t)(2 * p) * bb, 1, xq + (g + p) * 64, scales16[i], p, a0[i]);
                    a1[i] = q_pair_decode(type, ai + (size_t)(2 * p + 2) * bb, 1, xq + (g + p + 1) * 64, scales16[i], p + 1, a1[i]);
                }
            }
        } else {
            for (int p = 0; 2 * p < blocks; p++) {
                for (int i = 0; i < R; i++) {
                    a0[i] = q_pair_decode(type, a + (size_t)i * row_bytes + (size_t)(2 * p) * bb, 2 * p + 1 < blocks,
                                          xq + (g + p) * 64, scales16[i], p, a0[i]);
                }
            }
        }
    }
    for (int i = 0; i < R; i++) out[i] = _mm512_reduce_add_ps(_mm512_add_ps(a0[i], a1[i]));
}

/* Decode of Q4_0 and Q4_1 in the row's own byte order (kernels_x86.h, X86_DECODE_RAW): each
 * 64 bytes of the row are one load, an AND (low nibbles) and a shift and an AND (high), and
 * two VPDPBUSD against activations laid out at the codes' byte positions, zero at the block
 * headers, whose codes thus add nothing. No 4-byte lane of the row holds codes of two blocks
 * (a block is 18 or 20 bytes, its header 2 or 4), so lane i belongs to block 4i / bb: 32
 * blocks are 9 (Q4_0) or 10 (Q4_1) whole vectors, each lane's scale is picked from the 32
 * gathered ones by one two-source permute, and no byte permute runs at all. Against reading
 * them as q5_group_decode does (benchmarks/kernel_speed.c, 2048 columns, one thread): 1.19-1.35x
 * the rate in L2, 1.2-1.39x at 50 MB, 1.13-1.26x from memory. Q8_0 read the same way (17
 * vectors per 32 blocks, an XOR instead of the nibble split) ran at 0.73-0.75x of its pairs
 * of blocks in L2, and keeps them. */
#define RAW_LANE(i, bb) (4 * (i) / (bb))
#define RAW_LANES(v, bb)                                                                                                    \
    {RAW_LANE(16 * (v), bb),      RAW_LANE(16 * (v) + 1, bb),  RAW_LANE(16 * (v) + 2, bb),  RAW_LANE(16 * (v) + 3, bb),  \
     RAW_LANE(16 * (v) + 4, bb),  RAW_LANE(16 * (v) + 5, bb),  RAW_LANE(16 * (v) + 6, bb),  RAW_LANE(16 * (v) + 7, bb),  \
     RAW_LANE(16 * (v) + 8, bb),  RAW_LANE(16 * (v) + 9, bb),  RAW_LANE(16 * (v) + 10, bb), RAW_LANE(16 * (v) + 11, bb), \
     RAW_LANE(16 * (v) + 12, bb), RAW_LANE(16 * (v) + 13, bb), RAW_LANE(16 * (v) + 14, bb), RAW_LANE(16 * (v) + 15, bb)}
static const int32_t RAW_LANES_Q4_0[9][16] __attribute__((aligned(64))) = {
    RAW_LANES(0, 18), RAW_LANES(1, 18), RAW_LANES(2, 18), RAW_LANES(3, 18), RAW_LANES(4, 18),
    RAW_LANES(5, 18), RAW_LANES(6, 18), RAW_LANES(7, 18), RAW_LANES(8, 18)};
static const int32_t RAW_LANES_Q4_1[10][16] __attribute__((aligned(64))) = {
    RAW_LANES(0, 20), RAW_LANES(1, 20), RAW_LANES(2, 20), RAW_LANES(3, 20), RAW_LANES(4, 20),
    RAW_LANES(5, 20), RAW_LANES(6, 20), RAW_LANES(7, 20), RAW_LANES(8, 20), RAW_LANES(9, 20)};

INLINE void q4_raw_rows_decode(int type, int R, const uint8_t * row, size_t row_bytes, const xq_layout * L, const int8_t * xq,
                               const float * xd, const float * xbias, const float * xs, float * out) {
    const size_t bb = q_block_bytes(type);
    const int with_min = type == TYPE_Q4_1;
    const int64_t per_group = (int64_t)(32 * bb / 64); /* vectors per 32 blocks */
    const int32_t(*lanes)[16] = type == TYPE_Q4_0 ? RAW_LANES_Q4_0 : RAW_LANES_Q4_1;
    const size_t bytes = (size_t)L->nb * bb;
    const int64_t vectors = (int64_t)((bytes + 63) / 64);
    const __mmask64 last = bytes % 64 ? ((__mmask64)1 << (bytes % 64)) - 1 : ~(__mmask64)0;
    const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32((int)bb));
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    __m512 a0[2], a1[2];
    for (int i = 0; i < R; i++) a0[i] = a1[i] = _mm512_setzero_ps();
    for (int64_t b0 = 0; b0 < L->nb; b0 += 32) {
        __m512 scales[2][2]; /* [row][half] */
        for (int h = 0; h < 2; h++) {
            const int64_t blocks = L->nb - b0 - 16 * h;
            const __mmask16 mask = blocks >= 16 ? (__mmask16)0xffff : blocks > 0 ? (__mmask16)((1u << blocks) - 1) : 0;
            for (int i = 0; i < R; i++) {
                scales[i][h] = _mm512_setzero_ps();
                if (!mask) continue;
                /* the first 4 bytes of each block: d, then m (Q4_1) */
                const uint8_t * a = row + (size_t)i * row_bytes + (size_t)(b0 + 16 * h) * bb;
                const __m512i heads = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, offsets, a, 1);
                scales[i][h] = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(heads)), _mm512_load_ps(xd + b0 + 16 * h));
                if (with_min) {
                    const __m512 m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(heads, 16)));
                    a1[i] = _mm512_fmadd_ps(m, _mm512_load_ps(xs + b0 + 16 * h), a1[i]);
                } else {
                    a1[i] = _mm512_fmadd_ps(scales[i][h], _mm512_load_ps(xbias + b0 + 16 * h), a1[i]);
                }
            }
        }
        const int64_t v0 = b0 * (int64_t)bb / 64;
        const int64_t nv = vectors - v0 < per_group ? vectors - v0 : per_group;
        for (int64_t v = 0; v < nv; v++) {
            const __m512i x_lo = _mm512_load_si512((const void *)(xq + (v0 + v) * 128));
            const __m512i x_hi = _mm512_load_si512((const void *)(xq + (v0 + v) * 128 + 64));
            const __m512i lane = _mm512_load_si512((const void *)lanes[v]);
            for (int i = 0; i < R; i++) {
                const uint8_t * a = row + (size_t)i * row_bytes + (size_t)(v0 + v) * 64;
                _mm_prefetch((const char *)(a + RAW_PREFETCH), _MM_HINT_T0);
                _mm_prefetch((const char *)(a + RAW_PREFETCH_L2), _MM_HINT_T1);
                const __m512i raw = v0 + v + 1 < vectors ? _mm512_loadu_si512((const void *)a) : _mm512_maskz_loadu_epi8(last, a);
                const __m512i lo = _mm512_and_si512(raw, nibble), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
                const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, x_lo), hi, x_hi);
                const __m512 scale = _mm512_permutex2var_ps(scales[i][0], lane, scales[i][1]);
                if (v & 1) {
                    a1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, a1[i]);
                } else {
                    a0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, a0[i]);
                }
            }
        }
    }
    for (int i = 0; i < R; i++) out[i] = _mm512_reduce_add_ps(_mm512_add_ps(a0[i], a1[i]));
}

/* ---- sequence mode: weight panels ----
 * A panel is 16 rows x PANEL_BLOCKS blocks, unpacked once and laid out so that one vector
 * holds 4 codes of each of the 16 rows: VPDPBUSD with 4 bytes of one token broadcast then
 * advances 16 row sums at once, and the block scales of the 16 rows form one vector. Per
 * token and block that is 8 VPDPBUSD and 3 float operations for 512 multiply-adds, and the
 * 16 sums of a token are 16 consecutive outputs (no horizontal sums). The panel (20 KB)
 * stays in L1 while every token of the chunk passes over it. */
enum { PANEL_BLOCKS = 32, PANEL_TOKENS = 8 };

typedef struct q_panel {
    __m512i codes[PANEL_BLOCKS + 1][8]; /* [block][4-value group] -> dword i = row i (+1: odd tail) */
    __m512 scales[PANEL_BLOCKS + 1];    /* lane i: d of row i */
    __m512 mins[PANEL_BLOCKS + 1];      /* lane i: m of row i (_1 types) */
} q_panel;

/* Transposes 16 vectors of 16 dwords in place: out[j] lane i = in[i] lane j. */
INLINE void transpose16(__m512i v[16]) {
    __m512i a[16], b[16];
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* b[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3 */
        b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
        b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
        b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) { /* a 4 x 4 transpose of 128-bit lanes */
        const __m512i s0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), s1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xee);
        const __m512i s2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44), s3 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xee);
        v[c] = _mm512_shuffle_i32x4(s0, s2, 0x88);
        v[4 + c] = _mm512_shuffle_i32x4(s0, s2, 0xdd);
        v[8 + c] = _mm512_shuffle_i32x4(s1, s3, 0x88);
        v[12 + c] = _mm512_shuffle_i32x4(s1, s3, 0xdd);
    }
}

/* Unpacks rows [r, r + nr) (nr <= 16), blocks [b0, b1) into the panel. */
INLINE void q_panel_fill(int type, q_panel * panel, const uint8_t * w, size_t row_bytes, int64_t r, int nr, int64_t b0,
                         int64_t b1, int64_t nb) {
    const size_t bb = q_block_bytes(type);
    const int nblocks = (int)(b1 - b0);
    float * scales = (float *)panel->scales;
    float * mins = (float *)panel->mins;
    for (int b = 0; b < nblocks; b += 2) {
        const int64_t block = b0 + b;
        const int both = block + 1 < nb && b + 1 < nblocks;
        __m512i codes[16];
        for (int i = 0; i < 16; i++) {
            if (i >= nr) {
                codes[i] = _mm512_setzero_si512();
                scales[b * 16 + i] = scales[(b + 1) * 16 + i] = 0.0f;
                mins[b * 16 + i] = mins[(b + 1) * 16 + i] = 0.0f;
                continue;
            }
            const uint8_t * a = w + (size_t)(r + i) * row_bytes + (size_t)block * bb;
            __m512 d;
            q_unpack(type, a, both, &codes[i], &d, NULL);
            scales[b * 16 + i] = _cvtsh_ss(load_u16(a));
            scales[(b + 1) * 16 + i] = both ? _cvtsh_ss(load_u16(a + bb)) : 0.0f;
            if (type == TYPE_Q4_1 || type == TYPE_Q5_1) {
                mins[b * 16 + i] = _cvtsh_ss(load_u16(a + 2));
                mins[(b + 1) * 16 + i] = both ? _cvtsh_ss(load_u16(a + bb + 2)) : 0.0f;
            }
        }
        /* dword g of the pair is group g % 8 of block b + g / 8 */
        transpose16(codes);
        for (int g = 0; g < 16; g++) panel->codes[b + g / 8][g % 8] = codes[g];
    }
}

/* y rows [r, r + nr) of tokens [t, t + TT) (+)= panel x activations of blocks [b0, b1). */
INLINE void q_panel_apply(int type, int TT, const q_panel * panel, const xq_layout * L, const int8_t * xq,
                          const xq_scale * xs, const float * s, int t, int64_t b0, int64_t b1, int64_t r, int nr,
                          int first, float * y, int64_t ldy) {
    const int with_min = type == TYPE_Q4_1 || type == TYPE_Q5_1;
    const int with_bias = type == TYPE_Q4_0 || type == TYPE_Q5_0 || type == TYPE_Q8_0;
    __m512 acc[PANEL_TOKENS];
    for (int j = 0; j < TT; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t b = b0; b < b1; b++) {
        const int pb = (int)(b - b0);
        __m512i dot[PANEL_TOKENS];
        for (int j = 0; j < TT; j++) {
            dot[j] = with_bias ? _mm512_set1_epi32(xs[(size_t)(t + j) * L->np + b / 2].bias[b & 1]) : _mm512_setzero_si512();
        }
        for (int g = 0; g < 8; g++) {
            const __m512i codes = panel->codes[pb][g];
            for (int j = 0; j < TT; j++) {
                const int32_t x4 = (int32_t)load_u32(xq + (size_t)(t + j) * L->qstride + (size_t)b * 32 + (size_t)g * 4);
                dot[j] = _mm512_dpbusd_epi32(dot[j], codes, _mm512_set1_epi32(x4));
            }
        }
        for (int j = 0; j < TT; j++) {
            const __m512 dx = _mm512_set1_ps(xs[(size_t)(t + j) * L->np + b / 2].d[b & 1]);
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[j]), _mm512_mul_ps(panel->scales[pb], dx), acc[j]);
            if (with_min) acc[j] = _mm512_fmadd_ps(panel->mins[pb], _mm512_set1_ps(s[(size_t)(t + j) * L->nbs + b]), acc[j]);
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

INLINE void q_matmul_panels(int type, const uint8_t * w, size_t row_bytes, const xq_layout * L, const void * xp, int T,
                            float * y, int64_t ldy, int64_t r0, int64_t r1) {
    const int8_t * xq = (const int8_t *)xp;
    const xq_scale * xs = (const xq_scale *)((const uint8_t *)xp + L->sc_off);
    const float * s = (const float *)((const uint8_t *)xp + L->s_off);
    q_panel panel;
    for (int64_t b0 = 0; b0 < L->nb; b0 += PANEL_BLOCKS) {
        const int64_t b1 = b0 + PANEL_BLOCKS < L->nb ? b0 + PANEL_BLOCKS : L->nb;
        const int first = b0 == 0;
        for (int64_t r = r0; r < r1; r += 16) {
            const int nr = r1 - r < 16 ? (int)(r1 - r) : 16;
            q_panel_fill(type, &panel, w, row_bytes, r, nr, b0, b1, L->nb);
            int t = 0;
            for (; t + 8 <= T; t += 8) q_panel_apply(type, 8, &panel, L, xq, xs, s, t, b0, b1, r, nr, first, y, ldy);
            for (; t + 4 <= T; t += 4) q_panel_apply(type, 4, &panel, L, xq, xs, s, t, b0, b1, r, nr, first, y, ldy);
            for (; t < T; t++) q_panel_apply(type, 1, &panel, L, xq, xs, s, t, b0, b1, r, nr, first, y, ldy);
        }
    }
}

/* Decode of R rows with one token, by the layout the activations were prepared in. */
INLINE void decode_rows(int type, int R, const uint8_t * row, size_t row_bytes, const xq_layout * L, const int8_t * xq,
                        const float * xd, const float * xbias, const float * xs, float * out) {
    if (L->raw) {
        q4_raw_rows_decode(type, R, row, row_bytes, L, xq, xd, xbias, xs, out);
    } else {
        q_rows_decode(type, R, row, row_bytes, L, xq, xd, xbias, xs, out);
    }
}

INLINE void q_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                     int64_t ldy, int64_t r0, int64_t r1) {
    const xq_layout L = xq_layout_of(type, n, T, X86_DECODE_RAW);
    const int8_t * xq = (const int8_t *)xp;
    if (L.xe_off) {
        /* decode: one row at a time, so the hardware prefetcher sees a single stream */
        const float * xd = (const float *)((const uint8_t *)xp + L.xe_off);
        const float * xs_min = (const float *)((const uint8_t *)xp + L.s_off);
        int64_t r = r0;
        if (T == 1 && n <= Q_DECODE_PAIR_COLS && type != TYPE_Q8_0) {
            for (; r + 2 <= r1; r += 2) {
                float out[2];
                decode_rows(type, 2, w + (size_t)r * row_bytes, row_bytes, &L, xq, xd, xd + L.nbs, xs_min, out);
                y[r] = out[0];
                y[r + 1] = out[1];
            }
        }
        for (; r < r1; r++) {
            const uint8_t * row = w + (size_t)r * row_bytes;
            for (int t = 0; t < T; t++) {
                const float * d = xd + (size_t)t * L.nbs * 2;
                decode_rows(type, 1, row, row_bytes, &L, xq + (size_t)t * L.qstride, d, d + L.nbs, xs_min + (size_t)t * L.nbs,
                            &y[(size_t)t * ldy + r]);
            }
        }
        return;
    }
    q_matmul_panels(type, w, row_bytes, &L, xp, T, y, ldy, r0, r1);
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

INLINE __m512 f_load(int type, const uint8_t * row, int64_t k, __mmask16 mask, int masked) {
    if (type == TYPE_BF16) { /* the upper half of a float32 */
        const uint8_t * p = row + (size_t)k * 2;
        const __m256i h = masked ? _mm256_maskz_loadu_epi16(mask, p) : _mm256_loadu_si256((const __m256i *)p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (type == TYPE_FP16) {
        const uint8_t * p = row + (size_t)k * 2;
        return _mm512_cvtph_ps(masked ? _mm256_maskz_loadu_epi16(mask, p) : _mm256_loadu_si256((const __m256i *)p));
    }
    const float * p = (const float *)(row + (size_t)k * 4);
    return masked ? _mm512_maskz_loadu_ps(mask, p) : _mm512_loadu_ps(p);
}

/* Sequence mode for float weights (X86_XT_MIN_T tokens and more): the activations come
 * transposed (kernels_x86.h), one vector = one column of 16 tokens. A group of RG rows is
 * converted to float32 XT_COLS columns at a time into a buffer in L1 (no transposing: FP16
 * conversion is 1 instruction per 16 weights, each then used for every token), and each
 * weight is broadcast against TV token vectors: RG x TV accumulators (24 of the 32 registers),
 * per column TV vector loads and RG broadcasts for RG x TV FMAs, so the FMA units, not the
 * loads, bound the loop. Sums go to a tile of XT_ROWS rows x 64 tokens that is written out
 * (transposed) once all columns are done; a block of columns of the activations (XT_COLS x 64
 * tokens, 32 KB) stays in L1 while the rows of the tile pass over it. */
enum { XT_COLS = 128, XT_ROWS = 48, XT_TOKENS = 64 };

/* len (<= XT_COLS) weights of a row from column k0, as float32 into dst (zeros up to a
 * multiple of 16), and a prefetch into L2 of every cache line of the row's block of columns
 * XT_AHEAD blocks later. The hardware prefetcher does not follow a tile's 48 row streams (one
 * 4 KiB page each at 2048 FP16 columns); fetching only part of the block, or only the next
 * one, left FP16 prompts at the 1.5B shape 5-10% slower (benchmarks/engine.py). */
enum { XT_AHEAD = 2 };

INLINE void xt_convert(int type, float * dst, const uint8_t * row, int64_t k0, int64_t len) {
    const size_t wb = x86_float_bytes(type);
    x86_prefetch_lines(row + (size_t)(k0 + XT_AHEAD * XT_COLS) * wb, XT_COLS * wb, 0);
    int64_t k = 0;
    for (; k + 16 <= len; k += 16) _mm512_store_ps(dst + k, f_load(type, row, k0 + k, 0xffff, 0));
    if (k < len) _mm512_store_ps(dst + k, f_load(type, row, k0 + k, (__mmask16)((1u << (len - k)) - 1), 1));
}

/* RG rows (weights in wb, stride XT_COLS) x TV token vectors over len columns of xt (stride
 * ts floats per column), into the tile (stride XT_TOKENS): stored when first, else added. */
INLINE void xt_micro(int RG, int TV, const float * wb, const float * xt, int64_t ts, int64_t len, float * tile, int first) {
    __m512 acc[24];
    for (int i = 0; i < RG * TV; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < len; k++) {
        __m512 xv[4];
        for (int v = 0; v < TV; v++) xv[v] = _mm512_load_ps(xt + (size_t)k * ts + 16 * v);
        for (int i = 0; i < RG; i++) {
            const __m512 wv = _mm512_set1_ps(wb[i * XT_COLS + k]);
            for (int v = 0; v < TV; v++) acc[i * TV + v] = _mm512_fmadd_ps(wv, xv[v], acc[i * TV + v]);
        }
    }
    for (int i = 0; i < RG; i++) {
        for (int v = 0; v < TV; v++) {
            float * out = tile + i * XT_TOKENS + 16 * v;
            _mm512_store_ps(out, first ? acc[i * TV + v] : _mm512_add_ps(acc[i * TV + v], _mm512_load_ps(out)));
        }
    }
}

/* Rows [rb, rb + nr) (nr <= XT_ROWS) with TV token vectors from token t0, columns [c0, c1). */
INLINE void xt_rows(int type, int TV, int RG, const uint8_t * w, size_t row_bytes, int64_t c0, int64_t c1, const float * x,
                    int64_t ts, int64_t t0, int64_t rb, int64_t nr, float * wbuf, float * tile) {
    const size_t wb = x86_float_bytes(type);
    for (int64_t k0 = c0; k0 < c1; k0 += XT_COLS) {
        const int64_t len = c1 - k0 < XT_COLS ? c1 - k0 : XT_COLS;
        const float * xt = x + (size_t)k0 * ts + t0;
        for (int64_t g = 0; g < nr; g += RG) {
            const int64_t ng = nr - g < RG ? nr - g : RG;
            for (int64_t i = 0; i < ng; i++) {
                const uint8_t * row = w + (size_t)(rb + g + i) * row_bytes;
                xt_convert(type, wbuf + i * XT_COLS, row, k0, len);
                if (k0 == c0) { /* the first XT_AHEAD blocks of the next tile's rows */
                    x86_prefetch_lines(row + (size_t)XT_ROWS * row_bytes + (size_t)c0 * wb, XT_AHEAD * XT_COLS * wb, 0);
                }
            }
            x86_xt_prefetch_next(type, w, row_bytes, rb, nr, g, RG, k0, XT_COLS, c1);
            /* a short last group keeps its rows in one pass (one row alone would leave TV
             * accumulators, too few to cover the FMA latency) */
            float * tg = tile + g * XT_TOKENS;
            switch (ng == RG ? 0 : ng) {
            case 0: xt_micro(RG, TV, wbuf, xt, ts, len, tg, k0 == c0); break;
            case 1: xt_micro(1, TV, wbuf, xt, ts, len, tg, k0 == c0); break;
            case 2: xt_micro(2, TV, wbuf, xt, ts, len, tg, k0 == c0); break;
            case 3: xt_micro(3, TV, wbuf, xt, ts, len, tg, k0 == c0); break;
            case 4: xt_micro(4, TV, wbuf, xt, ts, len, tg, k0 == c0); break;
            case 5: xt_micro(5, TV, wbuf, xt, ts, len, tg, k0 == c0); break;
            default:
                for (int64_t i = 0; i < ng; i++) xt_micro(1, TV, wbuf + i * XT_COLS, xt, ts, len, tile + (g + i) * XT_TOKENS, k0 == c0);
                break;
            }
        }
    }
}

/* Columns in chunks whose activations (XT_CHUNK x 64 tokens, 512 KB) stay in L2 while every
 * row passes over them; each chunk's sums are added to y. */
enum { XT_CHUNK = 2048 };

/* The transposed activations of kernels_x86.h, columns [k_begin, k_end) (k_begin a multiple
 * of 16), 16 x 16 tiles at a time. */
X86_TARGET static void xt_prepare(const float * x, int64_t n, int T, float * out, int64_t k_begin, int64_t k_end) {
    const int64_t ts = x86_round16(T);
    for (int64_t k0 = k_begin; k0 < k_end; k0 += 16) {
        const int64_t kn = n - k0 < 16 ? n - k0 : 16;
        const __mmask16 kmask = (__mmask16)((1u << kn) - 1);
        for (int64_t t0 = 0; t0 < ts; t0 += 16) {
            __m512i v[16];
            for (int t = 0; t < 16; t++) {
                v[t] = t0 + t < T ? _mm512_maskz_loadu_epi32(kmask, x + (size_t)(t0 + t) * n + k0) : _mm512_setzero_si512();
            }
            transpose16(v);
            for (int64_t k = 0; k < kn; k++) _mm512_store_si512((void *)(out + (size_t)(k0 + k) * ts + t0), v[k]);
        }
    }
}

/* y (+)= the tile: rows [rb, rb + nr), tokens [t0, t0 + tn), 16 x 16 transposes. */
INLINE void xt_store_tile(const float * tile, float * y, int64_t ldy, int64_t t0, int64_t tn, int64_t rb, int64_t nr, int first) {
    for (int64_t ib = 0; ib < nr; ib += 16) {
        const __mmask16 mask = nr - ib >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nr - ib)) - 1);
        for (int64_t tb = 0; tb < tn; tb += 16) {
            __m512i v[16];
            for (int j = 0; j < 16; j++) v[j] = _mm512_load_si512((const void *)(tile + (ib + j) * XT_TOKENS + tb));
            transpose16(v);
            const int64_t cn = tn - tb < 16 ? tn - tb : 16;
            for (int64_t c = 0; c < cn; c++) {
                float * out = y + (size_t)(t0 + tb + c) * ldy + rb + ib;
                __m512 val = _mm512_castsi512_ps(v[c]);
                if (!first) val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(mask, out));
                _mm512_mask_storeu_ps(out, mask, val);
            }
        }
    }
}

INLINE void f_matmul_xt(int type, const uint8_t * w, size_t row_bytes, int64_t n, const float * x, int T, float * y,
                        int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t ts = x86_round16(T);
    float wbuf[12 * XT_COLS] __attribute__((aligned(64)));
    float tile[XT_ROWS * XT_TOKENS] __attribute__((aligned(64)));
    for (int64_t t0 = 0; t0 < ts; t0 += XT_TOKENS) {
        const int TV = ts - t0 >= XT_TOKENS ? 4 : (int)((ts - t0) / 16);
        const int64_t tn = T - t0 < XT_TOKENS ? T - t0 : XT_TOKENS;
        for (int64_t c0 = 0; c0 < n; c0 += XT_CHUNK) {
            const int64_t c1 = c0 + XT_CHUNK < n ? c0 + XT_CHUNK : n;
            for (int64_t rb = r0; rb < r1; rb += XT_ROWS) {
                const int64_t nr = r1 - rb < XT_ROWS ? r1 - rb : XT_ROWS;
                switch (TV) {
                case 4: xt_rows(type, 4, 6, w, row_bytes, c0, c1, x, ts, t0, rb, nr, wbuf, tile); break;
                case 3: xt_rows(type, 3, 8, w, row_bytes, c0, c1, x, ts, t0, rb, nr, wbuf, tile); break;
                case 2: xt_rows(type, 2, 12, w, row_bytes, c0, c1, x, ts, t0, rb, nr, wbuf, tile); break;
                default: xt_rows(type, 1, 12, w, row_bytes, c0, c1, x, ts, t0, rb, nr, wbuf, tile); break;
                }
                xt_store_tile(tile, y, ldy, t0, tn, rb, nr, c0 == 0);
            }
        }
    }
}

/* Decode: one row with one token, 4 independent sums to cover the FMA latency. */
INLINE float f_row_decode(int type, const uint8_t * row, int64_t n, const float * x) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    const size_t wb = x86_float_bytes(type);
    int64_t k = 0;
    for (; k + 64 <= n; k += 64) {
        x86_prefetch_lines(row + (size_t)k * wb + F_PREFETCH, 64 * wb, 1);
        x86_prefetch_lines(row + (size_t)k * wb + F_PREFETCH_L2, 64 * wb, 0);
        a0 = _mm512_fmadd_ps(f_load(type, row, k, 0xffff, 0), _mm512_load_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(f_load(type, row, k + 16, 0xffff, 0), _mm512_load_ps(x + k + 16), a1);
        a2 = _mm512_fmadd_ps(f_load(type, row, k + 32, 0xffff, 0), _mm512_load_ps(x + k + 32), a2);
        a3 = _mm512_fmadd_ps(f_load(type, row, k + 48, 0xffff, 0), _mm512_load_ps(x + k + 48), a3);
    }
    for (; k + 16 <= n; k += 16) a0 = _mm512_fmadd_ps(f_load(type, row, k, 0xffff, 0), _mm512_load_ps(x + k), a0);
    if (k < n) a1 = _mm512_fmadd_ps(f_load(type, row, k, (__mmask16)((1u << (n - k)) - 1), 1), _mm512_load_ps(x + k), a1);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* Decode, two rows at once: each activation vector loaded serves both rows. For rows whose
 * activations do not fit L1 (16 KB and more), reading them once per row costs more than
 * the second weight stream (2 threads, 2048 x 8192 FP16: 25 -> 28 GB/s; rows of 2048 or
 * fewer columns lose with two streams: 33 -> 26 GB/s). */
INLINE void f_rows2_decode(int type, const uint8_t * row0, const uint8_t * row1, int64_t n, const float * x, float * y0,
                           float * y1) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    const size_t wb = x86_float_bytes(type);
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        x86_prefetch_lines(row0 + (size_t)k * wb + F_PREFETCH, 32 * wb, 1);
        x86_prefetch_lines(row1 + (size_t)k * wb + F_PREFETCH, 32 * wb, 1);
        x86_prefetch_lines(row0 + (size_t)k * wb + F_PREFETCH_L2, 32 * wb, 0);
        x86_prefetch_lines(row1 + (size_t)k * wb + F_PREFETCH_L2, 32 * wb, 0);
        const __m512 x0 = _mm512_load_ps(x + k), x1 = _mm512_load_ps(x + k + 16);
        a0 = _mm512_fmadd_ps(f_load(type, row0, k, 0xffff, 0), x0, a0);
        b0 = _mm512_fmadd_ps(f_load(type, row1, k, 0xffff, 0), x0, b0);
        a1 = _mm512_fmadd_ps(f_load(type, row0, k + 16, 0xffff, 0), x1, a1);
        b1 = _mm512_fmadd_ps(f_load(type, row1, k + 16, 0xffff, 0), x1, b1);
    }
    for (; k < n; k += 16) {
        const int left = n - k < 16 ? (int)(n - k) : 16;
        const __mmask16 mask = (__mmask16)((1u << left) - 1);
        const __m512 x0 = _mm512_load_ps(x + k);
        a0 = _mm512_fmadd_ps(f_load(type, row0, k, mask, left < 16), x0, a0);
        b0 = _mm512_fmadd_ps(f_load(type, row1, k, mask, left < 16), x0, b0);
    }
    *y0 = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    *y1 = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1));
}

/* A few tokens at once in the order of decoding: a row (or a pair of rows, as decode pairs
 * them) is streamed once and stays in L1 while groups of up to F_GROUP tokens pass over it,
 * each (row, token) sum keeping the accumulators and final reduction of f_row_decode (or
 * f_rows2_decode), so every result equals decoding that token alone: a batch of sequences
 * gives the same numbers as decoding each alone. One FP16 conversion serves a group's tokens
 * and nothing is transposed. Measured on one thread against the panels: the 65536 x 768 FP16
 * head 2.5x faster at 4 tokens, 1.5x at 16; 768 x 768 and 768 x 3072 FP16 1.2-1.3x at 16; in
 * the engine's sequence mode 6% faster at 16-token chunks but 12% slower at 32 (and 28% at
 * 64), hence the token-vector kernel (f_matmul_xt) from X86_XT_MIN_T tokens on. */
enum { F_GROUP = 6 };

INLINE void f_row_tokens(int type, int G, const uint8_t * row, int64_t n, const float * x, int64_t ns, float * y, int64_t ldy) {
    __m512 a0[F_GROUP], a1[F_GROUP], a2[F_GROUP], a3[F_GROUP];
    for (int t = 0; t < G; t++) a0[t] = a1[t] = a2[t] = a3[t] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= n; k += 64) {
        const __m512 w0 = f_load(type, row, k, 0xffff, 0), w1 = f_load(type, row, k + 16, 0xffff, 0);
        const __m512 w2 = f_load(type, row, k + 32, 0xffff, 0), w3 = f_load(type, row, k + 48, 0xffff, 0);
        for (int t = 0; t < G; t++) {
            const float * xt = x + (size_t)t * ns + k;
            a0[t] = _mm512_fmadd_ps(w0, _mm512_load_ps(xt), a0[t]);
            a1[t] = _mm512_fmadd_ps(w1, _mm512_load_ps(xt + 16), a1[t]);
            a2[t] = _mm512_fmadd_ps(w2, _mm512_load_ps(xt + 32), a2[t]);
            a3[t] = _mm512_fmadd_ps(w3, _mm512_load_ps(xt + 48), a3[t]);
        }
    }
    for (; k + 16 <= n; k += 16) {
        const __m512 w0 = f_load(type, row, k, 0xffff, 0);
        for (int t = 0; t < G; t++) a0[t] = _mm512_fmadd_ps(w0, _mm512_load_ps(x + (size_t)t * ns + k), a0[t]);
    }
    if (k < n) {
        const __m512 w1 = f_load(type, row, k, (__mmask16)((1u << (n - k)) - 1), 1);
        for (int t = 0; t < G; t++) a1[t] = _mm512_fmadd_ps(w1, _mm512_load_ps(x + (size_t)t * ns + k), a1[t]);
    }
    for (int t = 0; t < G; t++) {
        y[(size_t)t * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0[t], a1[t]), _mm512_add_ps(a2[t], a3[t])));
    }
}

INLINE void f_rows2_tokens(int type, int G, const uint8_t * row0, const uint8_t * row1, int64_t n, const float * x, int64_t ns,
                           float * y, int64_t ldy) {
    __m512 a0[F_GROUP], a1[F_GROUP], b0[F_GROUP], b1[F_GROUP];
    for (int t = 0; t < G; t++) a0[t] = a1[t] = b0[t] = b1[t] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        const __m512 v0 = f_load(type, row0, k, 0xffff, 0), v1 = f_load(type, row0, k + 16, 0xffff, 0);
        const __m512 u0 = f_load(type, row1, k, 0xffff, 0), u1 = f_load(type, row1, k + 16, 0xffff, 0);
        for (int t = 0; t < G; t++) {
            const __m512 x0 = _mm512_load_ps(x + (size_t)t * ns + k), x1 = _mm512_load_ps(x + (size_t)t * ns + k + 16);
            a0[t] = _mm512_fmadd_ps(v0, x0, a0[t]);
            b0[t] = _mm512_fmadd_ps(u0, x0, b0[t]);
            a1[t] = _mm512_fmadd_ps(v1, x1, a1[t]);
            b1[t] = _mm512_fmadd_ps(u1, x1, b1[t]);
        }
    }
    for (; k < n; k += 16) {
        const int left = n - k < 16 ? (int)(n - k) : 16;
        const __mmask16 mask = (__mmask16)((1u << left) - 1);
        const __m512 v0 = f_load(type, row0, k, mask, left < 16), u0 = f_load(type, row1, k, mask, left < 16);
        for (int t = 0; t < G; t++) {
            const __m512 x0 = _mm512_load_ps(x + (size_t)t * ns + k);
            a0[t] = _mm512_fmadd_ps(v0, x0, a0[t]);
            b0[t] = _mm512_fmadd_ps(u0, x0, b0[t]);
        }
    }
    for (int t = 0; t < G; t++) {
        y[(size_t)t * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(a0[t], a1[t]));
        y[(size_t)t * ldy + 1] = _mm512_reduce_add_ps(_mm512_add_ps(b0[t], b1[t]));
    }
}

/* Rows [r0, r1) for tokens [t, t + G), G a constant in each inlined copy. */
INLINE void f_rows_group(int type, int G, const uint8_t * w, size_t row_bytes, int64_t n, const float * x, int64_t ns, int t,
                         float * y, int64_t ldy, int64_t r0, int64_t r1) {
    const float * xt = x + (size_t)t * ns;
    float * yt = y + (size_t)t * ldy;
    int64_t r = r0;
    if (n > F_DECODE_PAIR_COLS) {
        for (; r + 2 <= r1; r += 2) {
            f_rows2_tokens(type, G, w + (size_t)r * row_bytes, w + (size_t)(r + 1) * row_bytes, n, xt, ns, yt + r, ldy);
        }
    }
    for (; r < r1; r++) f_row_tokens(type, G, w + (size_t)r * row_bytes, n, xt, ns, yt + r, ldy);
}

INLINE void f_matmul_rows(int type, const uint8_t * w, size_t row_bytes, int64_t n, const float * x, int T, float * y,
                          int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t ns = x86_round16(n);
    /* rows in blocks that stay in L1 across the token groups */
    const int64_t block = n * (type == TYPE_FP16 ? 2 : 4) > 8192 ? 2 : 8;
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
        const int64_t b1 = b0 + block < r1 ? b0 + block : r1;
        int t = 0;
        for (; t + F_GROUP <= T; t += F_GROUP) f_rows_group(type, F_GROUP, w, row_bytes, n, x, ns, t, y, ldy, b0, b1);
        switch (T - t) {
        case 5: f_rows_group(type, 5, w, row_bytes, n, x, ns, t, y, ldy, b0, b1); break;
        case 4: f_rows_group(type, 4, w, row_bytes, n, x, ns, t, y, ldy, b0, b1); break;
        case 3: f_rows_group(type, 3, w, row_bytes, n, x, ns, t, y, ldy, b0, b1); break;
        case 2: f_rows_group(type, 2, w, row_bytes, n, x, ns, t, y, ldy, b0, b1); break;
        case 1: f_rows_group(type, 1, w, row_bytes, n, x, ns, t, y, ldy, b0, b1); break;
        default: break;
        }
    }
}

INLINE void f_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
                     int64_t ldy, int64_t r0, int64_t r1) {
    const float * x = (const float *)xp;
    const int64_t ns = x86_round16(n);
    if (T >= XE_MAX_T && T < X86_XT_MIN_T) {
        f_matmul_rows(type, w, row_bytes, n, x, T, y, ldy, r0, r1);
        return;
    }
    if (T < XE_MAX_T) {
        /* decode: one row at a time, so the hardware prefetcher sees a single stream */
        int64_t r = r0;
        if (n > F_DECODE_PAIR_COLS) {
            for (; r + 2 <= r1; r += 2) {
                for (int t = 0; t < T; t++) {
                    f_rows2_decode(type, w + (size_t)r * row_bytes, w + (size_t)(r + 1) * row_bytes, n, x + (size_t)t * ns,
                                   &y[(size_t)t * ldy + r], &y[(size_t)t * ldy + r + 1]);
                }
            }
        }
        for (; r < r1; r++) {
            for (int t = 0; t < T; t++) y[(size_t)t * ldy + r] = f_row_decode(type, w + (size_t)r * row_bytes, n, x + (size_t)t * ns);
        }
        return;
    }
    f_matmul_xt(type, w, row_bytes, n, x, T, y, ldy, r0, r1);
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

X86_TARGET static void avx512_matmul(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T, float * y,
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
    default: kq_matmul_avx512(type, w, row_bytes, n, xp, T, y, ldy, r0, r1); break;
    }
}


const kernels kernels_avx512 = {
    .exp = x86_exp_array,
    .sigmoid = x86_sigmoid_array,
    .name = "avx512",
    .prepared_bytes = avx512_prepared_bytes,
    .prepare = avx512_prepare,
    .prepare_part = avx512_prepare_part,
    .matmul = avx512_matmul,
};

#endif /* __x86_64__ */
