/*
 * alloc_check.c: evaluating tokens must not allocate. This program defines malloc, calloc,
 * realloc and aligned_alloc itself (counting, then forwarding to glibc's), so every heap
 * allocation of the engine it is linked with, threads included, is counted. It loads a
 * model, evaluates once to warm up, then counts the allocations of many more evaluations.
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
    const long counted = atomic_load(&allocations);

    rwkv_free(ctx);
    printf("load %ld\nallocations %ld\n", at_load, counted);
    return 0;
}
