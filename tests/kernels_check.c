/*
 * kernels_check.c: compares one kernel path with the scalar reference for one tensor type,
 * built and run by tests/test_kernels.py (linked with native/kernels*.c and tensor.c).
 *
 *   kernels_check PATH TYPE      e.g. kernels_check avx512 Q4_1
 *
 * For a list of shapes (odd row and column counts, columns crossing the kernels' chunk
 * sizes, 1..64 tokens) it prints one line per shape:
 *   shape ROWS COLS T rel_err max_ratio exact_ratio
 * rel_err = |y - y_ref| / |y_ref| over the whole product against the scalar path; max_ratio =
 * the largest |y - y_ref| / (|w_r| |x_t|) of one element (a bound that does not depend on the
 * product's own size); exact_ratio = the same against the exact product of the stored
 * weights with the float activations (for quantized weights: the int8 activation error). The weights lie at an odd address and end at most one byte before
 * an unreadable page, so an over-read crashes the check.
 *
 *   kernels_check PATH exp|sigmoid [STRIDE_BITS]
 *
 * sweeps the path's vector function over the whole float range (every 2^STRIDE_BITS-th bit
 * pattern: every 256th by default, fewer under emulation, where time is dear; the special
 * values, 2^20 random patterns and 2^20 random values in [-110, 95]) against expf, or
 * 1 / (1 + e^-x) in double precision rounded to float, and prints
 *   sweep FUNCTION COUNT MAX_ULP WORST_X NAN_MISMATCHES RANGE_MISMATCHES
 * MAX_ULP: the largest distance in units in the last place between results that are not
 * NaN (floats ordered as integers, so subnormals, 0 and infinity count like any other
 * float); NAN_MISMATCHES: inputs where exactly one of result and reference is NaN;
 * RANGE_MISMATCHES (exp): inputs above 88.73 whose result is not infinity, or below -103.98
 * whose result is not 0.
 *
 *   kernels_check PATH TYPE nonfinite
 *
 * multiplies weights of TYPE with tokens whose activations hold a NaN, an infinity, only
 * subnormal values or values near FLT_MAX in one block (token t gets pattern t % 6, for 1, 3,
 * 6 and 9 tokens) and prints per token count
 *   nonfinite T POISONED_FINITE CLEAN_MISMATCHES
 * POISONED_FINITE: outputs of tokens holding NaN or infinity that are finite (they must all be
 * NaN or infinite: an activation quantizer that turns NaN into integer codes gives finite
 * garbage, and undefined behaviour on the way, which a -fsanitize=undefined build reports);
 * CLEAN_MISMATCHES: outputs of the other tokens farther from the scalar path than the product
 * checks allow, or not finite.
 *
 * Exit status 2 = path not available here.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine.h"

#if defined(__x86_64__)
extern const kernels kernels_avx2 __attribute__((weak));
extern const kernels kernels_avx512 __attribute__((weak));
extern const kernels kernels_amx __attribute__((weak));
#endif
#if defined(__aarch64__)
extern const kernels kernels_neon __attribute__((weak));
extern const kernels kernels_neon_dotprod __attribute__((weak));
#endif

static const kernels * find_path(const char * name) {
    if (strcmp(name, "scalar") == 0) return &kernels_scalar;
    const char * available = kernels_available();
    char padded[80];
    snprintf(padded, sizeof padded, " %s ", available);
    char needle[32];
    snprintf(needle, sizeof needle, " %s ", name);
    if (!strstr(padded, needle)) return NULL;
#if defined(__x86_64__)
    if (strcmp(name, "avx2") == 0 && &kernels_avx2) return &kernels_avx2;
    if (strcmp(name, "avx512") == 0 && &kernels_avx512) return &kernels_avx512;
    if (strcmp(name, "amx") == 0 && &kernels_amx) return &kernels_amx;
#endif
#if defined(__aarch64__)
    if (strcmp(name, "neon") == 0 && &kernels_neon) return &kernels_neon;
    if (strcmp(name, "neon_dotprod") == 0 && &kernels_neon_dotprod) return &kernels_neon_dotprod;
#endif
    return NULL;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rng_next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float uniform(void) { /* in [-1, 1) */
    return (float)((rng_next() >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static void * aligned(size_t bytes) {
    void * p = NULL;
    if (posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63)) return NULL;
    return p;
}

/* A K-quant row of random blocks: random codes and packed scales, sane half-precision super-
 * scales (where the format puts them), so every bit of the layout is exercised. */
static void random_kquant_row(int type, uint8_t * dst, int64_t cols) {
    const size_t bb = type_block_bytes(type);
    const int scale_at[][2] = {[TYPE_Q2_K] = {80, 82}, [TYPE_Q3_K] = {108, -1}, [TYPE_Q4_K] = {0, 2}, [TYPE_Q5_K] = {0, 2},
                               [TYPE_Q6_K] = {208, -1}};
    for (int64_t b = 0; b < cols / QKK; b++) {
        uint8_t * blk = dst + (size_t)b * bb;
        for (size_t i = 0; i < bb; i++) blk[i] = (uint8_t)(rng_next() >> 56);
        for (int k = 0; k < 2; k++) {
            if (scale_at[type][k] < 0) continue;
            const uint16_t h = fp32_to_fp16((0.01f + 0.02f * (uniform() + 1.0f)) * (k ? 0.5f : 1.0f));
            memcpy(blk + scale_at[type][k], &h, 2);
        }
    }
}

/* A row of weights in `type`: the values themselves where the type can hold them, random
 * K-quant blocks otherwise (there is no K-quant quantizer in the engine). */
static void store_row(int type, const float * src, uint8_t * dst, int64_t cols) {
    if (type == TYPE_FP32) {
        memcpy(dst, src, (size_t)cols * 4);
    } else if (type == TYPE_FP16) {
        for (int64_t c = 0; c < cols; c++) {
            const uint16_t h = fp32_to_fp16(src[c]);
            memcpy(dst + 2 * c, &h, 2);
        }
    } else if (type == TYPE_BF16) {
        for (int64_t c = 0; c < cols; c++) {
            uint32_t bits;
            memcpy(&bits, &src[c], 4);
            const uint16_t h = (uint16_t)(bits >> 16); /* truncated: any bfloat16 will do */
            memcpy(dst + 2 * c, &h, 2);
        }
    } else if (type_is_kquant(type)) {
        random_kquant_row(type, dst, cols);
    } else {
        quantize_row(type, src, dst, cols);
    }
}

/* Runs one shape; returns 0 on success. */
static int check_shape(const kernels * k, int type, int64_t rows, int64_t cols, int T) {
    const size_t row_bytes = type_row_bytes(type, cols);
    const size_t bytes = row_bytes * (size_t)rows;
    /* weights end exactly where a PROT_NONE page begins, at an odd address */
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t span = ((bytes + 1 + page - 1) / page + 1) * page;
    uint8_t * map = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return 1;
    mprotect(map + span - page, page, PROT_NONE);
    /* end at the guard page; when that start is even, one byte earlier (an odd address) */
    uint8_t * w = map + span - page - bytes;
    if (((uintptr_t)w & 1) == 0) w -= 1;
    float * wf = malloc(sizeof(float) * (size_t)(rows * cols));
    float * x = malloc(sizeof(float) * (size_t)(T * cols));
    for (int64_t i = 0; i < rows * cols; i++) wf[i] = uniform() * (1.0f + (float)(i % 7));
    for (int64_t i = 0; i < T * cols; i++) x[i] = uniform() * ((i / 32) % 5 == 3 ? 0.0f : 1.0f + (float)(i % 3));
    for (int64_t r = 0; r < rows; r++) {
        uint8_t * dst = w + (size_t)r * row_bytes;
        const float * src = wf + r * cols;
        store_row(type, src, dst, cols);
    }
    mprotect(map, span - page, PROT_READ);

    const size_t prep_ref = kernels_scalar.prepared_bytes(type, cols, T);
    const size_t prep = k->prepared_bytes(type, cols, T);
    void * xp_ref = aligned(prep_ref);
    void * xp = aligned(prep);
    const int64_t ldy = rows + 3;
    float * y_ref = calloc((size_t)(T * ldy), sizeof(float));
    float * y = calloc((size_t)(T * ldy), sizeof(float));
    for (int64_t i = 0; i < T * ldy; i++) y[i] = y_ref[i] = 12345.0f; /* untouched padding keeps this */
    kernels_scalar.prepare(type, x, cols, T, xp_ref);
    kernels_scalar.matmul(type, w, row_bytes, cols, xp_ref, T, y_ref, ldy, 0, rows);
    memset(xp, 0x5a, prep);
    k->prepare(type, x, cols, T, xp);
    /* a preparation cut into parts (as a context's threads run them, in any order) writes the
     * same bytes as one call */
    int parts_differ = 0;
    if (k->prepare_part) {
        void * xp_parts = aligned(prep);
        memset(xp_parts, 0x5a, prep);
        for (int part = 2; part >= 0; part--) k->prepare_part(type, x, cols, T, xp_parts, part, 3);
        parts_differ = memcmp(xp, xp_parts, prep) != 0;
        free(xp_parts);
    }
    /* two row ranges, as two threads would split them */
    const int64_t split = rows > 16 ? 16 : rows / 2;
    k->matmul(type, w, row_bytes, cols, xp, T, y, ldy, 0, split);
    k->matmul(type, w, row_bytes, cols, xp, T, y, ldy, split, rows);

    float * deq = malloc(sizeof(float) * (size_t)cols);
    double diff2 = 0, ref2 = 0, max_ratio = 0, exact_ratio = 0;
    int bad_padding = 0;
    for (int64_t r = 0; r < rows; r++) {
        dequantize_row(type, w + (size_t)r * row_bytes, deq, cols);
        double wn = 0;
        for (int64_t c = 0; c < cols; c++) wn += (double)deq[c] * deq[c];
        for (int t = 0; t < T; t++) {
            double xn = 0;
            for (int64_t c = 0; c < cols; c++) xn += (double)x[t * cols + c] * x[t * cols + c];
            const double d = (double)y[t * ldy + r] - (double)y_ref[t * ldy + r];
            diff2 += d * d;
            ref2 += (double)y_ref[t * ldy + r] * y_ref[t * ldy + r];
            const double bound = sqrt(wn * xn) + 1e-30;
            if (!(fabs(d) / bound <= max_ratio)) max_ratio = isnan(d) ? INFINITY : fabs(d) / bound;
            double exact = 0;
            for (int64_t c = 0; c < cols; c++) exact += (double)deq[c] * x[t * cols + c];
            const double e = (double)y[t * ldy + r] - exact;
            if (!(fabs(e) / bound <= exact_ratio)) exact_ratio = isnan(e) ? INFINITY : fabs(e) / bound;
        }
    }
    for (int t = 0; t < T; t++)
        for (int64_t r = rows; r < ldy; r++) bad_padding |= y[t * ldy + r] != 12345.0f;
    printf("shape %lld %lld %d %.3e %.3e %.3e%s%s\n", (long long)rows, (long long)cols, T, sqrt(diff2 / (ref2 + 1e-30)),
           max_ratio, exact_ratio, bad_padding ? " wrote-outside-rows" : "", parts_differ ? " prepare-parts-differ" : "");
    free(deq);
    free(y);
    free(y_ref);
    free(xp);
    free(xp_ref);
    free(x);
    free(wf);
    munmap(map, span);
    return bad_padding || parts_differ;
}

/* ---- activations that are not finite ---- */

static int check_nonfinite(const kernels * k, int type) {
    const int64_t rows = 21, cols = type_is_kquant(type) ? 256 * 2 : type_is_quantized(type) ? 32 * 5 : 67;
    const size_t row_bytes = type_row_bytes(type, cols);
    uint8_t * w = malloc(row_bytes * (size_t)rows);
    float * wf = malloc(sizeof(float) * (size_t)cols);
    float * deq = malloc(sizeof(float) * (size_t)cols);
    double * wnorm = malloc(sizeof(double) * (size_t)rows);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) wf[c] = uniform();
        store_row(type, wf, w + (size_t)r * row_bytes, cols);
        dequantize_row(type, w + (size_t)r * row_bytes, deq, cols);
        wnorm[r] = 0;
        for (int64_t c = 0; c < cols; c++) wnorm[r] += (double)deq[c] * deq[c];
    }
    const int Ts[] = {1, 3, 6, 9};
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
        const int T = Ts[ti];
        float * x = malloc(sizeof(float) * (size_t)(T * cols));
        int poisoned[16] = {0}, unchecked[16] = {0};
        for (int t = 0; t < T; t++) {
            float * xt = x + (size_t)t * cols;
            for (int64_t c = 0; c < cols; c++) xt[c] = uniform();
            switch (t % 6) {
            case 1: xt[40] = NAN; poisoned[t] = 1; break;
            case 2: xt[3] = INFINITY; poisoned[t] = 1; break;
            case 3: xt[cols - 1] = -INFINITY; xt[0] = FLT_MAX; poisoned[t] = 1; break;
            case 4: for (int c = 32; c < 64; c++) xt[c] = (c & 1 ? 1e-40f : -3e-39f); break;
            case 5: /* finite, but past half precision's range once divided by 127 (the scale of
                     * int8 activations is a half float, as rwkv.cpp's) and past float's range
                     * summed: any result, but no undefined behaviour */
                for (int c = 0; c < 32; c++) xt[c] = (c & 1 ? 3e38f : -1e38f);
                unchecked[t] = 1;
                break;
            default: break;
            }
        }
        void * xp_ref = aligned(kernels_scalar.prepared_bytes(type, cols, T));
        void * xp = aligned(k->prepared_bytes(type, cols, T));
        float * y_ref = calloc((size_t)(T * rows), sizeof(float));
        float * y = calloc((size_t)(T * rows), sizeof(float));
        kernels_scalar.prepare(type, x, cols, T, xp_ref);
        kernels_scalar.matmul(type, w, row_bytes, cols, xp_ref, T, y_ref, rows, 0, rows);
        k->prepare(type, x, cols, T, xp);
        k->matmul(type, w, row_bytes, cols, xp, T, y, rows, 0, rows);
        long poisoned_finite = 0, clean_mismatches = 0;
        for (int t = 0; t < T; t++) {
            double xn = 0;
            for (int64_t c = 0; c < cols; c++) xn += (double)x[t * cols + c] * x[t * cols + c];
            for (int64_t r = 0; r < rows; r++) {
                const float v = y[t * rows + r], ref = y_ref[t * rows + r];
                if (poisoned[t]) {
                    poisoned_finite += isfinite(v) || isfinite(ref);
                } else if (!unchecked[t]) {
                    const double bound = 1e-6 * sqrt(wnorm[r] * xn);
                    clean_mismatches += !(isfinite(v) && fabs((double)v - ref) <= bound);
                }
            }
        }
        printf("nonfinite %d %ld %ld\n", T, poisoned_finite, clean_mismatches);
        free(y);
        free(y_ref);
        free(xp);
        free(xp_ref);
        free(x);
    }
    free(wnorm);
    free(deq);
    free(wf);
    free(w);
    return 0;
}

