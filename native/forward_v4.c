/*
 * forward_v4.c: the time mix of RWKV v4 (Pile, Raven, World v4).
 *
 *     k, v, r = K xk, V xv, R xr              (x* : token-shift mixes of ln1(x))
 *     wkv_t = (e^(u+k_t) v_t + sum_{i<t} e^(w (t-1-i) + k_i) v_i) / (same with v = 1)
 *     y = sigmoid(r) * wkv
 * per channel, carried between tokens as aa (numerator), bb (denominator) and pp (their
 * common exponent, kept at the running maximum so nothing overflows).
 *
 * Time-mix state per layer, as rwkv.cpp lays it out: [aa, bb, pp], each n_embed floats; a
 * fresh state is zeros with pp = -1e30 (no history: e^pp vanishes beside any e^k).
 * Format fact: time_decay is stored already transformed to -exp(w).
 */
#include <math.h>

#include "engine.h"

#define V4_FRESH_PP -1e30f
#define WKV4_BLOCK 64 /* channels per pass: the exponentials of a pass go to the kernels at once */

static bool v4_bind(model * m, error_slot * err) {
    if (!bind_ffn_dim(m, err)) return false;
    const int64_t C = m->n_embed, F = m->ffn_dim;
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        const bool ok = bind_vector(m, err, i, "ln1.weight", C, &L->ln1_w) && bind_vector(m, err, i, "ln1.bias", C, &L->ln1_b) &&
                        bind_vector(m, err, i, "ln2.weight", C, &L->ln2_w) && bind_vector(m, err, i, "ln2.bias", C, &L->ln2_b) &&
                        bind_vector(m, err, i, "att.time_decay", C, &L->att_decay) &&
                        bind_vector(m, err, i, "att.time_first", C, &L->att_first) &&
                        bind_mix(m, err, i, "att.time_mix_k", C, &L->att_mix_k) &&
                        bind_mix(m, err, i, "att.time_mix_v", C, &L->att_mix_v) &&
                        bind_mix(m, err, i, "att.time_mix_r", C, &L->att_mix_r) &&
                        bind_matrix(m, err, i, "att.key.weight", C, C, &L->att_k) &&
                        bind_matrix(m, err, i, "att.value.weight", C, C, &L->att_v) &&
                        bind_matrix(m, err, i, "att.receptance.weight", C, C, &L->att_r) &&
                        bind_matrix(m, err, i, "att.output.weight", C, C, &L->att_o) &&
                        bind_mix(m, err, i, "ffn.time_mix_k", C, &L->ffn_mix_k) &&
                        bind_mix(m, err, i, "ffn.time_mix_r", C, &L->ffn_mix_r) &&
                        bind_matrix(m, err, i, "ffn.key.weight", C, F, &L->ffn_k) &&
                        bind_matrix(m, err, i, "ffn.value.weight", F, C, &L->ffn_v) &&
                        bind_matrix(m, err, i, "ffn.receptance.weight", C, C, &L->ffn_r);
        if (!ok) return false;
    }
    return true;
}

static int64_t v4_state_len(const model * m) { return 3 * m->n_embed; }

static void v4_init_state(const model * m, float * state) {
    const int64_t C = m->n_embed;
    for (int64_t c = 0; c < 2 * C; c++) state[c] = 0.0f;
    for (int64_t c = 2 * C; c < 3 * C; c++) state[c] = V4_FRESH_PP;
}

static void v4_scratch(const model * m, time_mix_scratch * need) { need->k = need->v = true; }

typedef struct wkv4_job {
    const kernels * kern;
    const layer * L;
    const batch * b;
    float * const * state;   /* per sequence: aa, bb, pp */
    const float *k, *v, *r;
    float * y;
    int64_t C;
} wkv4_job;

