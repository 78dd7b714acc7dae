/*
 * context.c: the public API of rwkv.h: contexts (one per clone: state scratch, thread pool,
 * error slot) over a shared model, evaluation in token and sequence mode, information.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

void error_set_print_default(bool on);

/* Errors of calls made without a context (loading, quantizing) are kept per thread. */
static _Thread_local error_slot g_error;

error_slot * error_thread_slot(void) { return &g_error; }

static error_slot * slot_of(const struct rwkv_context * ctx) {
    return ctx ? (error_slot *)&((context *)ctx)->err : &g_error;
}

static void report(context * ctx, error_slot * slot) {
    bool print = ctx ? ctx->print_errors : error_print_enabled();
    if (print && slot->message[0]) fprintf(stderr, "rwkv: %s\n", slot->message);
}

#define FAIL(ctx, slot, flags, ...)          \
    do {                                     \
        error_set((slot), (flags), __VA_ARGS__); \
        report((ctx), (slot));               \
        return false;                        \
    } while (0)

void rwkv_set_print_errors(struct rwkv_context * ctx, bool print_errors) {
    if (ctx) {
        ((context *)ctx)->print_errors = print_errors;
    } else {
        error_set_print_default(print_errors);
    }
}

bool rwkv_get_print_errors(const struct rwkv_context * ctx) {
    return ctx ? ((const context *)ctx)->print_errors : error_print_enabled();
}

enum rwkv_error_flags rwkv_get_last_error(struct rwkv_context * ctx) {
    error_slot * slot = slot_of(ctx);
    int flags = slot->flags;
    slot->flags = RWKV_ERROR_NONE;
    return (enum rwkv_error_flags)flags;
}

const char * rwkv_get_last_error_message(const struct rwkv_context * ctx) { return slot_of(ctx)->message; }

/* ---- contexts ---- */

static void * ctx_alloc(size_t bytes) {
    bytes = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes ? bytes : 64);
}

static void context_destroy(context * ctx) {
    if (!ctx) return;
    pool_free(ctx->pool);
    free(ctx->work);
    free(ctx->prepared);
    if (ctx->m) model_release(ctx->m);
    free(ctx);
}

static context * context_create(model * m, uint32_t n_threads, error_slot * err) {
    context * ctx = calloc(1, sizeof(context));
    if (!ctx) {
        error_set(err, RWKV_ERROR_CTX | RWKV_ERROR_ALLOC, "out of memory creating a context");
        return NULL;
    }
    ctx->m = m;
    ctx->print_errors = error_print_enabled();
    ctx->n_threads = n_threads ? (int)n_threads : 1;
    ctx->chunk = SEQ_CHUNK;
    char why[128];
    ctx->kern = kernels_select(why, sizeof why);
    if (why[0]) {
        error_set(err, RWKV_ERROR_CTX | RWKV_ERROR_UNSUPPORTED, "%s", why);
        ctx->m = NULL;
        context_destroy(ctx);
        return NULL;
    }
    ctx->work_floats = (size_t)ctx->chunk * m->ops->scratch_per_token(m);
    ctx->work = ctx_alloc(ctx->work_floats * sizeof(float));
    /* the widest product decides the size of the prepared activations */
    int64_t widest = m->n_embed;
    for (int i = 0; i < m->n_tensors; i++) widest = m->tensors[i].ne[0] > widest ? m->tensors[i].ne[0] : widest;
    widest += QK; /* room for kernels that pad a row to whole blocks */
    size_t prepared = 0;
    for (int t = 0; t < TYPE_COUNT; t++) {
        if (!type_is_valid(t)) continue;
        size_t b = ctx->kern->prepared_bytes(t, widest, ctx->chunk);
        prepared = b > prepared ? b : prepared;
    }
    ctx->prepared_cap = prepared;
    ctx->prepared = ctx_alloc(prepared);
    ctx->pool = pool_create(ctx->n_threads);
    if (!ctx->work || !ctx->prepared || !ctx->pool) {
        error_set(err, RWKV_ERROR_CTX | RWKV_ERROR_ALLOC, "out of memory creating a context (%zu bytes of scratch)",
                  ctx->work_floats * sizeof(float) + prepared);
        ctx->m = NULL;
        context_destroy(ctx);
        return NULL;
    }
    ctx->n_threads = pool_size(ctx->pool);
    return ctx;
}

