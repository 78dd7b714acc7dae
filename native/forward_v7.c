/*
 * forward_v7.c: the time mix of RWKV v7 "Goose" (World v7).
 *
 * Per head, with the state M value-major (M[i][j]: value i, key j):
 *     M_t = M_{t-1} (diag(w_t) - kk_t^T (a_t * kk_t)) + v_t k_t^T,    y_t = M_t r_t
 * where kk is the L2-normalized key along which the state forgets at rate a (a "delta rule"),
 * and w = exp(-e^-0.5 sigmoid(w0 + lora_w(x))) the decay per key channel. Layer 0's value
 * (v_first) is mixed into the value of every later layer.
 *
 * Format facts (rwkv.cpp's converter): the six token-shift mixes r, w, k, v, a, g are stacked
 * in `att.x_rwkvag` (6 x n_embed); the low-rank matrices w1, a1, v1, g1 (C -> D) and w2, a2, v2,
 * g2 (D -> C) are stored transposed so they are plain (out, in) matrices; `r_k` is
 * (n_head, head_size) and gives the head shape. Layer 0 needs no v0/v1/v2: when a file holds
 * them anyway they are ignored (rwkv.cpp refuses such files).
 *
 * Time-mix state per layer, as rwkv.cpp lays it out: n_head matrices S x S, value-major;
 * fresh = zeros.
 */
#include <math.h>
#include <stdio.h>

#include "engine.h"

/* e^-0.5: the decay is exp(-e^-0.5 * sigmoid(.)), kept inside (e^-0.607, 1). */
#define V7_DECAY_SCALE 0.60653066f
/* The smallest norm kk is divided by (F.normalize's eps): a zero key stays zero. */
#define V7_KK_MIN_NORM 1e-12f

enum { MIX_R, MIX_W, MIX_K, MIX_V, MIX_A, MIX_G }; /* rows of att.x_rwkvag */

static bool v7_bind_lora(model * m, error_slot * err, int i, const char * down_name, const char * up_name, tensor * down,
                         tensor * up) {
    const int64_t C = m->n_embed;
    return bind_matrix(m, err, i, down_name, C, -1, down) && bind_matrix(m, err, i, up_name, down->ne[1], C, up);
}

static bool v7_bind(model * m, error_slot * err) {
    const int64_t C = m->n_embed;
    const tensor * r_k = model_find(m, "blocks.0.att.r_k");
    if (!r_k) {
        model_missing(m, err, "blocks.0.att.r_k");
        return false;
    }
    /* r_k is (n_head, head_size) in PyTorch order */
    m->head_size = r_k->ne[0];
    m->n_head = r_k->ne[1] * r_k->ne[2] * r_k->ne[3];
    if (m->head_size * m->n_head != C) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE,
                  "tensor 'blocks.0.att.r_k' gives %lld heads of %lld, which does not make n_embed %lld",
                  (long long)m->n_head, (long long)m->head_size, (long long)C);
        return false;
    }
    if (!bind_ffn_dim(m, err)) return false;
    const int64_t F = m->ffn_dim;
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        /* layer 0's value is v_first itself: its v0/v1/v2, if present, are not used */
        L->has_v_lora = i > 0;
        const bool ok =
            bind_vector(m, err, i, "ln1.weight", C, &L->ln1_w) && bind_vector(m, err, i, "ln1.bias", C, &L->ln1_b) &&
            bind_vector(m, err, i, "ln2.weight", C, &L->ln2_w) && bind_vector(m, err, i, "ln2.bias", C, &L->ln2_b) &&
            bind_vector(m, err, i, "att.x_rwkvag", 6 * C, &L->x_rwkvag) && bind_vector(m, err, i, "att.w0", C, &L->w0) &&
            bind_vector(m, err, i, "att.a0", C, &L->a0) && bind_vector(m, err, i, "att.k_k", C, &L->k_k) &&
            bind_vector(m, err, i, "att.k_a", C, &L->k_a) && bind_vector(m, err, i, "att.r_k", C, &L->r_k) &&
            v7_bind_lora(m, err, i, "att.w1", "att.w2", &L->w1, &L->w2) &&
            v7_bind_lora(m, err, i, "att.a1", "att.a2", &L->a1, &L->a2) &&
            v7_bind_lora(m, err, i, "att.g1", "att.g2", &L->g1, &L->g2) &&
            (!L->has_v_lora ||
             (bind_vector(m, err, i, "att.v0", C, &L->v0) && v7_bind_lora(m, err, i, "att.v1", "att.v2", &L->v1, &L->v2))) &&
            bind_matrix(m, err, i, "att.receptance.weight", C, C, &L->att_r) &&
            bind_matrix(m, err, i, "att.key.weight", C, C, &L->att_k) &&
            bind_matrix(m, err, i, "att.value.weight", C, C, &L->att_v) &&
            bind_matrix(m, err, i, "att.output.weight", C, C, &L->att_o) &&
            bind_vector(m, err, i, "att.ln_x.weight", C, &L->ln_x_w) &&
            bind_vector(m, err, i, "att.ln_x.bias", C, &L->ln_x_b) && bind_vector(m, err, i, "ffn.x_k", C, &L->ffn_mix_k) &&
            bind_matrix(m, err, i, "ffn.key.weight", C, F, &L->ffn_k) &&
            bind_matrix(m, err, i, "ffn.value.weight", F, C, &L->ffn_v);
        if (!ok) return false;
    }
    return true;
}

