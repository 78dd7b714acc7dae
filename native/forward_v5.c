/*
 * forward_v5.c: RWKV v5 "Eagle": v5.1 and v5.2 (World v5).
 *
 * Time mix, per head, with the state K key-major (K[i][j]: key i, value j):
 *     y_t[j] = sum_i r_t[i] (K[i][j] + u[i] k_t[i] v_t[j])
 *     K[i][j] = w[i] K[i][j] + k_t[i] v_t[j]
 * then a group norm per head (eps m->ln_x_eps, see model.c) and, in v5.2, a SiLU gate.
 * The inner loops run over the value index j, contiguous in K.
 *
 * Format facts (rwkv.cpp's converter): `time_decay` is stored as exp(-exp(w)), the decay factor
 * itself. v5.1 keeps one decay and one bonus per head, shaped (n_head, 1, 1), the bonus
 * `time_first` stored as exp(u) and used as the factor of the current token's k v^T as is;
 * v5.2 has one per channel, (n_head, head_size, 1), the bonus `time_faaaa`, and a gate. Both are
 * expanded here to one value per channel so the two versions share one recurrence.
 *
 * State per layer, as rwkv.cpp lays it out: (2 + head_size) vectors of n_embed:
 * [ffn_xx, att_xx, n_head matrices head_size x head_size, key-major]; fresh = zeros.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine.h"

/* One value per channel from a tensor of one value per head or per channel. */
static const float * per_channel(model * m, error_slot * err, const char * key) {
    const int64_t C = m->n_embed, H = m->n_head, N = m->head_size;
    const tensor * t = model_find(m, key);
    if (!t) return model_vector(m, err, key, C); /* reports the missing key */
    const int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    if (n == C) return model_vector(m, err, key, C);
    const float * heads = model_vector(m, err, key, H); /* reports a wrong shape */
    if (!heads) return NULL;
    float * out = model_own(m, malloc((size_t)C * sizeof(float)));
    if (!out) {
        error_set(err, RWKV_ERROR_ALLOC, "out of memory copying '%s'", key);
        return NULL;
    }
    for (int64_t c = 0; c < C; c++) out[c] = heads[c / N];
    return out;
}

static int v5_bind(model * m, error_slot * err) {
    const int64_t C = m->n_embed;
    const bool gated = m->arch == ARCH_V5_2;
    if (bind_heads(m, err, "blocks.0.att.time_decay") != 0 || bind_ffn_dim(m, err) != 0) return -1;
    const int64_t F = m->ffn_dim;
    char key[128];
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        BIND_VECTOR(ln1_w, "ln1.weight", C) BIND_VECTOR(ln1_b, "ln1.bias", C)
        BIND_VECTOR(ln2_w, "ln2.weight", C) BIND_VECTOR(ln2_b, "ln2.bias", C)
        snprintf(key, sizeof key, "blocks.%d.att.time_decay", i);
        if (!(L->att_decay = per_channel(m, err, key))) return -1;
        snprintf(key, sizeof key, "blocks.%d.att.%s", i, gated ? "time_faaaa" : "time_first");
        if (!(L->att_first = per_channel(m, err, key))) return -1;
        BIND_MIX(att_mix_k, "att.time_mix_k", C) BIND_MIX(att_mix_v, "att.time_mix_v", C) BIND_MIX(att_mix_r, "att.time_mix_r", C)
        BIND_VECTOR(ln_x_w, "att.ln_x.weight", C) BIND_VECTOR(ln_x_b, "att.ln_x.bias", C)
        BIND_MATRIX(att_k, "att.key.weight", C, C) BIND_MATRIX(att_v, "att.value.weight", C, C)
        BIND_MATRIX(att_r, "att.receptance.weight", C, C) BIND_MATRIX(att_o, "att.output.weight", C, C)
        if (gated) {
            BIND_MIX(att_mix_g, "att.time_mix_g", C)
            BIND_MATRIX(att_g, "att.gate.weight", C, C)
        }
        BIND_MIX(ffn_mix_k, "ffn.time_mix_k", C) BIND_MIX(ffn_mix_r, "ffn.time_mix_r", C)
        BIND_MATRIX(ffn_k, "ffn.key.weight", C, F) BIND_MATRIX(ffn_v, "ffn.value.weight", F, C) BIND_MATRIX(ffn_r, "ffn.receptance.weight", C, C)
    }
    return 0;
}

