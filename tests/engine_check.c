/*
 * engine_check.c: the whole engine, on one model file, through rwkv.h, on every kernel path
 * this CPU supports; a C program so that it runs where Python does not (under qemu, for the
 * AArch64 build: tests/aarch64_check.py).
 *
 *   engine_check [-t TOKENS] [-r MAX_SHARE] [-l L2_SHARE] [-e EXPECTED -s SUM_LIMIT [-m MAX_ABS]]
 *                [-o DUMP] MODEL
 *   engine_check -f PATH [-f PATH...] MODEL
 *
 * For each kernel path (RWKV_KERNELS set to it) it evaluates TOKENS (comma-separated ids,
 * default a fixed list of 21) one at a time (rwkv_eval), as one sequence
 * (rwkv_eval_sequence) and, token i from a fresh state for each, as one batch
 * (rwkv_eval_batch), and compares the logits of each mode with the scalar path's: the largest
 * difference at most MAX_SHARE (default 1e-4) times the spread (standard deviation) of the
 * scalar logits, and with -l the norm of the differences at most L2_SHARE times the norm of
 * the scalar logits (the bounds of the Python tests: float weights differ between paths only by
 * the order of float sums; for block types that order moves an activation now and then across
 * an int8 rounding boundary, and the logits by about 1%, so those get -r inf -l 2e-2). With -e,
 * the final logits of the serial and sequence modes are also compared with EXPECTED (float32
 * values, as the rwkv.cpp fixtures hold them): |sum(logits - expected)| <= SUM_LIMIT * 1.05
 * (the fixtures' own rule) and, with -m, max |logits - expected| <= MAX_ABS. -o writes the
 * scalar path's serial logits (float32) to DUMP. Prints
 *   available PATH...
 *   default PATH                  (the path chosen without RWKV_KERNELS)
 *   check PATH MODE max=X l2=Y [sum=S max=M] bits=H ok|FAIL
 * where H is a hash of the logits' bits (paths that promise the same bits can be compared).
 * and exits 0 when every check passed, 1 otherwise, 2 on a usage or load error.
 * With -f it only loads MODEL with RWKV_KERNELS set to each PATH and prints, per PATH,
 *   forced PATH selected NAME      or      forced PATH refused MESSAGE
 * (a path that the CPU or the build lacks must be refused with a message, never replaced).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rwkv.h"

enum { MAX_TOKENS = 256, MAX_PATHS = 8, MAX_BATCH = 5, THREADS = 2 };
static const char * const MODES[] = {"serial", "sequence", "batch"};

typedef struct run {
    float * serial;   /* logits after the last token */
    float * sequence;
    float * batch;    /* n_batch rows: token i from a fresh state */
} run;

static int n_batch = MAX_BATCH; /* sequences of the batch: at most one per token */

static int evaluate(const char * model, const char * path, const uint32_t * tokens, int n_tokens, run * out, size_t * vocab) {
    if (path) setenv("RWKV_KERNELS", path, 1);
    else unsetenv("RWKV_KERNELS");
    struct rwkv_context * ctx = rwkv_init_from_file(model, THREADS, 0);
    if (!ctx) return 0;
    if (path && strcmp(rwkv_get_kernel_path(ctx), path) != 0) {
        fprintf(stderr, "RWKV_KERNELS=%s gave %s\n", path, rwkv_get_kernel_path(ctx));
        rwkv_free(ctx);
        return 0;
    }
    const size_t n_vocab = rwkv_get_logits_len(ctx), state_len = rwkv_get_state_len(ctx);
    *vocab = n_vocab;
    float * state = malloc(state_len * sizeof(float));
    float * states = malloc((size_t)n_batch * state_len * sizeof(float));
    out->serial = malloc(n_vocab * sizeof(float));
    out->sequence = malloc(n_vocab * sizeof(float));
    out->batch = malloc((size_t)n_batch * n_vocab * sizeof(float));
    int ok = state && states && out->serial && out->sequence && out->batch;
    for (int i = 0; ok && i < n_tokens; i++) ok = rwkv_eval(ctx, tokens[i], i ? state : NULL, state, out->serial);
    ok = ok && rwkv_eval_sequence(ctx, tokens, (size_t)n_tokens, NULL, state, out->sequence);
    if (ok) {
        const float * in[MAX_BATCH] = {NULL};
        float * state_out[MAX_BATCH];
        float * logits[MAX_BATCH];
        for (int i = 0; i < n_batch; i++) {
            state_out[i] = states + (size_t)i * state_len;
            logits[i] = out->batch + (size_t)i * n_vocab;
        }
        ok = rwkv_eval_batch(ctx, (uint32_t)n_batch, tokens, in, state_out, logits);
    }
    if (!ok) fprintf(stderr, "%s: evaluation failed: %s\n", path ? path : "default", rwkv_get_last_error_message(ctx));
    free(state);
    free(states);
    rwkv_free(ctx);
    return ok;
}

