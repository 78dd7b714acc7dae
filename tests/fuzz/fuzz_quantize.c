/*
 * fuzz_quantize.c: libFuzzer target for the quantizer.
 *
 * Input bytes become a file in a private temporary folder; rwkv_quantize_model_file writes it
 * in one of the five quantized types (chosen by the input's size). Quantizing the file onto
 * itself must always fail and leave it as it was; a quantized output must load and evaluate
 * one token, and a failed one must leave nothing behind.
 *
 * Built by tests/fuzz/run.sh: clang -fsanitize=fuzzer,address,undefined with the engine sources.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rwkv.h"

static char folder[256], in_path[300], out_path[300];

static void remove_folder(void) {
    unlink(in_path);
    unlink(out_path);
    rmdir(folder);
}

int LLVMFuzzerInitialize(int * argc, char *** argv) {
    rwkv_set_print_errors(NULL, false);
    const char * base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    snprintf(folder, sizeof folder, "%s/rwkv-fuzz-quantize-XXXXXX", base);
    if (!mkdtemp(folder)) abort();
    snprintf(in_path, sizeof in_path, "%s/in.bin", folder);
    snprintf(out_path, sizeof out_path, "%s/out.bin", folder);
    atexit(remove_folder);
    return 0;
}

/* Files in the folder besides in.bin and out.bin (a temporary file left behind). */
static int stray_files(void) {
    DIR * dir = opendir(folder);
    if (!dir) abort();
    int stray = 0;
    for (struct dirent * e; (e = readdir(dir));) {
        stray += strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, "in.bin") && strcmp(e->d_name, "out.bin");
    }
    closedir(dir);
    return stray;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static const char * const types[] = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"};
    FILE * f = fopen(in_path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) abort();
    const char * type = types[size % 5];

    if (rwkv_quantize_model_file(in_path, in_path, type)) abort(); /* onto itself: refused */
    rwkv_get_last_error(NULL);
    struct stat st;
    if (stat(in_path, &st) != 0 || (size_t)st.st_size != size) abort();

    if (rwkv_quantize_model_file(in_path, out_path, type)) {
        struct rwkv_context * ctx = rwkv_init_from_file(out_path, 1, 0);
        if (ctx) {
            rwkv_set_print_errors(ctx, false);
            float * state = malloc(rwkv_get_state_len(ctx) * sizeof(float));
            float * logits = malloc(rwkv_get_n_vocab(ctx) * sizeof(float));
            if (!state || !logits || !rwkv_eval(ctx, 0, NULL, state, logits)) abort();
            free(state);
            free(logits);
            rwkv_free(ctx);
        } else {
            rwkv_get_last_error(NULL); /* a file the loader refuses (no known architecture) */
        }
        unlink(out_path);
    } else {
        if (!rwkv_get_last_error_message(NULL)[0] || rwkv_get_last_error(NULL) == RWKV_ERROR_NONE) abort();
        if (access(out_path, F_OK) == 0) abort(); /* a failure leaves no output */
    }
    if (stray_files()) abort();
    return 0;
}