/* x, xx, dx, xk, xv, xr, xg, k, v, r, g, y, out; the FFN hidden */
static size_t v5_scratch_per_token(const model * m) { return (size_t)(13 * m->n_embed + m->ffn_dim); }

static void v5_forward(context * ctx, const uint32_t * tokens, int T, float * state, float * logits) {
    const model * m = ctx->m;
    const int64_t C = m->n_embed, N = ctx->chunk, H = m->n_head, S = m->head_size;
    const bool gated = m->arch == ARCH_V5_2;
    float * x = ctx->work;
    float * xx = x + N * C;
    float * dx = xx + N * C;
    float * xk = dx + N * C;
    float * xv = xk + N * C;
    float * xr = xv + N * C;
    float * xg = xr + N * C;
    float * k = xg + N * C;
    float * v = k + N * C;
    float * r = v + N * C;
    float * g = r + N * C;
    float * y = g + N * C;
    float * out = y + N * C;
    float * hidden = out + N * C;
    const channel_scratch ffn = {xx, dx, xk, r, out, hidden};

    embed_chunk(ctx, tokens, T, x);
    for (int64_t li = 0; li < m->n_layer; li++) {
        const layer * L = &m->layers[li];
        float * ffn_xx = state + li * (2 + S) * C;
        float * att_xx = ffn_xx + C;
        float * heads = att_xx + C;

        /* ---- time mixing ---- */
        layer_norm_rows(xx, x, L->ln1_w, L->ln1_b, T, C, m->ln_eps);
        shift_delta(dx, xx, att_xx, T, C);
        mix_tokens(xk, xx, dx, L->att_mix_k, NULL, T, C);
        mix_tokens(xv, xx, dx, L->att_mix_v, NULL, T, C);
        mix_tokens(xr, xx, dx, L->att_mix_r, NULL, T, C);
        if (gated) mix_tokens(xg, xx, dx, L->att_mix_g, NULL, T, C);
        ctx_matmul(ctx, &L->att_k, xk, T, k, C);
        ctx_matmul(ctx, &L->att_v, xv, T, v, C);
        ctx_matmul(ctx, &L->att_r, xr, T, r, C);
        if (gated) ctx_matmul(ctx, &L->att_g, xg, T, g, C);

        const heads_job recurrence = {.state = heads, .r = r, .k = k, .v = v, .w = L->att_decay, .u = L->att_first,
                                      .y = y, .T = T, .C = C, .S = S, .w_stride = 0, .step = key_major_step};
        run_heads(ctx, &recurrence, H);

        attention_output(ctx, L, x, y, gated ? g : NULL, T, out);

        channel_mix(ctx, L, x, ffn_xx, T, &ffn);
    }
    output_logits(ctx, x, T, xx, logits);
}

const arch_ops arch_v5_1 = {
    .arch = ARCH_V5_1,
    .version = "5.1",
    .bind = v5_bind,
    .forward = v5_forward,
    .state_len = heads_state_len,
    .init_state = heads_init_state,
    .scratch_per_token = v5_scratch_per_token,
};

const arch_ops arch_v5_2 = {
    .arch = ARCH_V5_2,
    .version = "5.2",
    .bind = v5_bind,
    .forward = v5_forward,
    .state_len = heads_state_len,
    .init_state = heads_init_state,
    .scratch_per_token = v5_scratch_per_token,
};
