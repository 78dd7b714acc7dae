/*
 * alloc_check.c: evaluating tokens must not allocate. This program defines malloc, calloc,
 * realloc and aligned_alloc itself (counting, then forwarding to glibc's), so every heap
 * allocation of the engine it is linked with, threads included, is counted. It loads a
 * model, evaluates once to warm up, then counts the allocations of many more evaluations:
 * single tokens, sequences, and batches of sequences (rwkv_eval_batch, up to more sequences
 * than one pass of the scratch holds).
 *
 *     alloc_check MODEL THREADS    prints "load N" (allocations while loading: proof that
 *                                  counting works) and "allocations N" (while evaluating)
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "rwkv.h"

extern void * __libc_malloc(size_t);
extern void * __libc_calloc(size_t, size_t);
extern void * __libc_realloc(void *, size_t);
extern void * __libc_memalign(size_t, size_t);

static atomic_long allocations;

void * malloc(size_t n) { atomic_fetch_add(&allocations, 1); return __libc_malloc(n); }
void * calloc(size_t a, size_t b) { atomic_fetch_add(&allocations, 1); return __libc_calloc(a, b); }
void * realloc(void * p, size_t n) { atomic_fetch_add(&allocations, 1); return __libc_realloc(p, n); }
void * aligned_alloc(size_t align, size_t n) { atomic_fetch_add(&allocations, 1); return __libc_memalign(align, n); }

int main(int argc, char ** argv) {
    if (argc != 3) return 2;
    rwkv_set_print_errors(NULL, true);
    struct rwkv_context * ctx = rwkv_init_from_file(argv[1], (uint32_t)atoi(argv[2]), 0);
    if (!ctx) return 1;
    const long at_load = atomic_load(&allocations);
    const size_t state_len = rwkv_get_state_len(ctx), vocab = rwkv_get_logits_len(ctx);
    float * state = __libc_malloc(state_len * sizeof(float));
    float * logits = __libc_malloc(vocab * sizeof(float));
    float * all_logits = __libc_malloc(150 * vocab * sizeof(float));
    enum { BATCH = 70 }; /* more sequences than one pass of the scratch (64 rows) */
    float * batch_states[BATCH];
    float * batch_in[BATCH];
    float * batch_out[BATCH];
    float * batch_logits[BATCH];
    float * logits_of_batch = __libc_malloc((size_t)BATCH * vocab * sizeof(float));
    for (int i = 0; i < BATCH; i++) batch_states[i] = __libc_malloc(state_len * sizeof(float));
    uint32_t tokens[150];
    for (int i = 0; i < 150; i++) tokens[i] = (uint32_t)(i * 7919) % (uint32_t)vocab;
    if (!rwkv_eval(ctx, 1, NULL, state, logits) || !rwkv_eval_sequence(ctx, tokens, 150, state, state, logits)) return 1;

    atomic_store(&allocations, 0);
    for (int i = 0; i < 50; i++) {
        if (!rwkv_eval(ctx, tokens[i], state, state, i % 2 ? logits : NULL)) return 1;
    }
    if (!rwkv_eval_sequence(ctx, tokens, 150, state, state, logits)) return 1;
    if (!rwkv_eval_sequence_in_chunks(ctx, tokens, 150, 7, NULL, state, logits)) return 1;
    if (!rwkv_eval_sequence_all_logits(ctx, tokens, 150, NULL, state, all_logits)) return 1;
    for (int i = 0; i < BATCH; i++) {
        /* mixed: fresh and carried states, in place or not, with and without logits */
        batch_in[i] = i % 3 == 0 ? NULL : i % 2 ? batch_states[i] : state;
        batch_out[i] = batch_states[i];
        batch_logits[i] = i % 4 == 1 ? NULL : logits_of_batch + (size_t)i * vocab;
    }
    for (int n = 1; n <= BATCH; n += 23) {
        if (!rwkv_eval_batch(ctx, (uint32_t)n, tokens, (const float * const *)batch_in, batch_out, batch_logits)) return 1;
    }
    const long counted = atomic_load(&allocations);

    rwkv_free(ctx);
    printf("load %ld\nallocations %ld\n", at_load, counted);
    return 0;
}