struct rwkv_context * rwkv_init_from_file(const char * model_file_path, const uint32_t n_threads, const uint32_t n_gpu_layers) {
    g_error.flags = 0;
    g_error.message[0] = 0;
    if (n_gpu_layers > 0) {
        error_set(&g_error, RWKV_ERROR_ARGS | RWKV_ERROR_UNSUPPORTED,
                  "cannot offload %u layers: this engine has no GPU backend", n_gpu_layers);
        report(NULL, &g_error);
        return NULL;
    }
    model * m = model_load(model_file_path, &g_error);
    if (!m) {
        report(NULL, &g_error);
        return NULL;
    }
    context * ctx = context_create(m, n_threads, &g_error);
    if (!ctx) {
        model_release(m);
        report(NULL, &g_error);
        return NULL;
    }
    return (struct rwkv_context *)ctx;
}

struct rwkv_context * rwkv_clone_context(struct rwkv_context * handle, const uint32_t n_threads) {
    context * ctx = (context *)handle;
    if (!ctx) {
        error_set(&g_error, RWKV_ERROR_ARGS, "rwkv_clone_context: ctx is NULL");
        report(NULL, &g_error);
        return NULL;
    }
    atomic_fetch_add(&ctx->m->refcount, 1);
    context * clone = context_create(ctx->m, n_threads, &ctx->err);
    if (!clone) {
        model_release(ctx->m);
        report(ctx, &ctx->err);
        return NULL;
    }
    clone->print_errors = ctx->print_errors;
    return (struct rwkv_context *)clone;
}

bool rwkv_gpu_offload_layers(struct rwkv_context * handle, const uint32_t n_layers) {
    context * ctx = (context *)handle;
    if (n_layers == 0) return true;
    FAIL(ctx, slot_of(handle), RWKV_ERROR_ARGS | RWKV_ERROR_UNSUPPORTED,
         "cannot offload %u layers: this engine has no GPU backend", n_layers);
}

void rwkv_free(struct rwkv_context * ctx) { context_destroy((context *)ctx); }

/* ---- products, shared by the forward passes ---- */

typedef struct matmul_job {
    const kernels * kern;
    const tensor * W;
    const void * xp;
    int T;
    float * y;
    int64_t ldy;
    int64_t chunk_rows; /* a multiple of 16, so SIMD kernels can work on row groups */
} matmul_job;

static void matmul_chunk(void * arg, int64_t chunk) {
    const matmul_job * job = (const matmul_job *)arg;
    const int64_t rows = tensor_rows(job->W);
    const int64_t r0 = chunk * job->chunk_rows;
    const int64_t r1 = r0 + job->chunk_rows < rows ? r0 + job->chunk_rows : rows;
    job->kern->matmul(job->W->type, job->W->data, tensor_row_bytes(job->W), job->W->ne[0], job->xp, job->T, job->y,
                      job->ldy, r0, r1);
}

void ctx_matmul(context * ctx, const tensor * W, const float * x, int T, float * y, int64_t ldy) {
    const int64_t n = W->ne[0], rows = tensor_rows(W);
    ctx->kern->prepare(W->type, x, n, T, ctx->prepared);
    matmul_job job = {ctx->kern, W, ctx->prepared, T, y, ldy, rows};
    /* small products are not worth waking the workers for */
    if (ctx->n_threads == 1 || (double)rows * (double)n * T < 32768.0) {
        matmul_chunk(&job, 0);
        return;
    }
    /* a few chunks per thread: balance when a thread is slow or not scheduled */
    int64_t per = (rows + 4 * ctx->n_threads - 1) / (4 * ctx->n_threads);
    job.chunk_rows = (per + 15) / 16 * 16;
    pool_for(ctx->pool, (rows + job.chunk_rows - 1) / job.chunk_rows, matmul_chunk, &job);
}

void ctx_embedding(context * ctx, uint32_t token, float * out) {
    const tensor * e = &ctx->m->emb;
    dequantize_row(e->type, e->data + (size_t)token * tensor_row_bytes(e), out, e->ne[0]);
}

void ctx_head(context * ctx, const float * x, float * logits) {
    ctx_matmul(ctx, &ctx->m->head, x, 1, logits, ctx->m->n_vocab);
}

/* ---- evaluation ---- */

