/*
 * forward_v4.c: RWKV v4 (Pile, Raven, World v4).
 *
 * State per layer, as rwkv.cpp lays it out: [ffn_xx, att_xx, att_aa, att_bb, att_pp], each
 * n_embed floats; a fresh state is zeros with att_pp = -1e30.
 * Format fact: time_decay is stored already transformed to -exp(w).
 */
#include <math.h>
#include <stdio.h>

#include "engine.h"

static int v4_bind(model * m, error_slot * err) {
    if (bind_ffn_dim(m, err) != 0) return -1;
    const int64_t C = m->n_embed, F = m->ffn_dim;
    char key[128];
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        BIND_VECTOR(ln1_w, "ln1.weight", C) BIND_VECTOR(ln1_b, "ln1.bias", C)
        BIND_VECTOR(ln2_w, "ln2.weight", C) BIND_VECTOR(ln2_b, "ln2.bias", C)
        BIND_VECTOR(att_decay, "att.time_decay", C) BIND_VECTOR(att_first, "att.time_first", C)
        BIND_MIX(att_mix_k, "att.time_mix_k", C) BIND_MIX(att_mix_v, "att.time_mix_v", C)
        BIND_MIX(att_mix_r, "att.time_mix_r", C)
        BIND_MATRIX(att_k, "att.key.weight", C, C) BIND_MATRIX(att_v, "att.value.weight", C, C)
        BIND_MATRIX(att_r, "att.receptance.weight", C, C) BIND_MATRIX(att_o, "att.output.weight", C, C)
        BIND_MIX(ffn_mix_k, "ffn.time_mix_k", C) BIND_MIX(ffn_mix_r, "ffn.time_mix_r", C)
        BIND_MATRIX(ffn_k, "ffn.key.weight", C, F) BIND_MATRIX(ffn_v, "ffn.value.weight", F, C)
        BIND_MATRIX(ffn_r, "ffn.receptance.weight", C, C)
    }
    return 0;
}

static size_t v4_state_len(const model * m) { return (size_t)(5 * m->n_embed * m->n_layer); }

static void v4_init_state(const model * m, float * state) {
    const int64_t C = m->n_embed;
    for (int64_t i = 0; i < m->n_layer; i++) {
        float * s = state + i * 5 * C;
        for (int64_t c = 0; c < 4 * C; c++) s[c] = 0.0f;
        for (int64_t c = 0; c < C; c++) s[4 * C + c] = -1e30f;
    }
}

/* x, xx, dx, xk, xv, xr, k, v, r, out; the FFN hidden */
static size_t v4_scratch_per_token(const model * m) { return (size_t)(10 * m->n_embed + m->ffn_dim); }

typedef struct wkv4_job {
    const kernels * kern;
    const layer * L;
    const float *k, *v;
    float * r; /* in: receptance before the sigmoid; out: sigmoid(r) * wkv */
    float *aa, *bb, *pp;
    int T;
    int64_t C;
} wkv4_job;

#define WKV4_BLOCK 64 /* channels per pass: the exponentials of a pass go to the kernels at once */

/* The wkv recurrence of channels [c0, c1) over the chunk's tokens (channels are independent),
 * kept stable by carrying the running maximum exponent pp. */