static void v7_scratch(const model * m, time_mix_scratch * need) {
    need->w = need->k = need->v = need->a = need->g = need->kk = need->v_first = true;
    /* the widest low-rank dimension of any layer */
    need->lora = 1;
    for (int64_t i = 0; i < m->n_layer; i++) {
        const layer * L = &m->layers[i];
        const int64_t dims[4] = {L->w1.ne[1], L->a1.ne[1], L->g1.ne[1], L->has_v_lora ? L->v1.ne[1] : 1};
        for (int j = 0; j < 4; j++) need->lora = dims[j] > need->lora ? dims[j] : need->lora;
    }
}

/* Dot product with eight independent partial sums: the compiler may vectorize these without
 * reassociating a single sum (which -O3 alone does not allow for floats). */
static inline float dot(const float * a, const float * b, int64_t n) {
    float acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        for (int l = 0; l < 8; l++) acc[l] += a[j + l] * b[j + l];
    }
    for (; j < n; j++) acc[0] += a[j] * b[j];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* One token through one head: M (S x S, value-major) updated in place, y = M_t r. */
VECTOR_CLONES static void wkv7_head(float * restrict M, const float * restrict r, const float * restrict w, const float * restrict k,
                      const float * restrict v, const float * restrict kk, const float * restrict b, float * restrict y,
                      int64_t S) {
    for (int64_t i = 0; i < S; i++) {
        float * M_i = M + i * S;
        const float sa = dot(M_i, kk, S); /* how much of this value row lies along kk */
        const float vi = v[i];
        float acc[8] = {0};
        int64_t j = 0;
        for (; j + 8 <= S; j += 8) {
            for (int l = 0; l < 8; l++) {
                const float s = M_i[j + l] * w[j + l] - sa * b[j + l] + vi * k[j + l];
                M_i[j + l] = s;
                acc[l] += s * r[j + l];
            }
        }
        for (; j < S; j++) {
            const float s = M_i[j] * w[j] - sa * b[j] + vi * k[j];
            M_i[j] = s;
            acc[0] += s * r[j];
        }
        y[i] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
}

static void v7_step(const heads_job * job, float * state, int64_t h, int64_t row) {
    const int64_t o = row * job->C + h * job->S;
    wkv7_head(state, job->r + o, job->w + o, job->k + o, job->v + o, job->kk + o, job->b + o, job->y + o, job->S);
}

/* The per-row stages between the products, each over a range of rows so that a prompt's
 * rows are shared among the context's threads (the same arithmetic per row: the same bits). */
typedef enum { V7_DECAY, V7_VALUE_GATE, V7_RATE, V7_KEYS, V7_OUTPUT } v7_stage;

typedef struct v7_rows_job {
    const context * ctx;
    const layer * L;
    v7_stage stage;
    int64_t C, H, S;
    float *r, *w, *k, *v, *a, *g, *kk, *y, *gate, *v_first;
} v7_rows_job;

static void v7_rows_range(void * arg, int64_t r0, int64_t r1) {
    const v7_rows_job * job = (const v7_rows_job *)arg;
    const kernels * kern = job->ctx->kern;
    const layer * L = job->L;
    const int64_t C = job->C, H = job->H, S = job->S, o0 = r0 * C, n = (r1 - r0) * C;
    switch (job->stage) {
    case V7_DECAY: { /* w = exp(-e^-0.5 sigmoid(w0 + lora)) */
        float * w = job->w + o0;
        add_rows(w, L->w0, (int)(r1 - r0), C);
        kern->sigmoid(w, w, n);
        for (int64_t i = 0; i < n; i++) w[i] *= -V7_DECAY_SCALE;
        kern->exp(w, w, n);
        break;
    }
    case V7_VALUE_GATE: { /* later layers pull their value towards layer 0's by a data-dependent gate */
        float *gate = job->gate + o0, *v = job->v + o0;
        const float * v_first = job->v_first + o0;
        add_rows(gate, L->v0, (int)(r1 - r0), C);
        kern->sigmoid(gate, gate, n);
        for (int64_t i = 0; i < n; i++) v[i] += (v_first[i] - v[i]) * gate[i];
        break;
    }
    case V7_RATE: {
        float * a = job->a + o0;
        add_rows(a, L->a0, (int)(r1 - r0), C);
        kern->sigmoid(a, a, n);
        break;
    }
    case V7_KEYS: /* kk: the key scaled by k_k, L2-normalized per head; the key itself scaled by the rate a */
        for (int64_t row = r0; row < r1; row++) {
            float *k_row = job->k + row * C, *a_row = job->a + row * C, *kk_row = job->kk + row * C;
            for (int64_t c = 0; c < C; c++) kk_row[c] = k_row[c] * L->k_k[c];
            for (int64_t h = 0; h < H; h++) {
                float * kh = kk_row + h * S;
                const float norm = sqrtf(dot(kh, kh, S));
                const float inv = 1.0f / (norm > V7_KK_MIN_NORM ? norm : V7_KK_MIN_NORM);
                for (int64_t j = 0; j < S; j++) kh[j] *= inv;
            }
            for (int64_t c = 0; c < C; c++) {
                k_row[c] *= 1.0f + (a_row[c] - 1.0f) * L->k_a[c];
                a_row[c] *= kk_row[c]; /* a becomes b = kk * a: what the state forgets, per key channel */
            }
        }
        break;
    case V7_OUTPUT: /* per-head group norm, the current token's bonus, the gate */
        for (int64_t row = r0; row < r1; row++) {
            const int64_t o = row * C;
            const float *r = job->r, *k = job->k, *v = job->v, *g = job->g;
            float * y = job->y;
            group_norm(y + o, y + o, L->ln_x_w, L->ln_x_b, H, S, job->ctx->m->ln_x_eps);
            for (int64_t h = 0; h < H; h++) {
                const int64_t hc = o + h * S;
                float rkr[8] = {0};
                /* sum_j r_j k_j r_k_j, with eight partial sums as in dot() */
                int64_t j = 0;
                for (; j + 8 <= S; j += 8) {
                    for (int l = 0; l < 8; l++) rkr[l] += r[hc + j + l] * k[hc + j + l] * L->r_k[h * S + j + l];
                }
                for (; j < S; j++) rkr[0] += r[hc + j] * k[hc + j] * L->r_k[h * S + j];
                const float bonus = ((rkr[0] + rkr[4]) + (rkr[1] + rkr[5])) + ((rkr[2] + rkr[6]) + (rkr[3] + rkr[7]));
                for (j = 0; j < S; j++) y[hc + j] = (y[hc + j] + bonus * v[hc + j]) * g[hc + j];
            }
        }
        break;
    }
}

static void v7_rows(context * ctx, v7_rows_job * job, v7_stage stage, int R, double work_per_value) {
    job->stage = stage;
    ctx_parallel_range(ctx, R, 1, work_per_value * (double)R * (double)job->C, v7_rows_range, job);
}

static void v7_time_mix(context * ctx, const layer * L, const batch * b) {
    const model * m = ctx->m;
    run_state * rs = &ctx->rs;
    const int R = b->n_rows;
    const int64_t C = m->n_embed, H = m->n_head, S = m->head_size, RC = (int64_t)R * C;
    const float * mix = L->x_rwkvag;
    float *r = rs->r, *w = rs->w, *k = rs->k, *v = rs->v, *a = rs->a, *g = rs->g, *kk = rs->kk, *y = rs->y;
    float * lora = rs->lora;
    v7_rows_job rows = {.ctx = ctx, .L = L, .C = C, .H = H, .S = S, .r = r, .w = w, .k = k, .v = v, .a = a, .g = g,
                        .kk = kk, .y = y, .gate = rs->out, .v_first = rs->v_first};

    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, mix + MIX_R * C, NULL, R, C);
    ctx_matmul(ctx, &L->att_r, rs->xm, R, r, C);

    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, mix + MIX_W * C, NULL, R, C);
    ctx_matmul(ctx, &L->w1, rs->xm, R, lora, L->w1.ne[1]);
    tanh_array(ctx, lora, R * L->w1.ne[1]);
    ctx_matmul(ctx, &L->w2, lora, R, w, C);
    v7_rows(ctx, &rows, V7_DECAY, R, 30.0);

    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, mix + MIX_K * C, NULL, R, C);
    ctx_matmul(ctx, &L->att_k, rs->xm, R, k, C);

    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, mix + MIX_V * C, NULL, R, C);
    ctx_matmul(ctx, &L->att_v, rs->xm, R, v, C);
    if (!L->has_v_lora) {
        memcpy(rs->v_first, v, (size_t)RC * sizeof(float));
    } else {
        ctx_matmul(ctx, &L->v1, rs->xm, R, lora, L->v1.ne[1]);
        ctx_matmul(ctx, &L->v2, lora, R, rs->out, C);
        v7_rows(ctx, &rows, V7_VALUE_GATE, R, 20.0);
    }

    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, mix + MIX_A * C, NULL, R, C);
    ctx_matmul(ctx, &L->a1, rs->xm, R, lora, L->a1.ne[1]);
    ctx_matmul(ctx, &L->a2, lora, R, a, C);
    v7_rows(ctx, &rows, V7_RATE, R, 20.0);

    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, mix + MIX_G * C, NULL, R, C);
    ctx_matmul(ctx, &L->g1, rs->xm, R, lora, L->g1.ne[1]);
    ctx->kern->sigmoid(lora, lora, R * L->g1.ne[1]);
    ctx_matmul(ctx, &L->g2, lora, R, g, C);

    v7_rows(ctx, &rows, V7_KEYS, R, 8.0);

    const heads_job recurrence = {.state = rs->att_state, .r = r, .k = k, .v = v, .w = w, .kk = kk, .b = a, .y = y,
                                  .n_seq = b->n_seq, .seq_len = b->seq_len, .C = C, .S = S, .w_stride = C, .step = v7_step};
    run_heads(ctx, &recurrence);

    v7_rows(ctx, &rows, V7_OUTPUT, R, 12.0);
}

const arch_ops arch_v7 = {
    .arch = ARCH_V7,
    .version = "7",
    .bind = v7_bind,
    .time_mix_state_len = heads_state_len,
    .init_time_mix_state = heads_init_state,
    .scratch = v7_scratch,
    .time_mix = v7_time_mix,
};
