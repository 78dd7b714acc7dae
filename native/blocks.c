/*
 * blocks.c: the pieces every RWKV version shares: the embedding and ln0, the token shift,
 * the squared-ReLU channel mix, the output head, and the head-state layout of v5 and later.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"

void embed_chunk(context * ctx, const uint32_t * tokens, int T, float * x) {
    const model * m = ctx->m;
    const int64_t C = m->n_embed;
    for (int t = 0; t < T; t++) {
        ctx_embedding(ctx, tokens[t], x + t * C);
        layer_norm(x + t * C, x + t * C, m->ln0_w, m->ln0_b, C, m->ln_eps);
    }
}

void layer_norm_rows(float * out, const float * x, const float * w, const float * b, int T, int64_t C, float eps) {
    for (int t = 0; t < T; t++) layer_norm(out + t * C, x + t * C, w, b, C, eps);
}

void shift_delta(float * dx, const float * xx, float * last, int T, int64_t C) {
    for (int t = 0; t < T; t++) {
        const float * prev = t == 0 ? last : xx + (t - 1) * C;
        const float * cur = xx + t * C;
        float * d = dx + t * C;
        for (int64_t c = 0; c < C; c++) d[c] = prev[c] - cur[c];
    }
    memcpy(last, xx + (int64_t)(T - 1) * C, (size_t)C * sizeof(float));
}

void mix_tokens(float * out, const float * xx, const float * dx, const float * mix, const float * extra, int T, int64_t C) {
    for (int t = 0; t < T; t++) {
        const float * cur = xx + t * C;
        const float * d = dx + t * C;
        float * o = out + t * C;
        if (extra) {
            const float * e = extra + t * C;
            for (int64_t c = 0; c < C; c++) o[c] = cur[c] + d[c] * (mix[c] + e[c]);
        } else {
            for (int64_t c = 0; c < C; c++) o[c] = cur[c] + d[c] * mix[c];
        }
    }
}

void channel_mix(context * ctx, const layer * L, float * x, float * ffn_xx, int T, const channel_scratch * s) {
    const int64_t C = ctx->m->n_embed, F = L->ffn_k.ne[1], TC = (int64_t)T * C;
    layer_norm_rows(s->xx, x, L->ln2_w, L->ln2_b, T, C, ctx->m->ln_eps);
    shift_delta(s->dx, s->xx, ffn_xx, T, C);
    mix_tokens(s->xm, s->xx, s->dx, L->ffn_mix_k, NULL, T, C);
    ctx_matmul(ctx, &L->ffn_k, s->xm, T, s->hidden, F);
    float * hidden = s->hidden;
    for (int64_t j = 0; j < (int64_t)T * F; j++) {
        /* relu(h)^2 by clearing negative values through their sign bit: signs are random, so
         * a branch mispredicts half the time, and gcc neither vectorizes a float select
         * without -ffast-math nor keeps a multiply by (h > 0) branch-free */
        uint32_t bits;
        memcpy(&bits, &hidden[j], 4);
        bits &= ~(uint32_t)((int32_t)bits >> 31);
        float h;
        memcpy(&h, &bits, 4);
        hidden[j] = h * h;
    }
    ctx_matmul(ctx, &L->ffn_v, s->hidden, T, s->out, C);
    if (!L->ffn_mix_r) { /* v7: no receptance gate */
        const float * out = s->out;
        for (int64_t j = 0; j < TC; j++) x[j] += out[j];
        return;
    }
    mix_tokens(s->xm, s->xx, s->dx, L->ffn_mix_r, NULL, T, C);
    ctx_matmul(ctx, &L->ffn_r, s->xm, T, s->r, C);
    ctx->kern->sigmoid(s->r, s->r, TC);
    const float * gate = s->r;
    const float * out = s->out;
    for (int64_t j = 0; j < TC; j++) x[j] += gate[j] * out[j];
}

void add_rows(float * x, const float * bias, int T, int64_t C) {
    for (int t = 0; t < T; t++) {
        float * row = x + (int64_t)t * C;
        for (int64_t c = 0; c < C; c++) row[c] += bias[c];
    }
}

void tanh_array(context * ctx, float * x, int64_t n) {
    /* tanh(x) = 2 sigmoid(2x) - 1, through the kernels' vector sigmoid */
    for (int64_t j = 0; j < n; j++) x[j] *= 2.0f;
    ctx->kern->sigmoid(x, x, n);
    for (int64_t j = 0; j < n; j++) x[j] = 2.0f * x[j] - 1.0f;
}

void attention_output(context * ctx, const layer * L, float * x, float * y, const float * g, int T, float * out) {
    const model * m = ctx->m;
    const int64_t C = m->n_embed, TC = (int64_t)T * C;
    for (int t = 0; t < T; t++) group_norm(y + t * C, y + t * C, L->ln_x_w, L->ln_x_b, m->n_head, m->head_size, m->ln_x_eps);
    if (g) {
        ctx->kern->sigmoid(out, g, TC); /* SiLU gate */
        for (int64_t j = 0; j < TC; j++) y[j] *= g[j] * out[j];
    }
    ctx_matmul(ctx, &L->att_o, y, T, out, C);
    for (int64_t j = 0; j < TC; j++) x[j] += out[j];
}

