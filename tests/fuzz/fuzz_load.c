/*
 * fuzz_load.c: libFuzzer target for the model loader and the evaluation behind it.
 *
 * Input bytes become a model file (an in-memory file, /proc/self/fd/N) loaded by
 * rwkv_init_from_file on one of the kernel paths (chosen by the input's hash). A refused file
 * must come with an error flag and a message; a loaded one is evaluated: single tokens with
 * and without logits, a 2-token and a 9-token sequence (the decode and the sequence-mode
 * kernels), and a token past the vocabulary, which must be refused. NaN logits are fine; a
 * crash, a leak or a sanitizer report is a finding.
 *
 * Built by tests/fuzz/run.sh: clang -fsanitize=fuzzer,address,undefined with the engine sources.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rwkv.h"

static void evaluate(struct rwkv_context * ctx) {
    const size_t n_vocab = rwkv_get_n_vocab(ctx), state_len = rwkv_get_state_len(ctx);
    float * state = malloc(state_len * sizeof(float));
    float * logits = malloc(n_vocab * sizeof(float));
    if (!state || !logits) abort();
    uint32_t tokens[9];
    for (uint32_t i = 0; i < 9; i++) tokens[i] = (uint32_t)((i * 7 + 1) % n_vocab);
    if (!rwkv_eval(ctx, tokens[0], NULL, state, logits)) abort();
    if (!rwkv_eval(ctx, tokens[1], state, state, NULL)) abort();
    if (!rwkv_eval_sequence(ctx, tokens, 2, state, state, logits)) abort();
    if (!rwkv_eval_sequence(ctx, tokens, 9, state, state, logits)) abort();
    if (rwkv_eval(ctx, (uint32_t)n_vocab, state, state, logits)) abort(); /* out of range: refused */
    rwkv_get_last_error(ctx);
    free(state);
    free(logits);
}

int LLVMFuzzerInitialize(int * argc, char *** argv) {
    rwkv_set_print_errors(NULL, false);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    const int fd = memfd_create("model", MFD_CLOEXEC);
    if (fd < 0) abort();
    for (size_t done = 0; done < size;) {
        const ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) abort();
        done += (size_t)n;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    /* the kernel path (default, avx2 or scalar) from a hash of the input: each input always
     * runs the same one, and the corpus covers them all (three loads per input ran 2.5x
     * slower) */
    uint32_t hash = 2166136261u;
    for (size_t i = 0; i < size; i++) hash = (hash ^ data[i]) * 16777619u;
    static const char * const paths[] = {NULL, "avx2", "scalar"};
    if (paths[hash % 3]) setenv("RWKV_KERNELS", paths[hash % 3], 1);
    else unsetenv("RWKV_KERNELS");
    struct rwkv_context * ctx = rwkv_init_from_file(path, 1, 0);
    if (!ctx) {
        /* refused: with a message and a flag */
        if (!rwkv_get_last_error_message(NULL)[0] || rwkv_get_last_error(NULL) == RWKV_ERROR_NONE) abort();
    } else {
        rwkv_set_print_errors(ctx, false);
        evaluate(ctx);
        rwkv_free(ctx);
    }
    close(fd);
    return 0;
}