/* ---- exp and sigmoid over the whole float range ---- */

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* floats as integers in the order of their values (-0 and +0 both 0) */
static int64_t ordered(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? -(int64_t)(u & 0x7fffffffu) : (int64_t)u;
}

static int sweep(const kernels * k, const char * function, int stride_bits) {
    const int is_exp = strcmp(function, "exp") == 0;
    if (!is_exp && strcmp(function, "sigmoid") != 0) {
        fprintf(stderr, "unknown function %s\n", function);
        return 1;
    }
    const float specials[] = {NAN, -NAN, float_of(0x7f800001u), float_of(0xffc00001u), INFINITY, -INFINITY, 0.0f, -0.0f,
                              FLT_MIN, -FLT_MIN, float_of(1), float_of(0x80000001u), float_of(0x007fffffu), FLT_MAX, -FLT_MAX,
                              88.37626f, 88.3763f, 88.72283f, 88.722839f, 88.72284f, 88.7229f, 89.0f, 89.5f, -87.33654f,
                              -87.3366f, -103.27892f, -103.972076f, -103.97208f, -103.9721f, -104.0f, -104.5f, -150.0f,
                              0.34657359f, -0.34657359f, 1.0f, -1.0f, 16.0f, -16.0f};
    const size_t n_special = sizeof specials / sizeof specials[0];
    const size_t n_stride = (size_t)1 << (32 - stride_bits), n_random = (size_t)1 << 20;
    const size_t n = n_special + n_stride + 2 * n_random; /* odd: the vector tail is covered */
    float * x = malloc(n * sizeof(float));
    float * y = malloc(n * sizeof(float));
    if (!x || !y) return 1;
    size_t i = 0;
    for (size_t s = 0; s < n_special; s++) x[i++] = specials[s];
    for (uint64_t b = 0; b < n_stride; b++) x[i++] = float_of((uint32_t)(b << stride_bits));
    for (size_t r = 0; r < n_random; r++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        x[i++] = float_of((uint32_t)(rng >> 32));
        x[i++] = -110.0f + 205.0f * (uniform() + 1.0f) * 0.5f;
    }
    if (is_exp) k->exp(y, x, (int64_t)n);
    else k->sigmoid(y, x, (int64_t)n);
    int64_t max_ulp = 0;
    float worst = 0.0f;
    long nan_mismatches = 0, range_mismatches = 0;
    for (i = 0; i < n; i++) {
        const float ref = is_exp ? expf(x[i]) : (float)(1.0 / (1.0 + exp(-(double)x[i])));
        if (isnan(ref) != isnan(y[i])) {
            if (nan_mismatches++ == 0) fprintf(stderr, "NaN mismatch at %a: %a, expected %a\n", x[i], y[i], ref);
            continue;
        }
        if (isnan(ref)) continue;
        if (is_exp && ((x[i] > 88.73f && y[i] != INFINITY) || (x[i] < -103.98f && y[i] != 0.0f))) {
            if (range_mismatches++ == 0) fprintf(stderr, "range mismatch at %a: %a\n", x[i], y[i]);
        }
        const int64_t d = llabs(ordered(y[i]) - ordered(ref));
        if (d > max_ulp) {
            max_ulp = d;
            worst = x[i];
        }
    }
    printf("sweep %s %zu %lld %a %ld %ld\n", function, n, (long long)max_ulp, worst, nan_mismatches, range_mismatches);
    free(x);
    free(y);
    return 0;
}

