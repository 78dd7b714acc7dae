/*
 * forward_v7.c: RWKV v7 "Goose" (World v7).
 *
 * Time mix, per head, with S value-major (S[i][j]: value i, key j):
 *     S_t = S_{t-1} (diag(w_t) - kk_t^T (a_t * kk_t)) + v_t k_t^T,    y_t = S_t r_t
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
 * State per layer, as rwkv.cpp lays it out: (2 + head_size) vectors of n_embed:
 * [ffn_xx, att_xx, n_head matrices head_size x head_size, value-major]; fresh = zeros.
 */
#include <math.h>
#include <stdio.h>

#include "engine.h"

/* e^-0.5: the decay is exp(-e^-0.5 * sigmoid(.)), kept inside (e^-0.607, 1). */
#define V7_DECAY_SCALE 0.60653066f

static int v7_lora(model * m, error_slot * err, int i, const char * name1, const char * name2, tensor * down, tensor * up) {
    const int64_t C = m->n_embed;
    char key[128];
    snprintf(key, sizeof key, "blocks.%d.att.%s", i, name1);
    if (model_matrix(m, err, key, C, -1, down) != 0) return -1;
    snprintf(key, sizeof key, "blocks.%d.att.%s", i, name2);
    if (model_matrix(m, err, key, down->ne[1], C, up) != 0) return -1;
    return 0;
}

static int v7_bind(model * m, error_slot * err) {
    const int64_t C = m->n_embed;
    const tensor * r_k = model_find(m, "blocks.0.att.r_k");
    if (!r_k) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "model file lacks tensor 'blocks.0.att.r_k' (architecture v7)");
        return -1;
    }
    /* r_k is (n_head, head_size) in PyTorch order */
    m->head_size = r_k->ne[0];
    m->n_head = r_k->ne[1] * r_k->ne[2] * r_k->ne[3];
    if (m->head_size * m->n_head != C) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE,
                  "tensor 'blocks.0.att.r_k' gives %lld heads of %lld, which does not make n_embed %lld",
                  (long long)m->n_head, (long long)m->head_size, (long long)C);
        return -1;
    }
    if (bind_ffn_dim(m, err) != 0) return -1;
    const int64_t F = m->ffn_dim;
    char key[128];
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        BIND_VECTOR(ln1_w, "ln1.weight", C) BIND_VECTOR(ln1_b, "ln1.bias", C)
        BIND_VECTOR(ln2_w, "ln2.weight", C) BIND_VECTOR(ln2_b, "ln2.bias", C)
        BIND_VECTOR(x_rwkvag, "att.x_rwkvag", 6 * C)
        BIND_VECTOR(w0, "att.w0", C) BIND_VECTOR(a0, "att.a0", C)
        BIND_VECTOR(k_k, "att.k_k", C) BIND_VECTOR(k_a, "att.k_a", C) BIND_VECTOR(r_k, "att.r_k", C)
        if (v7_lora(m, err, i, "w1", "w2", &L->w1, &L->w2) != 0) return -1;
        if (v7_lora(m, err, i, "a1", "a2", &L->a1, &L->a2) != 0) return -1;
        if (v7_lora(m, err, i, "g1", "g2", &L->g1, &L->g2) != 0) return -1;
        /* layer 0's value is v_first itself: its v0/v1/v2, if present, are not used */
        L->has_v_lora = i > 0;
        if (L->has_v_lora) {
            BIND_VECTOR(v0, "att.v0", C)
            if (v7_lora(m, err, i, "v1", "v2", &L->v1, &L->v2) != 0) return -1;
        }
        BIND_MATRIX(att_r, "att.receptance.weight", C, C) BIND_MATRIX(att_k, "att.key.weight", C, C)
        BIND_MATRIX(att_v, "att.value.weight", C, C) BIND_MATRIX(att_o, "att.output.weight", C, C)
        BIND_VECTOR(ln_x_w, "att.ln_x.weight", C) BIND_VECTOR(ln_x_b, "att.ln_x.bias", C)
        BIND_VECTOR(ffn_mix_k, "ffn.x_k", C)
        BIND_MATRIX(ffn_k, "ffn.key.weight", C, F) BIND_MATRIX(ffn_v, "ffn.value.weight", F, C)
    }
    return 0;
}

