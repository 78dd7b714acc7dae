/*
 * kernel_speed.c: one product kernel alone, timed by the CPU time of its own thread (which a
 * shared machine disturbs far less than wall time). Build it from the repository root with
 *   cc -std=gnu11 -O3 -fwrapv -pthread -Inative -o /tmp/kernel_speed benchmarks/kernel_speed.c \
 *      native/kernels*.c native/tensor.c native/kquants.c -lm
 *
 *   kernel_speed PATH TYPE ROWS COLS TOKENS [REPS] [THREADS]
 *
 * Weights are random (quantized by the engine's quantizer), stored at an odd address as in a
 * memory-mapped file. One repetition = prepare the activations once, then the whole product
 * (rows [0, ROWS) for TOKENS tokens); the weights stay in whatever cache holds them (a matrix
 * of up to a few MB stays in L2/L3 between repetitions: this measures the kernel, not the
 * memory). With THREADS > 1 the rows are cut into THREADS equal ranges, each timed on its own
 * thread, and the slowest range counts. Prints one JSON object: the minimum and median
 * seconds per product and the multiply-add rate and weight bytes per second of the minimum.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "engine.h"

#if defined(__x86_64__)
extern const kernels kernels_avx2 __attribute__((weak));
extern const kernels kernels_avx512 __attribute__((weak));
extern const kernels kernels_amx __attribute__((weak));
#endif

static const kernels * find_path(const char * name) {
    if (strcmp(name, "scalar") == 0) return &kernels_scalar;
#if defined(__x86_64__)
    char padded[80], needle[32];
    snprintf(padded, sizeof padded, " %s ", kernels_available());
    snprintf(needle, sizeof needle, " %s ", name);
    if (!strstr(padded, needle)) return NULL;
    if (strcmp(name, "avx2") == 0 && &kernels_avx2) return &kernels_avx2;
    if (strcmp(name, "avx512") == 0 && &kernels_avx512) return &kernels_avx512;
    if (strcmp(name, "amx") == 0 && &kernels_amx) return &kernels_amx;
#endif
    return NULL;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float uniform(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static double thread_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct job {
    const kernels * k;
    int type, T, reps;
    const uint8_t * w;
    size_t row_bytes;
    int64_t cols, r0, r1, ldy;
    const float * x;
    void * xp;
    float * y;
    double * seconds; /* reps */
    double * prepare; /* reps: the part of seconds spent preparing the activations */
} job;

static void * run(void * arg) {
    job * j = (job *)arg;
    for (int i = 0; i < j->reps + 1; i++) { /* the first is a warm-up */
        const double start = thread_seconds();
        j->k->prepare(j->type, j->x, j->cols, j->T, j->xp);
        const double prepared = thread_seconds();
        j->k->matmul(j->type, j->w, j->row_bytes, j->cols, j->xp, j->T, j->y, j->ldy, j->r0, j->r1);
        if (i) {
            j->seconds[i - 1] = thread_seconds() - start;
            j->prepare[i - 1] = prepared - start;
        }
    }
    return NULL;
}

static int compare(const void * a, const void * b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char ** argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s PATH TYPE ROWS COLS TOKENS [REPS] [THREADS]\n", argv[0]);
        return 1;
    }
    const kernels * k = find_path(argv[1]);
    if (!k) {
        printf("{\"unavailable\": \"%s\"}\n", argv[1]);
        return 2;
    }
    const int type = type_from_name(argv[2]);
    if (type < 0 || type_is_kquant(type)) {
        fprintf(stderr, "unknown or unsupported type %s\n", argv[2]);
        return 1;
    }
    const int64_t rows = atoll(argv[3]), cols = atoll(argv[4]);
    const int T = atoi(argv[5]);
    const int reps = argc > 6 ? atoi(argv[6]) : 20;
    const int threads = argc > 7 ? atoi(argv[7]) : 1;
    const size_t row_bytes = type_row_bytes(type, cols);
    /* 2 MiB-aligned and asking for huge pages, as the engine keeps the weights of a large
     * file (native/model.c); KERNEL_SPEED_SMALL_PAGES=1 leaves them in 4 KiB pages */
    const size_t store_bytes = row_bytes * (size_t)rows + 64;
    uint8_t * store = NULL;
    if (posix_memalign((void **)&store, (size_t)2 << 20, store_bytes)) return 1;
#ifdef MADV_HUGEPAGE
    if (!getenv("KERNEL_SPEED_SMALL_PAGES")) madvise(store, store_bytes, MADV_HUGEPAGE);
#endif
    uint8_t * w = store + 1;
    float * row = malloc(sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) row[c] = uniform();
        if (type == TYPE_FP32) {
            memcpy(w + (size_t)r * row_bytes, row, (size_t)cols * 4);
        } else if (type == TYPE_FP16 || type == TYPE_BF16) {
            for (int64_t c = 0; c < cols; c++) {
                uint16_t h = fp32_to_fp16(row[c]);
                if (type == TYPE_BF16) {
                    uint32_t bits;
                    memcpy(&bits, &row[c], 4);
                    h = (uint16_t)(bits >> 16);
                }
                memcpy(w + (size_t)r * row_bytes + 2 * c, &h, 2);
            }
        } else {
            quantize_row(type, row, w + (size_t)r * row_bytes, cols);
        }
    }
    float * x = malloc(sizeof(float) * (size_t)(cols * T));
    for (int64_t i = 0; i < cols * T; i++) x[i] = uniform();
    job jobs[16];
    pthread_t ids[16];
    const int n = threads < 1 ? 1 : threads > 16 ? 16 : threads;
    const int64_t per = (rows + n - 1) / n;
    for (int i = 0; i < n; i++) {
        job * j = &jobs[i];
        *j = (job){k, type, T, reps, w, row_bytes, cols, i * per, (i + 1) * per < rows ? (i + 1) * per : rows, rows,
                   x, NULL, NULL, calloc((size_t)reps, sizeof(double)), calloc((size_t)reps, sizeof(double))};
        if (posix_memalign(&j->xp, 64, k->prepared_bytes(type, cols, T) + 64)) return 1;
        j->y = calloc((size_t)(rows * T), sizeof(float));
        pthread_create(&ids[i], NULL, run, j);
    }
    double * slowest = calloc((size_t)reps, sizeof(double));
    for (int i = 0; i < n; i++) {
        pthread_join(ids[i], NULL);
        qsort(jobs[i].prepare, (size_t)reps, sizeof(double), compare);
        for (int r = 0; r < reps; r++) slowest[r] = jobs[i].seconds[r] > slowest[r] ? jobs[i].seconds[r] : slowest[r];
    }
    qsort(slowest, (size_t)reps, sizeof(double), compare);
    const double best = slowest[0], median = slowest[reps / 2];
    const double macs = (double)rows * (double)cols * T;
    printf("{\"path\": \"%s\", \"type\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"tokens\": %d, \"threads\": %d, "
           "\"min_s\": %.6e, \"median_s\": %.6e, \"prepare_min_s\": %.3e, \"GMACps\": %.2f, \"GFLOPps\": %.2f, \"weight_GBps\": %.2f}\n",
           argv[1], argv[2], (long long)rows, (long long)cols, T, n, best, median, jobs[0].prepare[0], macs / best / 1e9, 2 * macs / best / 1e9,
           (double)row_bytes * (double)rows / best / 1e9);
    return 0;
}