static double max_abs_diff(const float * a, const float * b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static double norm_of_difference(const float * a, const float * b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += ((double)a[i] - (double)(b ? b[i] : 0.0f)) * ((double)a[i] - (double)(b ? b[i] : 0.0f));
    return sqrt(s);
}

static unsigned long long bits_hash(const float * v, size_t n) { /* FNV-1a */
    unsigned long long h = 1469598103934665603ull;
    const unsigned char * p = (const unsigned char *)v;
    for (size_t i = 0; i < n * sizeof(float); i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static double spread(const float * v, size_t n) {
    double mean = 0, var = 0;
    for (size_t i = 0; i < n; i++) mean += v[i];
    mean /= (double)n;
    for (size_t i = 0; i < n; i++) var += ((double)v[i] - mean) * ((double)v[i] - mean);
    return sqrt(var / (double)n);
}

static void report_forced(const char * model, const char * path) {
    setenv("RWKV_KERNELS", path, 1);
    struct rwkv_context * ctx = rwkv_init_from_file(model, 1, 0);
    if (ctx) {
        printf("forced %s selected %s\n", path, rwkv_get_kernel_path(ctx));
        rwkv_free(ctx);
    } else {
        printf("forced %s refused %s\n", path, rwkv_get_last_error_message(NULL));
    }
    unsetenv("RWKV_KERNELS");
}

static int parse_tokens(const char * text, uint32_t * tokens) {
    int n = 0;
    char * copy = strdup(text);
    for (char * p = strtok(copy, ","); p && n < MAX_TOKENS; p = strtok(NULL, ",")) tokens[n++] = (uint32_t)strtoul(p, NULL, 10);
    free(copy);
    return n;
}

int main(int argc, char ** argv) {
    uint32_t tokens[MAX_TOKENS];
    int n_tokens = 0;
    const char *expected_path = NULL, *dump = NULL;
    double sum_limit = -1, max_abs = -1, max_share = 1e-4, l2_share = INFINITY;
    const char * forced[MAX_PATHS];
    int n_forced = 0, opt;
    while ((opt = getopt(argc, argv, "t:r:l:e:s:m:o:f:")) != -1) {
        switch (opt) {
        case 'f':
            if (n_forced < MAX_PATHS) forced[n_forced++] = optarg;
            break;
        case 't': n_tokens = parse_tokens(optarg, tokens); break;
        case 'r': max_share = atof(optarg); break;
        case 'l': l2_share = atof(optarg); break;
        case 'e': expected_path = optarg; break;
        case 's': sum_limit = atof(optarg); break;
        case 'm': max_abs = atof(optarg); break;
        case 'o': dump = optarg; break;
        default: return 2;
        }
    }
    if (optind != argc - 1 || (expected_path && sum_limit < 0)) {
        fprintf(stderr, "usage: %s [-t TOKENS] [-r MAX_SHARE] [-l L2_SHARE] [-e EXPECTED -s SUM_LIMIT [-m MAX_ABS]] [-o DUMP] MODEL | -f PATH... MODEL\n", argv[0]);
        return 2;
    }
    const char * model = argv[optind];
    if (n_forced) {
        for (int i = 0; i < n_forced; i++) report_forced(model, forced[i]);
        return 0;
    }
    if (n_tokens == 0) {
        for (int i = 0; i < 21; i++) tokens[n_tokens++] = (uint32_t)(i * 37 + 5);
    }
    if (n_batch > n_tokens) n_batch = n_tokens;
    rwkv_set_print_errors(NULL, true);

    /* "... | kernels available: scalar neon neon_dotprod | selected: ... | ..." */
    char paths[MAX_PATHS][32];
    int n_paths = 0;
    const char * info = strstr(rwkv_get_system_info_string(), "kernels available: ");
    if (!info) return 2;
    info += strlen("kernels available: ");
    while (*info && *info != '|' && n_paths < MAX_PATHS) {
        int len = 0;
        while (info[len] && info[len] != ' ' && info[len] != '|') len++;
        if (len > 0 && len < 32) {
            memcpy(paths[n_paths], info, (size_t)len);
            paths[n_paths++][len] = 0;
        }
        info += len;
        while (*info == ' ') info++;
    }
    printf("available");
    for (int p = 0; p < n_paths; p++) printf(" %s", paths[p]);
    printf("\n");

    size_t vocab = 0;
    run scalar;
    if (!evaluate(model, "scalar", tokens, n_tokens, &scalar, &vocab)) return 2;
    for (int i = 0; i < n_tokens; i++) {
        if (tokens[i] >= vocab) {
            fprintf(stderr, "token %u is outside the vocabulary (%zu)\n", tokens[i], vocab);
            return 2;
        }
    }
    {
        unsetenv("RWKV_KERNELS");
        struct rwkv_context * ctx = rwkv_init_from_file(model, 1, 0);
        if (!ctx) return 2;
        printf("default %s\n", rwkv_get_kernel_path(ctx));
        rwkv_free(ctx);
    }
    if (dump) {
        FILE * f = fopen(dump, "wb");
        if (!f || fwrite(scalar.serial, sizeof(float), vocab, f) != vocab || fclose(f) != 0) return 2;
    }
    float * expected = NULL;
    if (expected_path) {
        expected = malloc(vocab * sizeof(float));
        FILE * f = fopen(expected_path, "rb");
        if (!f || fread(expected, sizeof(float), vocab, f) != vocab) {
            fprintf(stderr, "%s: cannot read %zu float32 logits\n", expected_path, vocab);
            return 2;
        }
        fclose(f);
    }

    const double scalar_spread = spread(scalar.serial, vocab);
    int failures = 0;
    for (int p = 0; p < n_paths; p++) {
        run r;
        if (!evaluate(model, paths[p], tokens, n_tokens, &r, &vocab)) return 2;
        const float * mine[] = {r.serial, r.sequence, r.batch};
        const float * reference[] = {scalar.serial, scalar.serial, scalar.batch};
        const size_t count[] = {vocab, vocab, (size_t)n_batch * vocab};
        for (int m = 0; m < 3; m++) {
            const double max_share_of = max_abs_diff(mine[m], reference[m], count[m]) / scalar_spread;
            const double l2_share_of = norm_of_difference(mine[m], reference[m], count[m]) / norm_of_difference(reference[m], NULL, count[m]);
            /* written so that NaN fails */
            int ok = max_share_of <= max_share && (isinf(l2_share) || l2_share_of <= l2_share);
            printf("check %s %s max=%.3e l2=%.3e", paths[p], MODES[m], max_share_of, l2_share_of);
            if (expected && m < 2) {
                double sum = 0;
                for (size_t i = 0; i < vocab; i++) sum += (double)mine[m][i] - (double)expected[i];
                const double max = max_abs_diff(mine[m], expected, vocab);
                ok = ok && fabs(sum) <= sum_limit * 1.05 && (max_abs < 0 || max <= max_abs);
                printf(" sum=%.6f max=%.3e", sum, max);
            }
            printf(" bits=%016llx %s\n", bits_hash(mine[m], count[m]), ok ? "ok" : "FAIL");
            failures += !ok;
        }
        free(r.serial);
        free(r.sequence);
        free(r.batch);
    }
    free(expected);
    free(scalar.serial);
    free(scalar.sequence);
    free(scalar.batch);
    return failures ? 1 : 0;
}
