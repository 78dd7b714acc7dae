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
    const int64_t C = m->n_embed;
    const tensor * fk = model_find(m, "blocks.0.ffn.key.weight");
    if (!fk) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "model file lacks tensor 'blocks.0.ffn.key.weight' (architecture v4)");
        return -1;
    }
    m->ffn_dim = fk->ne[1];
    const int64_t F = m->ffn_dim;
    char key[128];
#define VEC(field, name, n)                                                   \
    snprintf(key, sizeof key, "blocks.%d." name, i);                          \
    if (!(L->field = model_vector(m, err, key, (n)))) return -1;
#define MAT(field, name, cols, rows)                                          \
    snprintf(key, sizeof key, "blocks.%d." name, i);                          \
    if (model_matrix(m, err, key, (cols), (rows), &L->field) != 0) return -1;
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        VEC(ln1_w, "ln1.weight", C) VEC(ln1_b, "ln1.bias", C)
        VEC(ln2_w, "ln2.weight", C) VEC(ln2_b, "ln2.bias", C)
        VEC(att_decay, "att.time_decay", C) VEC(att_first, "att.time_first", C)
        VEC(att_mix_k, "att.time_mix_k", C) VEC(att_mix_v, "att.time_mix_v", C) VEC(att_mix_r, "att.time_mix_r", C)
        MAT(att_k, "att.key.weight", C, C) MAT(att_v, "att.value.weight", C, C)
        MAT(att_r, "att.receptance.weight", C, C) MAT(att_o, "att.output.weight", C, C)
        VEC(ffn_mix_k, "ffn.time_mix_k", C) VEC(ffn_mix_r, "ffn.time_mix_r", C)
        MAT(ffn_k, "ffn.key.weight", C, F) MAT(ffn_v, "ffn.value.weight", F, C) MAT(ffn_r, "ffn.receptance.weight", C, C)
    }
#undef VEC
#undef MAT
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

static size_t v4_scratch_per_token(const model * m) { return (size_t)(9 * m->n_embed + m->ffn_dim); }

/* out_t = x_t * mix + x_{t-1} * (1 - mix), where x_{-1} is the previous call's last token. */
static void token_shift(float * out, const float * xx, const float * prev, const float * mix, int T, int64_t C) {
    for (int t = 0; t < T; t++) {
        const float * p = t == 0 ? prev : xx + (t - 1) * C;
        const float * cur = xx + t * C;
        float * o = out + t * C;
        for (int64_t c = 0; c < C; c++) o[c] = cur[c] * mix[c] + p[c] * (1.0f - mix[c]);
    }
}

static void v4_forward(context * ctx, const uint32_t * tokens, int T, float * state, float * logits) {
    const model * m = ctx->m;
    const int64_t C = m->n_embed, F = m->ffn_dim, N = ctx->chunk;
    float * x = ctx->work;
    float * xx = x + N * C;
    float * xk = xx + N * C;
    float * xv = xk + N * C;
    float * xr = xv + N * C;
    float * k = xr + N * C;
    float * v = k + N * C;
    float * r = v + N * C;
    float * out = r + N * C;
    float * hidden = out + N * C;

    for (int t = 0; t < T; t++) {
        ctx_embedding(ctx, tokens[t], x + t * C);
        layer_norm(x + t * C, x + t * C, m->ln0_w, m->ln0_b, C, 1e-5f);
    }
    for (int64_t i = 0; i < m->n_layer; i++) {
        const layer * L = &m->layers[i];
        float * ffn_xx = state + i * 5 * C;
        float * att_xx = ffn_xx + C;
        float * aa = att_xx + C;
        float * bb = aa + C;
        float * pp = bb + C;

        /* time mixing */
        for (int t = 0; t < T; t++) layer_norm(xx + t * C, x + t * C, L->ln1_w, L->ln1_b, C, 1e-5f);
        token_shift(xk, xx, att_xx, L->att_mix_k, T, C);
        token_shift(xv, xx, att_xx, L->att_mix_v, T, C);
        token_shift(xr, xx, att_xx, L->att_mix_r, T, C);
        memcpy(att_xx, xx + (T - 1) * C, (size_t)C * sizeof(float));
        ctx_matmul(ctx, &L->att_k, xk, T, k, C);
        ctx_matmul(ctx, &L->att_v, xv, T, v, C);
        ctx_matmul(ctx, &L->att_r, xr, T, r, C);
        for (int t = 0; t < T; t++) {
            const float * kt = k + t * C;
            const float * vt = v + t * C;
            float * rt = r + t * C;
            for (int64_t c = 0; c < C; c++) {
                /* the wkv recurrence, kept stable by carrying the running maximum exponent pp */
                float ww = L->att_first[c] + kt[c];
                float qq = fmaxf(pp[c], ww);
                float e1 = expf(pp[c] - qq), e2 = expf(ww - qq);
                float wkv = (e1 * aa[c] + e2 * vt[c]) / (e1 * bb[c] + e2);
                ww = pp[c] + L->att_decay[c];
                qq = fmaxf(ww, kt[c]);
                e1 = expf(ww - qq);
                e2 = expf(kt[c] - qq);
                aa[c] = e1 * aa[c] + e2 * vt[c];
                bb[c] = e1 * bb[c] + e2;
                pp[c] = qq;
                rt[c] = sigmoidf_(rt[c]) * wkv;
            }
        }
        ctx_matmul(ctx, &L->att_o, r, T, out, C);
        for (int64_t j = 0; j < T * C; j++) x[j] += out[j];

        /* channel mixing */
        for (int t = 0; t < T; t++) layer_norm(xx + t * C, x + t * C, L->ln2_w, L->ln2_b, C, 1e-5f);
        token_shift(xk, xx, ffn_xx, L->ffn_mix_k, T, C);
        token_shift(xr, xx, ffn_xx, L->ffn_mix_r, T, C);
        memcpy(ffn_xx, xx + (T - 1) * C, (size_t)C * sizeof(float));
        ctx_matmul(ctx, &L->ffn_k, xk, T, hidden, F);
        for (int64_t j = 0; j < T * F; j++) {
            float h = hidden[j] > 0.0f ? hidden[j] : 0.0f;
            hidden[j] = h * h;
        }
        ctx_matmul(ctx, &L->ffn_v, hidden, T, out, C);
        ctx_matmul(ctx, &L->ffn_r, xr, T, r, C);
        for (int64_t j = 0; j < T * C; j++) x[j] += sigmoidf_(r[j]) * out[j];
    }
    if (logits) {
        layer_norm(xx, x + (T - 1) * C, m->ln_out_w, m->ln_out_b, C, 1e-5f);
        ctx_head(ctx, xx, logits);
    }
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