void output_logits(context * ctx, const float * x, int T, float * scratch, float * logits) {
    const model * m = ctx->m;
    if (!logits) return;
    if (ctx->all_logits) {
        layer_norm_rows(scratch, x, m->ln_out_w, m->ln_out_b, T, m->n_embed, m->ln_eps);
        ctx_matmul(ctx, &m->head, scratch, T, logits, m->n_vocab);
        return;
    }
    layer_norm(scratch, x + (int64_t)(T - 1) * m->n_embed, m->ln_out_w, m->ln_out_b, m->n_embed, m->ln_eps);
    ctx_head(ctx, scratch, logits);
}

const float * model_mix_of_previous(model * m, error_slot * err, const char * key, int64_t n) {
    float * v = (float *)model_vector(m, err, key, n); /* our own copy, so it may be rewritten */
    if (v) {
        for (int64_t c = 0; c < n; c++) v[c] = 1.0f - v[c];
    }
    return v;
}

int bind_heads(model * m, error_slot * err, const char * key) {
    const tensor * t = model_find(m, key);
    if (!t) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "model file lacks tensor '%s' (architecture v%s)", key,
                  m->ops->version);
        return -1;
    }
    /* (n_head, 1 or head_size, ...) in PyTorch order: the outermost dimension counts the heads */
    m->n_head = t->ne[t->n_dims - 1];
    if (m->n_head < 1 || m->n_embed % m->n_head != 0) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "tensor '%s' gives %lld heads, which do not divide n_embed %lld",
                  key, (long long)m->n_head, (long long)m->n_embed);
        return -1;
    }
    m->head_size = m->n_embed / m->n_head;
    return 0;
}

int bind_ffn_dim(model * m, error_slot * err) {
    const tensor * fk = model_find(m, "blocks.0.ffn.key.weight");
    if (!fk) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "model file lacks tensor 'blocks.0.ffn.key.weight' (architecture v%s)",
                  m->ops->version);
        return -1;
    }
    m->ffn_dim = fk->ne[1];
    return 0;
}

size_t heads_state_len(const model * m) { return (size_t)((2 + m->head_size) * m->n_embed * m->n_layer); }

void heads_init_state(const model * m, float * state) { memset(state, 0, heads_state_len(m) * sizeof(float)); }

/* ---- parallel loops outside the products ---- */

typedef struct range_job {
    range_task fn;
    void * arg;
    int64_t n, step;
} range_job;

static void range_chunk(void * arg, int64_t chunk) {
    const range_job * job = (const range_job *)arg;
    const int64_t begin = chunk * job->step;
    const int64_t end = begin + job->step < job->n ? begin + job->step : job->n;
    job->fn(job->arg, begin, end);
}

/* Below this many operations a loop is not worth waking the workers for. */
#define PARALLEL_MIN_WORK 65536.0

void ctx_parallel_range(context * ctx, int64_t n, int64_t align, double work, range_task fn, void * arg) {
    if (ctx->n_threads == 1 || work < PARALLEL_MIN_WORK || n <= align) {
        fn(arg, 0, n);
        return;
    }
    const int64_t pieces = 2 * (int64_t)ctx->n_threads;
    int64_t step = (n + pieces - 1) / pieces;
    step = (step + align - 1) / align * align;
    range_job job = {fn, arg, n, step};
    pool_for(ctx->pool, (n + step - 1) / step, range_chunk, &job);
}

/* One token through one head of v5/v6, with K (N x N, key-major) updated in place:
 *     y[j] = sum_i r[i] (K[i][j] + u[i] k[i] v[j]),    K[i][j] = w[i] K[i][j] + k[i] v[j]
 * The inner loops run over the value index j, contiguous in K. */
static void wkv_key_major(float * restrict K, const float * restrict r, const float * restrict k, const float * restrict v,
                          const float * restrict w, const float * restrict u, float * restrict y, int64_t N) {
    for (int64_t j = 0; j < N; j++) y[j] = 0.0f;
    for (int64_t i = 0; i < N; i++) {
        float * row = K + i * N;
        const float ri = r[i], ki = k[i], wi = w[i], rui = r[i] * u[i];
        for (int64_t j = 0; j < N; j++) {
            const float kv = ki * v[j];
            y[j] += ri * row[j] + rui * kv;
            row[j] = wi * row[j] + kv;
        }
    }
}

void key_major_step(const heads_job * j, int64_t h, int64_t t) {
    const int64_t o = t * j->C + h * j->S, hc = h * j->S;
    wkv_key_major(j->state + h * j->S * j->S, j->r + o, j->k + o, j->v + o, j->w + t * j->w_stride + hc, j->u + hc,
                  j->y + o, j->S);
}

static void heads_range(void * arg, int64_t h0, int64_t h1) {
    const heads_job * job = (const heads_job *)arg;
    for (int64_t h = h0; h < h1; h++) {
        for (int64_t t = 0; t < job->T; t++) job->step(job, h, t);
    }
}

void run_heads(context * ctx, const heads_job * job, int64_t n_heads) {
    const double work = (double)job->T * (double)job->C * (double)job->S * 3.0;
    ctx_parallel_range(ctx, n_heads, 1, work, heads_range, (void *)job);
}