/* The recurrence of channels [c0, c1) of one sequence over its rows (channels are independent). */
static void wkv4_channels(const wkv4_job * job, int64_t seq, int64_t c0, int64_t c1) {
    const int64_t C = job->C;
    const float * first = job->L->att_first;
    const float * decay = job->L->att_decay;
    float * aa = job->state[seq];
    float * bb = aa + C;
    float * pp = bb + C;
    float e[4 * WKV4_BLOCK], q[WKV4_BLOCK];
    for (int64_t b0 = c0; b0 < c1; b0 += WKV4_BLOCK) {
        const int64_t n = c1 - b0 < WKV4_BLOCK ? c1 - b0 : WKV4_BLOCK;
        for (int64_t row = seq * job->b->seq_len; row < (seq + 1) * job->b->seq_len; row++) {
            const float * k = job->k + row * C + b0;
            const float * v = job->v + row * C + b0;
            const float * r = job->r + row * C + b0;
            float * y = job->y + row * C + b0;
            float *a = aa + b0, *bs = bb + b0, *p = pp + b0;
            const float *u = first + b0, *w = decay + b0;
            /* exponents, 4 runs of n: output (pp vs u + k), state update (pp + w vs k) */
            float *e1 = e, *e2 = e + n, *f1 = e + 2 * n, *f2 = e + 3 * n;
            for (int64_t c = 0; c < n; c++) {
                const float uk = u[c] + k[c];
                const float out_max = fmaxf(p[c], uk);
                e1[c] = p[c] - out_max;
                e2[c] = uk - out_max;
                const float pw = p[c] + w[c];
                q[c] = fmaxf(pw, k[c]);
                f1[c] = pw - q[c];
                f2[c] = k[c] - q[c];
            }
            job->kern->exp(e, e, 4 * n);
            job->kern->sigmoid(y, r, n);
            for (int64_t c = 0; c < n; c++) {
                const float wkv = (e1[c] * a[c] + e2[c] * v[c]) / (e1[c] * bs[c] + e2[c]);
                a[c] = f1[c] * a[c] + f2[c] * v[c];
                bs[c] = f1[c] * bs[c] + f2[c];
                p[c] = q[c];
                y[c] *= wkv;
            }
        }
    }
}

/* [i0, i1) of (sequence, channel) pairs, pair = sequence * C + channel */
static void wkv4_range(void * arg, int64_t i0, int64_t i1) {
    const wkv4_job * job = (const wkv4_job *)arg;
    const int64_t C = job->C;
    for (int64_t seq = i0 / C; seq * C < i1; seq++) {
        const int64_t c0 = i0 > seq * C ? i0 - seq * C : 0;
        const int64_t c1 = i1 < (seq + 1) * C ? i1 - seq * C : C;
        wkv4_channels(job, seq, c0, c1);
    }
}

static void v4_time_mix(context * ctx, const layer * L, const batch * b) {
    run_state * rs = &ctx->rs;
    const int R = b->n_rows;
    const int64_t C = ctx->m->n_embed;
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->att_mix_k, NULL, R, C);
    ctx_matmul(ctx, &L->att_k, rs->xm, R, rs->k, C);
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->att_mix_v, NULL, R, C);
    ctx_matmul(ctx, &L->att_v, rs->xm, R, rs->v, C);
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->att_mix_r, NULL, R, C);
    ctx_matmul(ctx, &L->att_r, rs->xm, R, rs->r, C);
    const wkv4_job job = {ctx->kern, L, b, rs->att_state, rs->k, rs->v, rs->r, rs->y, C};
    ctx_parallel_range(ctx, (int64_t)b->n_seq * C, 16, 30.0 * (double)R * (double)C, wkv4_range, (void *)&job);
}

const arch_ops arch_v4 = {
    .arch = ARCH_V4,
    .version = "4",
    .bind = v4_bind,
    .time_mix_state_len = v4_state_len,
    .init_time_mix_state = v4_init_state,
    .scratch = v4_scratch,
    .time_mix = v4_time_mix,
};
