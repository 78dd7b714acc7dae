/*
 * context.c: the public API of rwkv.h: contexts (one per clone: run state, thread pool,
 * error slot) over a shared model, evaluation in token and sequence mode and of batches of
 * sequences, information.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* Errors of calls made without a context (loading, quantizing) are kept per thread. */
static _Thread_local error_slot g_error;

error_slot * error_thread_slot(void) { return &g_error; }

static error_slot * slot_of(const struct rwkv_context * ctx) {
    return ctx ? (error_slot *)&((context *)ctx)->err : &g_error;
}

static void report(context * ctx, error_slot * slot) {
    const bool print = ctx ? ctx->print_errors : error_print_enabled();
    if (print && slot->message[0]) fprintf(stderr, "rwkv: %s\n", slot->message);
}

/* Records (and maybe prints) an error of an API call; returns false for the call to return. */
__attribute__((format(printf, 3, 4))) static bool fail(context * ctx, int flags, const char * fmt, ...) {
    error_slot * slot = slot_of((struct rwkv_context *)ctx);
    char message[sizeof slot->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    error_set(slot, flags, "%s", message);
    report(ctx, slot);
    return false;
}

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
    const int flags = slot->flags;
    slot->flags = RWKV_ERROR_NONE;
    return (enum rwkv_error_flags)flags;
}

const char * rwkv_get_last_error_message(const struct rwkv_context * ctx) { return slot_of(ctx)->message; }

/* ---- the run state: every scratch buffer, declared in one list, allocated once ---- */

enum { RUN_STATE_MAX_BUFFERS = 32 };

typedef struct buffer_decl {
    void ** slot; /* the run_state field that receives the buffer (NULL when bytes is 0) */
    size_t bytes;
} buffer_decl;

static size_t align64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* Bytes of activations prepared for the widest product of the model over `rows` rows, for
 * any tensor type (kernels that pad a row to whole blocks get a block more). */
static size_t prepared_bytes(const model * m, const kernels * kern, int rows) {
    int64_t widest = m->n_embed;
    for (int i = 0; i < m->n_tensors; i++) widest = m->tensors[i].ne[0] > widest ? m->tensors[i].ne[0] : widest;
    widest += QK;
    size_t bytes = 0;
    for (int type = 0; type < TYPE_COUNT; type++) {
        if (!type_is_valid(type)) continue;
        const size_t b = kern->prepared_bytes(type, widest, rows);
        bytes = b > bytes ? b : bytes;
    }
    return bytes;
}

/* The one list of the run state's buffers and their sizes. */
static int run_state_declare(run_state * rs, const model * m, const kernels * kern, int n_threads, buffer_decl * list) {
    time_mix_scratch need = {0};
    m->ops->scratch(m, &need);
    const size_t rows = (size_t)rs->rows, f = sizeof(float), per_seq = rows * sizeof(float *);
    const size_t rows_c = rows * (size_t)m->n_embed * f;
    int n = 0;
    list[n++] = (buffer_decl){(void **)&rs->x, rows_c};
    list[n++] = (buffer_decl){(void **)&rs->xx, rows_c};
    list[n++] = (buffer_decl){(void **)&rs->dx, rows_c};
    list[n++] = (buffer_decl){(void **)&rs->xm, rows_c};
    list[n++] = (buffer_decl){(void **)&rs->y, rows_c};
    list[n++] = (buffer_decl){(void **)&rs->out, rows_c};
    list[n++] = (buffer_decl){(void **)&rs->r, rows_c};
    list[n++] = (buffer_decl){(void **)&rs->k, need.k ? rows_c : 0};
    list[n++] = (buffer_decl){(void **)&rs->v, need.v ? rows_c : 0};
    list[n++] = (buffer_decl){(void **)&rs->w, need.w ? rows_c : 0};
    list[n++] = (buffer_decl){(void **)&rs->a, need.a ? rows_c : 0};
    list[n++] = (buffer_decl){(void **)&rs->g, need.g ? rows_c : 0};
    list[n++] = (buffer_decl){(void **)&rs->kk, need.kk ? rows_c : 0};
    list[n++] = (buffer_decl){(void **)&rs->v_first, need.v_first ? rows_c : 0};
    list[n++] = (buffer_decl){(void **)&rs->extra, need.extra ? rows_c : 0};
    list[n++] = (buffer_decl){(void **)&rs->lora, rows * (size_t)need.lora * f};
    list[n++] = (buffer_decl){(void **)&rs->lora_part, rows * (size_t)need.lora_part * f};
    list[n++] = (buffer_decl){(void **)&rs->decay_lora, rows * (size_t)need.decay_lora * f};
    list[n++] = (buffer_decl){(void **)&rs->ffn_hidden, rows * (size_t)m->ffn_dim * f};
    list[n++] = (buffer_decl){(void **)&rs->head_in, rows_c};
    list[n++] = (buffer_decl){(void **)&rs->head_out, (size_t)n_threads * HEAD_PIECE_ROWS * rows * f};
    list[n++] = (buffer_decl){(void **)&rs->ffn_xx, per_seq};
    list[n++] = (buffer_decl){(void **)&rs->att_xx, per_seq};
    list[n++] = (buffer_decl){(void **)&rs->att_state, per_seq};
    list[n++] = (buffer_decl){(void **)&rs->head_logits, per_seq};
    rs->prepared_bytes = prepared_bytes(m, kern, rs->rows);
    list[n++] = (buffer_decl){(void **)&rs->prepared, rs->prepared_bytes};
    return n;
}