int main(int argc, char ** argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s PATH TYPE [nonfinite] | %s PATH exp|sigmoid [STRIDE_BITS]\n", argv[0], argv[0]);
        return 1;
    }
    const kernels * k = find_path(argv[1]);
    if (!k) {
        printf("unavailable %s (available: %s)\n", argv[1], kernels_available());
        return 2;
    }
    if (strcmp(argv[2], "exp") == 0 || strcmp(argv[2], "sigmoid") == 0) {
        const int stride_bits = argc == 4 ? atoi(argv[3]) : 8;
        if (stride_bits < 8 || stride_bits > 24) {
            fprintf(stderr, "STRIDE_BITS %s: 8 to 24\n", argv[3]);
            return 1;
        }
        return sweep(k, argv[2], stride_bits);
    }
    const int type = type_from_name(argv[2]);
    if (type < 0) {
        fprintf(stderr, "unknown type %s\n", argv[2]);
        return 1;
    }
    if (argc == 4) return check_nonfinite(k, type);
    const int quantized = type_is_quantized(type), kquant = type_is_kquant(type);
    /* (rows, cols): odd everything; for quantized types columns are whole blocks, with an odd
     * block count; widths crossing the sequence-mode column chunks and the decode strategies
     * (the last: rows short enough to be decoded two at a time, with a whole 16 blocks and a
     * partial 7, whose last group of 4 is partial too) */
    const int64_t shapes_f[][2] = {{13, 67}, {1, 5}, {9, 16}, {21, 1100}, {5, 2051}, {7, 4099}, {11, 739}};
    const int64_t shapes_q[][2] = {{13, 96}, {1, 32}, {7, 64}, {21, 160}, {5, 32 * 131}, {6, 32 * 128}, {11, 32 * 23}};
    const int64_t shapes_k[][2] = {{13, 256}, {1, 256}, {7, 512}, {21, 768}, {5, 256 * 17}, {17, 256 * 16}, {11, 256 * 3}};
    const int Ts[] = {1, 2, 3, 4, 5, 7, 16, 17, 40, 64, 80};
    int failures = 0;
    const int n_shapes = 7;
    for (int s = 0; s < n_shapes; s++) {
        for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
            const int64_t rows = kquant ? shapes_k[s][0] : quantized ? shapes_q[s][0] : shapes_f[s][0];
            const int64_t cols = kquant ? shapes_k[s][1] : quantized ? shapes_q[s][1] : shapes_f[s][1];
            failures += check_shape(k, type, rows, cols, Ts[i]) != 0;
        }
    }
    return failures ? 1 : 0;
}