/* all_logits: logits_out holds n rows, one per token. */
static bool eval_tokens(context * ctx, const char * fn, const uint32_t * tokens, size_t n, size_t chunk,
                        const float * state_in, float * state_out, float * logits_out, bool all_logits) {
    error_slot * slot = slot_of((struct rwkv_context *)ctx);
    if (!ctx) FAIL(ctx, slot, RWKV_ERROR_ARGS, "%s: ctx is NULL", fn);
    if (!state_out) FAIL(ctx, slot, RWKV_ERROR_ARGS, "%s: state_out is NULL", fn);
    if (n == 0) FAIL(ctx, slot, RWKV_ERROR_ARGS, "%s: no tokens to evaluate", fn);
    if (!tokens) FAIL(ctx, slot, RWKV_ERROR_ARGS, "%s: tokens is NULL", fn);
    const model * m = ctx->m;
    for (size_t i = 0; i < n; i++) {
        if ((int64_t)tokens[i] >= m->n_vocab) {
            FAIL(ctx, slot, RWKV_ERROR_ARGS, "%s: token %u at position %zu is out of range (n_vocab %lld)", fn, tokens[i], i,
                 (long long)m->n_vocab);
        }
    }
    const size_t state_len = m->ops->state_len(m);
    if (!state_in) {
        m->ops->init_state(m, state_out);
    } else if (state_in != state_out) {
        memmove(state_out, state_in, state_len * sizeof(float));
    }
    if (chunk == 0 || chunk > (size_t)ctx->chunk) chunk = (size_t)ctx->chunk;
    ctx->all_logits = all_logits && logits_out;
    for (size_t i = 0; i < n; i += chunk) {
        const size_t T = n - i < chunk ? n - i : chunk;
        const bool last = i + T == n;
        float * logits = ctx->all_logits ? logits_out + i * (size_t)m->n_vocab : last ? logits_out : NULL;
        m->ops->forward(ctx, tokens + i, (int)T, state_out, logits);
    }
    ctx->all_logits = false;
    return true;
}

bool rwkv_eval(struct rwkv_context * ctx, const uint32_t token, const float * state_in, float * state_out, float * logits_out) {
    return eval_tokens((context *)ctx, "rwkv_eval", &token, 1, 1, state_in, state_out, logits_out, false);
}

bool rwkv_eval_sequence(struct rwkv_context * ctx, const uint32_t * tokens, size_t sequence_len, const float * state_in,
                        float * state_out, float * logits_out) {
    return eval_tokens((context *)ctx, "rwkv_eval_sequence", tokens, sequence_len, 0, state_in, state_out, logits_out, false);
}

bool rwkv_eval_sequence_all_logits(struct rwkv_context * ctx, const uint32_t * tokens, size_t sequence_len, const float * state_in,
                                   float * state_out, float * logits_out) {
    return eval_tokens((context *)ctx, "rwkv_eval_sequence_all_logits", tokens, sequence_len, 0, state_in, state_out, logits_out,
                       true);
}

bool rwkv_eval_sequence_in_chunks(struct rwkv_context * ctx, const uint32_t * tokens, const size_t sequence_len,
                                  const size_t chunk_size, const float * state_in, float * state_out, float * logits_out) {
    if (chunk_size == 0) {
        error_slot * slot = slot_of(ctx);
        FAIL((context *)ctx, slot, RWKV_ERROR_ARGS, "rwkv_eval_sequence_in_chunks: chunk_size is 0");
    }
    return eval_tokens((context *)ctx, "rwkv_eval_sequence_in_chunks", tokens, sequence_len, chunk_size, state_in, state_out,
                       logits_out, false);
}

/* ---- information ---- */

size_t rwkv_get_n_vocab(const struct rwkv_context * ctx) { return (size_t)((const context *)ctx)->m->n_vocab; }
size_t rwkv_get_n_embed(const struct rwkv_context * ctx) { return (size_t)((const context *)ctx)->m->n_embed; }
size_t rwkv_get_n_layer(const struct rwkv_context * ctx) { return (size_t)((const context *)ctx)->m->n_layer; }
size_t rwkv_get_logits_len(const struct rwkv_context * ctx) { return (size_t)((const context *)ctx)->m->n_vocab; }

size_t rwkv_get_state_len(const struct rwkv_context * ctx) {
    const model * m = ((const context *)ctx)->m;
    return m->ops->state_len(m);
}

void rwkv_init_state(const struct rwkv_context * ctx, float * state) {
    const model * m = ((const context *)ctx)->m;
    m->ops->init_state(m, state);
}

const char * rwkv_get_arch_version(const struct rwkv_context * ctx) { return ((const context *)ctx)->m->ops->version; }
const char * rwkv_get_kernel_path(const struct rwkv_context * ctx) { return ((const context *)ctx)->kern->name; }
const char * rwkv_get_data_type_name(const struct rwkv_context * ctx) { return ((const context *)ctx)->m->type_label; }
size_t rwkv_get_weight_bytes_per_token(const struct rwkv_context * ctx) { return ((const context *)ctx)->m->weight_bytes_per_token; }

const char * rwkv_get_system_info_string(void) {
    static char info[256];
    char why[8];
    const kernels * k = kernels_select(why, sizeof why);
    snprintf(info, sizeof info, "rwkv-cpp native engine | kernels available: %s | selected: %s | GPU: none", kernels_available(),
             k->name);
    return info;
}