static void wkv4_range(void * arg, int64_t c0, int64_t c1) {
    const wkv4_job * j = (const wkv4_job *)arg;
    const float * first = j->L->att_first;
    const float * decay = j->L->att_decay;
    float *aa = j->aa, *bb = j->bb, *pp = j->pp;
    float e[4 * WKV4_BLOCK], q[WKV4_BLOCK];
    for (int64_t b0 = c0; b0 < c1; b0 += WKV4_BLOCK) {
        const int64_t n = c1 - b0 < WKV4_BLOCK ? c1 - b0 : WKV4_BLOCK;
        for (int t = 0; t < j->T; t++) {
            const float * kt = j->k + t * j->C + b0;
            const float * vt = j->v + t * j->C + b0;
            float * rt = j->r + t * j->C + b0;
            float *a = aa + b0, *b = bb + b0, *p = pp + b0;
            const float *u = first + b0, *w = decay + b0;
            /* exponents, 4 runs of n: output (pp vs u + k), state update (pp + w vs k) */
            float *e1 = e, *e2 = e + n, *f1 = e + 2 * n, *f2 = e + 3 * n;
            for (int64_t c = 0; c < n; c++) {
                const float ww = u[c] + kt[c];
                const float qq = fmaxf(p[c], ww);
                e1[c] = p[c] - qq;
                e2[c] = ww - qq;
                const float w2 = p[c] + w[c];
                q[c] = fmaxf(w2, kt[c]);
                f1[c] = w2 - q[c];
                f2[c] = kt[c] - q[c];
            }
            j->kern->exp(e, e, 4 * n);
            j->kern->sigmoid(rt, rt, n);
            for (int64_t c = 0; c < n; c++) {
                const float wkv = (e1[c] * a[c] + e2[c] * vt[c]) / (e1[c] * b[c] + e2[c]);
                a[c] = f1[c] * a[c] + f2[c] * vt[c];
                b[c] = f1[c] * b[c] + f2[c];
                p[c] = q[c];
                rt[c] *= wkv;
            }
        }
    }
}

static void v4_forward(context * ctx, const uint32_t * tokens, int T, float * state, float * logits) {
    const model * m = ctx->m;
    const int64_t C = m->n_embed, N = ctx->chunk, TC = (int64_t)T * C;
    float * x = ctx->work;
    float * xx = x + N * C;
    float * dx = xx + N * C;
    float * xk = dx + N * C;
    float * xv = xk + N * C;
    float * xr = xv + N * C;
    float * k = xr + N * C;
    float * v = k + N * C;
    float * r = v + N * C;
    float * out = r + N * C;
    float * hidden = out + N * C;
    const channel_scratch ffn = {xx, dx, xk, r, out, hidden};

    embed_chunk(ctx, tokens, T, x);
    for (int64_t i = 0; i < m->n_layer; i++) {
        const layer * L = &m->layers[i];
        float * ffn_xx = state + i * 5 * C;
        float * att_xx = ffn_xx + C;
        float * aa = att_xx + C;
        float * bb = aa + C;
        float * pp = bb + C;

        /* time mixing */
        layer_norm_rows(xx, x, L->ln1_w, L->ln1_b, T, C, m->ln_eps);
        shift_delta(dx, xx, att_xx, T, C);
        mix_tokens(xk, xx, dx, L->att_mix_k, NULL, T, C);
        mix_tokens(xv, xx, dx, L->att_mix_v, NULL, T, C);
        mix_tokens(xr, xx, dx, L->att_mix_r, NULL, T, C);
        ctx_matmul(ctx, &L->att_k, xk, T, k, C);
        ctx_matmul(ctx, &L->att_v, xv, T, v, C);
        ctx_matmul(ctx, &L->att_r, xr, T, r, C);
        const wkv4_job wkv = {ctx->kern, L, k, v, r, aa, bb, pp, T, C};
        ctx_parallel_range(ctx, C, 16, 30.0 * (double)T * (double)C, wkv4_range, (void *)&wkv);
        ctx_matmul(ctx, &L->att_o, r, T, out, C);
        for (int64_t j = 0; j < TC; j++) x[j] += out[j];

        channel_mix(ctx, L, x, ffn_xx, T, &ffn);
    }
    output_logits(ctx, x, T, xx, logits);
}

const arch_ops arch_v4 = {
    .arch = ARCH_V4,
    .version = "4",
    .bind = v4_bind,
    .forward = v4_forward,
    .state_len = v4_state_len,
    .init_state = v4_init_state,
    .scratch_per_token = v4_scratch_per_token,
};