/* the widest low-rank dimension of any layer */
static int64_t v7_lora_width(const model * m) {
    int64_t d = 1;
    for (int64_t i = 0; i < m->n_layer; i++) {
        const layer * L = &m->layers[i];
        const int64_t dims[4] = {L->w1.ne[1], L->a1.ne[1], L->g1.ne[1], L->has_v_lora ? L->v1.ne[1] : 1};
        for (int j = 0; j < 4; j++) d = dims[j] > d ? dims[j] : d;
    }
    return d;
}

/* x, xx, dx, xm, r, w, k, v, a, g, kk, v_first, y, out; the low-rank hidden; the FFN hidden */
static size_t v7_scratch_per_token(const model * m) { return (size_t)(14 * m->n_embed + v7_lora_width(m) + m->ffn_dim); }

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

/* One token through one head: S (N x N, value-major) updated in place, y = S_t r. */
static void wkv7_head(float * restrict S, const float * restrict r, const float * restrict w, const float * restrict k,
                      const float * restrict v, const float * restrict kk, const float * restrict b, float * restrict y,
                      int64_t N) {
    for (int64_t i = 0; i < N; i++) {
        float * row = S + i * N;
        const float sa = dot(row, kk, N); /* how much of this value row lies along kk */
        const float vi = v[i];
        float acc[8] = {0};
        int64_t j = 0;
        for (; j + 8 <= N; j += 8) {
            for (int l = 0; l < 8; l++) {
                const float s = row[j + l] * w[j + l] - sa * b[j + l] + vi * k[j + l];
                row[j + l] = s;
                acc[l] += s * r[j + l];
            }
        }
        for (; j < N; j++) {
            const float s = row[j] * w[j] - sa * b[j] + vi * k[j];
            row[j] = s;
            acc[0] += s * r[j];
        }
        y[i] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
}

static void v7_step(const heads_job * j, int64_t h, int64_t t) {
    const int64_t o = t * j->C + h * j->S;
    wkv7_head(j->state + h * j->S * j->S, j->r + o, j->w + o, j->k + o, j->v + o, j->kk + o, j->b + o, j->y + o, j->S);
}

static void v7_forward(context * ctx, const uint32_t * tokens, int T, float * state, float * logits) {
    const model * m = ctx->m;
    const int64_t C = m->n_embed, N = ctx->chunk, H = m->n_head, S = m->head_size;
    const int64_t TC = (int64_t)T * C;
    float * x = ctx->work;
    float * xx = x + N * C;
    float * dx = xx + N * C;
    float * xm = dx + N * C;
    float * r = xm + N * C;
    float * w = r + N * C;
    float * k = w + N * C;
    float * v = k + N * C;
    float * a = v + N * C;
    float * g = a + N * C;
    float * kk = g + N * C;
    float * v_first = kk + N * C;
    float * y = v_first + N * C;
    float * out = y + N * C;
    float * lora = out + N * C;
    float * hidden = lora + N * v7_lora_width(m);

    const channel_scratch ffn = {xx, dx, xm, NULL, out, hidden}; /* v7 has no receptance gate */

    embed_chunk(ctx, tokens, T, x);
    for (int64_t li = 0; li < m->n_layer; li++) {
        const layer * L = &m->layers[li];
        float * ffn_xx = state + li * (2 + S) * C;
        float * att_xx = ffn_xx + C;
        float * heads = att_xx + C;

        /* ---- time mixing: the products over the whole chunk ---- */
        layer_norm_rows(xx, x, L->ln1_w, L->ln1_b, T, C, m->ln_eps);
        shift_delta(dx, xx, att_xx, T, C);
        const float * mix = L->x_rwkvag;

        mix_tokens(xm, xx, dx, mix + 0 * C, NULL, T, C);
        ctx_matmul(ctx, &L->att_r, xm, T, r, C);

        mix_tokens(xm, xx, dx, mix + 1 * C, NULL, T, C);
        ctx_matmul(ctx, &L->w1, xm, T, lora, L->w1.ne[1]);
        tanh_array(ctx, lora, T * L->w1.ne[1]);
        ctx_matmul(ctx, &L->w2, lora, T, w, C);
        add_rows(w, L->w0, T, C);
        ctx->kern->sigmoid(w, w, TC);
        for (int64_t j = 0; j < TC; j++) w[j] *= -V7_DECAY_SCALE;
        ctx->kern->exp(w, w, TC);

        mix_tokens(xm, xx, dx, mix + 2 * C, NULL, T, C);
        ctx_matmul(ctx, &L->att_k, xm, T, k, C);

        mix_tokens(xm, xx, dx, mix + 3 * C, NULL, T, C);
        ctx_matmul(ctx, &L->att_v, xm, T, v, C);
        if (!L->has_v_lora) {
            memcpy(v_first, v, (size_t)TC * sizeof(float));
        } else {
            /* later layers pull their value towards layer 0's by a data-dependent gate */
            ctx_matmul(ctx, &L->v1, xm, T, lora, L->v1.ne[1]);
            ctx_matmul(ctx, &L->v2, lora, T, out, C);
            add_rows(out, L->v0, T, C);
            ctx->kern->sigmoid(out, out, TC);
            for (int64_t j = 0; j < TC; j++) v[j] += (v_first[j] - v[j]) * out[j];
        }

        mix_tokens(xm, xx, dx, mix + 4 * C, NULL, T, C);
        ctx_matmul(ctx, &L->a1, xm, T, lora, L->a1.ne[1]);
        ctx_matmul(ctx, &L->a2, lora, T, a, C);
        add_rows(a, L->a0, T, C);
        ctx->kern->sigmoid(a, a, TC);

        mix_tokens(xm, xx, dx, mix + 5 * C, NULL, T, C);
        ctx_matmul(ctx, &L->g1, xm, T, lora, L->g1.ne[1]);
        ctx->kern->sigmoid(lora, lora, T * L->g1.ne[1]);
        ctx_matmul(ctx, &L->g2, lora, T, g, C);

        /* kk: the key scaled by k_k, L2-normalized per head; the key itself scaled by the rate a */
        for (int64_t t = 0; t < T; t++) {
            for (int64_t c = 0; c < C; c++) kk[t * C + c] = k[t * C + c] * L->k_k[c];
        }
        for (int64_t h = 0; h < T * H; h++) {
            float * kh = kk + h * S;
            const float norm = sqrtf(dot(kh, kh, S));
            const float inv = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
            for (int64_t j = 0; j < S; j++) kh[j] *= inv;
        }
        for (int64_t t = 0; t < T; t++) {
            float * kt = k + t * C;
            float * at = a + t * C;
            const float * kkt = kk + t * C;
            for (int64_t c = 0; c < C; c++) {
                kt[c] *= 1.0f + (at[c] - 1.0f) * L->k_a[c];
                at[c] *= kkt[c]; /* a becomes b = kk * a: what the state forgets, per key channel */
            }
        }

        /* ---- the recurrence: token by token, heads in parallel ---- */
        const heads_job recurrence = {.state = heads, .r = r, .k = k, .v = v, .w = w, .kk = kk, .b = a,
                                      .y = y, .T = T, .C = C, .S = S, .w_stride = C, .step = v7_step};
        run_heads(ctx, &recurrence, H);

        /* per-head group norm, the current token's bonus, the gate, the output */
        for (int t = 0; t < T; t++) {
            const int64_t o = (int64_t)t * C;
            group_norm(y + o, y + o, L->ln_x_w, L->ln_x_b, H, S, m->ln_x_eps);
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
        ctx_matmul(ctx, &L->att_o, y, T, out, C);
        for (int64_t j = 0; j < TC; j++) x[j] += out[j];

        channel_mix(ctx, L, x, ffn_xx, T, &ffn);
    }
    output_logits(ctx, x, T, xx, logits);
}

const arch_ops arch_v7 = {
    .arch = ARCH_V7,
    .version = "7",
    .bind = v7_bind,
    .forward = v7_forward,
    .state_len = heads_state_len,
    .init_state = heads_init_state,
    .scratch_per_token = v7_scratch_per_token,
};
