/*
 * blocks.c: the building blocks the time mixes of several versions share: norms, the token
 * mix (lerp toward the previous token), the SiLU-gated group norm of v5/v6, and the per-head
 * recurrence of v5 and later run over (sequence, head) pairs on the context's threads.
 */
#include <math.h>
#include <string.h>

#include "engine.h"

/* ---- norms ---- */

/* Mean and variance in double: a float sum over n_embed values loses the digits the
 * fixtures check. */
void layer_norm(float * out, const float * x, const float * w, const float * b, int64_t n, float eps) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) {
        const double d = x[i] - mean;
        var += d * d;
    }
    var /= (double)n;
    const float inv = (float)(1.0 / sqrt(var + eps));
    const float mu = (float)mean;
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - mu) * inv * w[i] + b[i];
}

/* Rows of a pass are independent: a prompt's rows are shared among the context's threads (the
 * same arithmetic per row, so the same bits), one decoded row stays on the caller. */
typedef struct norm_rows_job {
    float * out;
    const float * x, * w, * b;
    int64_t C;
    float eps;
} norm_rows_job;

static void norm_rows_range(void * arg, int64_t r0, int64_t r1) {
    const norm_rows_job * job = (const norm_rows_job *)arg;
    for (int64_t row = r0; row < r1; row++) {
        layer_norm(job->out + row * job->C, job->x + row * job->C, job->w, job->b, job->C, job->eps);
    }
}

void layer_norm_rows(context * ctx, float * out, const float * x, const float * w, const float * b, int R, int64_t C, float eps) {
    norm_rows_job job = {out, x, w, b, C, eps};
    ctx_parallel_range(ctx, R, 1, 8.0 * (double)R * (double)C, norm_rows_range, &job);
}

void group_norm(float * out, const float * x, const float * w, const float * b, int64_t n_groups, int64_t group, float eps) {
    for (int64_t g = 0; g < n_groups; g++) {
        const int64_t o = g * group;
        layer_norm(out + o, x + o, w + o, b + o, group, eps);
    }
}

/* ---- elementwise ---- */

typedef struct mix_job {
    float * out;
    const float * xx, * dx, * mix, * extra;
    int64_t C;
} mix_job;

static void mix_range(void * arg, int64_t r0, int64_t r1) {
    const mix_job * job = (const mix_job *)arg;
    const int64_t C = job->C;
    const float * mix = job->mix;
    for (int64_t row = r0; row < r1; row++) {
        const float * cur = job->xx + row * C;
        const float * d = job->dx + row * C;
        float * o = job->out + row * C;
        if (job->extra) {
            const float * e = job->extra + row * C;
            for (int64_t c = 0; c < C; c++) o[c] = cur[c] + d[c] * (mix[c] + e[c]);
        } else {
            for (int64_t c = 0; c < C; c++) o[c] = cur[c] + d[c] * mix[c];
        }
    }
}

void mix_tokens(context * ctx, float * out, const float * xx, const float * dx, const float * mix, const float * extra, int R,
                int64_t C) {
    mix_job job = {out, xx, dx, mix, extra, C};
    ctx_parallel_range(ctx, R, 1, 3.0 * (double)R * (double)C, mix_range, &job);
}

void add_rows(float * x, const float * bias, int R, int64_t C) {
    for (int64_t row = 0; row < R; row++) {
        float * xr = x + row * C;
        for (int64_t c = 0; c < C; c++) xr[c] += bias[c];
    }
}

void tanh_array(context * ctx, float * x, int64_t n) {
    /* tanh(x) = 2 sigmoid(2x) - 1, through the kernels' vector sigmoid */
    for (int64_t i = 0; i < n; i++) x[i] *= 2.0f;
    ctx->kern->sigmoid(x, x, n);
    for (int64_t i = 0; i < n; i++) x[i] = 2.0f * x[i] - 1.0f;
}

typedef struct norm_gate_job {
    const context * ctx;
    const layer * L;
    float * y;
    const float * g;
    float * scratch;
} norm_gate_job;

static void norm_gate_range(void * arg, int64_t r0, int64_t r1) {
    const norm_gate_job * job = (const norm_gate_job *)arg;
    const model * m = job->ctx->m;
    const int64_t C = m->n_embed;
    for (int64_t row = r0; row < r1; row++) {
        group_norm(job->y + row * C, job->y + row * C, job->L->ln_x_w, job->L->ln_x_b, m->n_head, m->head_size, m->ln_x_eps);
    }
    if (job->g) {
        const int64_t o = r0 * C, n = (r1 - r0) * C;
        float * y = job->y + o;
        const float * g = job->g + o;
        float * sg = job->scratch + o;
        job->ctx->kern->sigmoid(sg, g, n); /* SiLU(g) = g sigmoid(g) */
        for (int64_t i = 0; i < n; i++) y[i] *= g[i] * sg[i];
    }
}

void group_norm_and_gate(context * ctx, const layer * L, float * y, const float * g, int R, float * scratch) {
    norm_gate_job job = {ctx, L, y, g, scratch};
    ctx_parallel_range(ctx, R, 1, 12.0 * (double)R * (double)ctx->m->n_embed, norm_gate_range, &job);
}

/* ---- the per-head recurrence of v5 and later ---- */

int64_t heads_state_len(const model * m) { return m->head_size * m->n_embed; }

void heads_init_state(const model * m, float * state) {
    memset(state, 0, (size_t)heads_state_len(m) * sizeof(float));
}

/* One token through one head of v5/v6, with K (S x S, key-major) updated in place:
 *     y[j] = sum_i r[i] (K[i][j] + u[i] k[i] v[j]),    K[i][j] = w[i] K[i][j] + k[i] v[j]
 * The inner loops run over the value index j, contiguous in K. */
VECTOR_CLONES static void wkv_key_major(float * restrict K, const float * restrict r, const float * restrict k, const float * restrict v,
                          const float * restrict w, const float * restrict u, float * restrict y, int64_t S) {
    for (int64_t j = 0; j < S; j++) y[j] = 0.0f;
    for (int64_t i = 0; i < S; i++) {
        float * K_i = K + i * S;
        const float ri = r[i], ki = k[i], wi = w[i], rui = r[i] * u[i];
        for (int64_t j = 0; j < S; j++) {
            const float kv = ki * v[j];
            y[j] += ri * K_i[j] + rui * kv;
            K_i[j] = wi * K_i[j] + kv;
        }
    }
}

void key_major_step(const heads_job * job, float * state, int64_t h, int64_t row) {
    const int64_t o = row * job->C + h * job->S, hc = h * job->S;
    wkv_key_major(state, job->r + o, job->k + o, job->v + o, job->w + row * job->w_stride + hc, job->u + hc, job->y + o,
                  job->S);
}

/* pairs [p0, p1) of (sequence, head), pair p = sequence * n_head + head */
static void heads_range(void * arg, int64_t p0, int64_t p1) {
    const heads_job * job = (const heads_job *)arg;
    const int64_t H = job->C / job->S;
    for (int64_t p = p0; p < p1; p++) {
        const int64_t seq = p / H, h = p % H;
        float * state = job->state[seq] + h * job->S * job->S;
        for (int64_t t = 0; t < job->seq_len; t++) job->step(job, state, h, seq * job->seq_len + t);
    }
}

void run_heads(context * ctx, const heads_job * job) {
    const int64_t rows = (int64_t)job->n_seq * job->seq_len, H = job->C / job->S;
    const double work = (double)rows * (double)job->C * (double)job->S * 3.0;
    ctx_parallel_range(ctx, (int64_t)job->n_seq * H, 1, work, heads_range, (void *)job);
}