/* Allocates the run state for `rows` rows as one block carved by the declared list. */
static bool run_state_create(run_state * rs, const model * m, const kernels * kern, int n_threads, int rows, size_t * total) {
    buffer_decl list[RUN_STATE_MAX_BUFFERS];
    memset(rs, 0, sizeof *rs);
    rs->rows = rows;
    const int n = run_state_declare(rs, m, kern, n_threads, list);
    *total = 0;
    for (int i = 0; i < n; i++) *total += align64(list[i].bytes);
    rs->block = aligned_alloc(64, *total ? *total : 64);
    if (!rs->block) return false;
    uint8_t * next = rs->block;
    for (int i = 0; i < n; i++) {
        *list[i].slot = list[i].bytes ? next : NULL;
        next += align64(list[i].bytes);
    }
    return true;
}

/* ---- contexts ---- */

static void context_destroy(context * ctx) {
    if (!ctx) return;
    pool_free(ctx->pool);
    free(ctx->rs.block);
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
    char why[128];
    ctx->kern = kernels_select(why, sizeof why);
    if (why[0]) {
        error_set(err, RWKV_ERROR_CTX | RWKV_ERROR_UNSUPPORTED, "%s", why);
        ctx->m = NULL;
        context_destroy(ctx);
        return NULL;
    }
    ctx->pool = pool_create(n_threads ? (int)n_threads : 1);
    size_t scratch_bytes = 0;
    if (!ctx->pool || !run_state_create(&ctx->rs, m, ctx->kern, pool_size(ctx->pool), SEQ_CHUNK, &scratch_bytes)) {
        error_set(err, RWKV_ERROR_CTX | RWKV_ERROR_ALLOC, "out of memory creating a context (%zu bytes of scratch)", scratch_bytes);
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
        fail(NULL, RWKV_ERROR_ARGS | RWKV_ERROR_UNSUPPORTED, "cannot offload %u layers: this engine has no GPU backend", n_gpu_layers);
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
        fail(NULL, RWKV_ERROR_ARGS, "rwkv_clone_context: ctx is NULL");
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
    if (n_layers == 0) return true;
    return fail((context *)handle, RWKV_ERROR_ARGS | RWKV_ERROR_UNSUPPORTED, "cannot offload %u layers: this engine has no GPU backend",
                n_layers);
}

void rwkv_free(struct rwkv_context * ctx) { context_destroy((context *)ctx); }

/* ---- evaluation ---- */

/* Sequence mode: n tokens of one sequence, in forward passes of at most `chunk` rows;
 * all_logits: logits_out holds n rows, one per token. */
static bool eval_tokens(context * ctx, const char * fn, const uint32_t * tokens, size_t n, size_t chunk,
                        const float * state_in, float * state_out, float * logits_out, bool all_logits) {
    if (!ctx) return fail(ctx, RWKV_ERROR_ARGS, "%s: ctx is NULL", fn);
    if (!state_out) return fail(ctx, RWKV_ERROR_ARGS, "%s: state_out is NULL", fn);
    if (n == 0) return fail(ctx, RWKV_ERROR_ARGS, "%s: no tokens to evaluate", fn);
    if (!tokens) return fail(ctx, RWKV_ERROR_ARGS, "%s: tokens is NULL", fn);
    const model * m = ctx->m;
    for (size_t i = 0; i < n; i++) {
        if ((int64_t)tokens[i] >= m->n_vocab) {
            return fail(ctx, RWKV_ERROR_ARGS, "%s: token %u at position %zu is out of range (n_vocab %lld)", fn, tokens[i], i,
                        (long long)m->n_vocab);
        }
    }
    if (!state_in) {
        forward_init_state(m, state_out);
    } else if (state_in != state_out) {
        memmove(state_out, state_in, forward_state_len(m) * sizeof(float));
    }
    if (chunk == 0 || chunk > (size_t)ctx->rs.rows) chunk = (size_t)ctx->rs.rows;
    ctx->all_logits = all_logits && logits_out;
    float * const states[1] = {state_out};
    for (size_t i = 0; i < n; i += chunk) {
        const int T = (int)(n - i < chunk ? n - i : chunk);
        const bool last = i + (size_t)T == n;
        float * const logits[1] = {ctx->all_logits ? logits_out + i * (size_t)m->n_vocab : logits_out};
        const batch b = {.n_seq = 1, .seq_len = T, .n_rows = T, .tokens = tokens + i, .state = states,
                         .logits = last || ctx->all_logits ? logits : NULL};
        if (!forward(ctx, &b)) {
            ctx->all_logits = false;
            report(ctx, &ctx->err);
            return false;
        }
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
    if (chunk_size == 0) return fail((context *)ctx, RWKV_ERROR_ARGS, "rwkv_eval_sequence_in_chunks: chunk_size is 0");
    return eval_tokens((context *)ctx, "rwkv_eval_sequence_in_chunks", tokens, sequence_len, chunk_size, state_in, state_out,
                       logits_out, false);
}

bool rwkv_eval_batch(struct rwkv_context * handle, uint32_t n, const uint32_t * tokens, const float * const * state_in,
                     float * const * state_out, float * const * logits_out) {
    context * ctx = (context *)handle;
    const char * fn = "rwkv_eval_batch";
    if (!ctx) return fail(ctx, RWKV_ERROR_ARGS, "%s: ctx is NULL", fn);
    if (n == 0) return fail(ctx, RWKV_ERROR_ARGS, "%s: no sequences to evaluate (n is 0)", fn);
    if (!tokens) return fail(ctx, RWKV_ERROR_ARGS, "%s: tokens is NULL", fn);
    if (!state_in) return fail(ctx, RWKV_ERROR_ARGS, "%s: state_in is NULL (pass an array of NULL for fresh states)", fn);
    if (!state_out) return fail(ctx, RWKV_ERROR_ARGS, "%s: state_out is NULL", fn);
    if (!logits_out) return fail(ctx, RWKV_ERROR_ARGS, "%s: logits_out is NULL (pass an array of NULL to skip the head)", fn);
    const model * m = ctx->m;
    for (uint32_t i = 0; i < n; i++) {
        if ((int64_t)tokens[i] >= m->n_vocab) {
            return fail(ctx, RWKV_ERROR_ARGS, "%s: token %u of sequence %u is out of range (n_vocab %lld)", fn, tokens[i], i,
                        (long long)m->n_vocab);
        }
        if (!state_out[i]) return fail(ctx, RWKV_ERROR_ARGS, "%s: state_out[%u] is NULL", fn, i);
    }
    const size_t state_len = forward_state_len(m);
    const uint32_t pass = (uint32_t)ctx->rs.rows;
    for (uint32_t first = 0; first < n; first += pass) {
        const int count = (int)(n - first < pass ? n - first : pass);
        for (uint32_t i = first; i < first + (uint32_t)count; i++) {
            if (!state_in[i]) {
                forward_init_state(m, state_out[i]);
            } else if (state_in[i] != state_out[i]) {
                memmove(state_out[i], state_in[i], state_len * sizeof(float));
            }
        }
        const batch b = {.n_seq = count, .seq_len = 1, .n_rows = count, .tokens = tokens + first, .state = state_out + first,
                         .logits = logits_out + first};
        if (!forward(ctx, &b)) {
            report(ctx, &ctx->err);
            return false;
        }
    }
    return true;
}

/* ---- information ---- */

size_t rwkv_get_n_vocab(const struct rwkv_context * ctx) { return (size_t)((const context *)ctx)->m->n_vocab; }
size_t rwkv_get_n_embed(const struct rwkv_context * ctx) { return (size_t)((const context *)ctx)->m->n_embed; }
size_t rwkv_get_n_layer(const struct rwkv_context * ctx) { return (size_t)((const context *)ctx)->m->n_layer; }
size_t rwkv_get_logits_len(const struct rwkv_context * ctx) { return (size_t)((const context *)ctx)->m->n_vocab; }
size_t rwkv_get_state_len(const struct rwkv_context * ctx) { return forward_state_len(((const context *)ctx)->m); }
void rwkv_init_state(const struct rwkv_context * ctx, float * state) { forward_init_state(((const context *)ctx)->m, state); }

const char * rwkv_get_arch_version(const struct rwkv_context * ctx) { return ((const context *)ctx)->m->ops->version; }
const char * rwkv_get_kernel_path(const struct rwkv_context * ctx) { return ((const context *)ctx)->kern->name; }
const char * rwkv_get_data_type_name(const struct rwkv_context * ctx) { return ((const context *)ctx)->m->type_label; }
const char * rwkv_get_head_type_name(const struct rwkv_context * ctx) { return type_name(((const context *)ctx)->m->head.type); }
size_t rwkv_get_weight_bytes_per_token(const struct rwkv_context * ctx) { return ((const context *)ctx)->m->weight_bytes_per_token; }

const char * rwkv_get_system_info_string(void) {
    static char info[256];
    char why[8];
    const kernels * k = kernels_select(why, sizeof why);
    snprintf(info, sizeof info, "rwkv-cpp native engine | kernels available: %s | selected: %s | GPU: none", kernels_available(),
             k->name);
    return info;
}
