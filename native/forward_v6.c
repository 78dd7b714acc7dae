/*
 * forward_v6.c: RWKV v6 "Finch" (World v6).
 *
 * v5.2's recurrence (state K key-major, K[i][j]: key i, value j) with two data-dependent parts:
 * - the token shift ("ddlerp"): a first mix x + (x_prev - x) * maa_x feeds a low-rank MLP whose
 *   five outputs shift the mixes of w, k, v, r and g token by token;
 * - the decay: w_t = exp(-exp(time_decay + tanh(x_w D1) D2)), one per channel and token.
 *     y_t[j] = sum_i r_t[i] (K[i][j] + u[i] k_t[i] v_t[j]),   K[i][j] = w_t[i] K[i][j] + k_t[i] v_t[j]
 *
 * Format facts (rwkv.cpp's converter): `time_decay` is kept raw, (n_head, head_size, 1), since
 * the decay depends on the token; `time_faaaa` is the bonus u, same shape; the low-rank
 * matrices are stored transposed into plain (out, in) matrices: `time_maa_w1` (5*D, C),
 * `time_maa_w2` (5, C, D) (a 3-D tensor, never quantized: five D -> C matrices),
 * `time_decay_w1` (D2, C), `time_decay_w2` (C, D2).
 *
 * State per layer, as rwkv.cpp lays it out: (2 + head_size) vectors of n_embed:
 * [ffn_xx, att_xx, n_head matrices head_size x head_size, key-major]; fresh = zeros.
 */
#include <math.h>
#include <stdio.h>

#include "engine.h"

/* The order of the five low-rank mixes in time_maa_w1's output and time_maa_w2. */
enum { MIX_W, MIX_K, MIX_V, MIX_R, MIX_G, N_MIX };

static int v6_bind_mix(model * m, error_slot * err, int i, layer * L) {
    const int64_t C = m->n_embed;
    char key[128];
    snprintf(key, sizeof key, "blocks.%d.att.time_maa_w1", i);
    if (model_matrix(m, err, key, C, -1, &L->maa_w1) != 0) return -1;
    const int64_t D = L->maa_w1.ne[1] / N_MIX;
    snprintf(key, sizeof key, "blocks.%d.att.time_maa_w2", i);
    const tensor * w2 = model_find(m, key);
    if (w2 && (L->maa_w1.ne[1] % N_MIX != 0 || w2->ne[0] != D || w2->ne[1] != C || w2->ne[2] != N_MIX || w2->ne[3] != 1)) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE,
                  "tensor '%s' has shape [%lld, %lld, %lld] (file order), expected [%lld, %lld, 5] to match '%s'", key,
                  (long long)w2->ne[0], (long long)w2->ne[1], (long long)w2->ne[2], (long long)D, (long long)C,
                  L->maa_w1.key);
        return -1;
    }
    const float * all = model_vector(m, err, key, N_MIX * C * D);
    if (!all) return -1;
    for (int j = 0; j < N_MIX; j++) L->maa_w2[j] = model_owned_matrix(all + j * C * D, D, C, w2->key);
    return 0;
}

static int v6_bind(model * m, error_slot * err) {
    const int64_t C = m->n_embed;
    if (bind_heads(m, err, "blocks.0.att.time_faaaa") != 0 || bind_ffn_dim(m, err) != 0) return -1;
    const int64_t F = m->ffn_dim;
    char key[128];
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        BIND_VECTOR(ln1_w, "ln1.weight", C) BIND_VECTOR(ln1_b, "ln1.bias", C)
        BIND_VECTOR(ln2_w, "ln2.weight", C) BIND_VECTOR(ln2_b, "ln2.bias", C)
        BIND_VECTOR(maa_x, "att.time_maa_x", C) BIND_VECTOR(maa_w, "att.time_maa_w", C) BIND_VECTOR(maa_k, "att.time_maa_k", C)
        BIND_VECTOR(maa_v, "att.time_maa_v", C) BIND_VECTOR(maa_r, "att.time_maa_r", C) BIND_VECTOR(maa_g, "att.time_maa_g", C)
        if (v6_bind_mix(m, err, i, L) != 0) return -1;
        BIND_VECTOR(att_decay, "att.time_decay", C) BIND_VECTOR(faaaa, "att.time_faaaa", C)
        BIND_MATRIX(decay_w1, "att.time_decay_w1", C, -1)
        BIND_MATRIX(decay_w2, "att.time_decay_w2", L->decay_w1.ne[1], C)
        BIND_MATRIX(att_r, "att.receptance.weight", C, C) BIND_MATRIX(att_k, "att.key.weight", C, C)
        BIND_MATRIX(att_v, "att.value.weight", C, C) BIND_MATRIX(att_o, "att.output.weight", C, C)
        BIND_MATRIX(att_g, "att.gate.weight", C, C)
        BIND_VECTOR(ln_x_w, "att.ln_x.weight", C) BIND_VECTOR(ln_x_b, "att.ln_x.bias", C)
        BIND_VECTOR(ffn_mix_k, "ffn.time_maa_k", C) BIND_VECTOR(ffn_mix_r, "ffn.time_maa_r", C)
        BIND_MATRIX(ffn_k, "ffn.key.weight", C, F) BIND_MATRIX(ffn_r, "ffn.receptance.weight", C, C) BIND_MATRIX(ffn_v, "ffn.value.weight", F, C)
    }
    return 0;
}

/* the widest low-rank dimensions of any layer: token-shift D and decay D2 */
static void v6_lora_widths(const model * m, int64_t * mix, int64_t * decay) {
    *mix = *decay = 1;
    for (int64_t i = 0; i < m->n_layer; i++) {
        const layer * L = &m->layers[i];
        if (L->maa_w2[0].ne[0] > *mix) *mix = L->maa_w2[0].ne[0];
        if (L->decay_w1.ne[1] > *decay) *decay = L->decay_w1.ne[1];
    }
}

/* x, xx, dx, xm, extra, w, k, v, r, g, y, out; the five token-shift hiddens and one gathered;
 * the decay hidden; the FFN hidden */
static size_t v6_scratch_per_token(const model * m) {
    int64_t D, D2;
    v6_lora_widths(m, &D, &D2);
    return (size_t)(12 * m->n_embed + 6 * D + D2 + m->ffn_dim);
}

static void v6_forward(context * ctx, const uint32_t * tokens, int T, float * state, float * logits) {
    const model * m = ctx->m;
    const int64_t C = m->n_embed, N = ctx->chunk, H = m->n_head, S = m->head_size;
    const int64_t TC = (int64_t)T * C;
    int64_t Dmax, D2max;
    v6_lora_widths(m, &Dmax, &D2max);
    float * x = ctx->work;
    float * xx = x + N * C;
    float * dx = xx + N * C;
    float * xm = dx + N * C;
    float * extra = xm + N * C;
    float * w = extra + N * C;
    float * k = w + N * C;
    float * v = k + N * C;
    float * r = v + N * C;
    float * g = r + N * C;
    float * y = g + N * C;
    float * out = y + N * C;
    float * mix_hidden = out + N * C;           /* T x 5D */
    float * one_hidden = mix_hidden + N * 5 * Dmax; /* T x D */
    float * decay_hidden = one_hidden + N * Dmax;   /* T x D2 */
    float * hidden = decay_hidden + N * D2max;

    const channel_scratch ffn = {xx, dx, xm, r, out, hidden};

    embed_chunk(ctx, tokens, T, x);
    for (int64_t li = 0; li < m->n_layer; li++) {
        const layer * L = &m->layers[li];
        float * ffn_xx = state + li * (2 + S) * C;
        float * att_xx = ffn_xx + C;
        float * heads = att_xx + C;
        const int64_t D = L->maa_w2[0].ne[0], D2 = L->decay_w1.ne[1];

        /* ---- time mixing: ddlerp, then the five products ---- */
        layer_norm_rows(xx, x, L->ln1_w, L->ln1_b, T, C, m->ln_eps);
        shift_delta(dx, xx, att_xx, T, C);
        mix_tokens(xm, xx, dx, L->maa_x, NULL, T, C);
        ctx_matmul(ctx, &L->maa_w1, xm, T, mix_hidden, N_MIX * D);
        tanh_array(ctx, mix_hidden, T * N_MIX * D);

        const float * maa[N_MIX] = {L->maa_w, L->maa_k, L->maa_v, L->maa_r, L->maa_g};
        for (int s = 0; s < N_MIX; s++) {
            for (int t = 0; t < T; t++) {
                memcpy(one_hidden + t * D, mix_hidden + (t * N_MIX + s) * D, (size_t)D * sizeof(float));
            }
            ctx_matmul(ctx, &L->maa_w2[s], one_hidden, T, extra, C);
            mix_tokens(xm, xx, dx, maa[s], extra, T, C);
            switch (s) {
            case MIX_W:
                ctx_matmul(ctx, &L->decay_w1, xm, T, decay_hidden, D2);
                tanh_array(ctx, decay_hidden, T * D2);
                ctx_matmul(ctx, &L->decay_w2, decay_hidden, T, w, C);
                /* w = exp(-exp(time_decay + lora)) */
                add_rows(w, L->att_decay, T, C);
                ctx->kern->exp(w, w, TC);
                for (int64_t j = 0; j < TC; j++) w[j] = -w[j];
                ctx->kern->exp(w, w, TC);
                break;
            case MIX_K: ctx_matmul(ctx, &L->att_k, xm, T, k, C); break;
            case MIX_V: ctx_matmul(ctx, &L->att_v, xm, T, v, C); break;
            case MIX_R: ctx_matmul(ctx, &L->att_r, xm, T, r, C); break;
            case MIX_G: ctx_matmul(ctx, &L->att_g, xm, T, g, C); break;
            }
        }

        /* ---- the recurrence: token by token, heads in parallel ---- */
        const heads_job recurrence = {.state = heads, .r = r, .k = k, .v = v, .w = w, .u = L->faaaa,
                                      .y = y, .T = T, .C = C, .S = S, .w_stride = C, .step = key_major_step};
        run_heads(ctx, &recurrence, H);

        attention_output(ctx, L, x, y, g, T, out);

        channel_mix(ctx, L, x, ffn_xx, T, &ffn);
        if (m->rescale_every && (li + 1) % m->rescale_every == 0) {
            for (int64_t j = 0; j < TC; j++) x[j] *= 0.5f; /* llama.cpp's files expect it, see model_gguf.c */
        }
    }
    output_logits(ctx, x, T, xx, logits);
}

const arch_ops arch_v6 = {
    .arch = ARCH_V6,
    .version = "6",
    .bind = v6_bind,
    .forward = v6_forward,
    .state_len = heads_state_len,
    .init_state = heads_init_state,
    .scratch_per_token = v6_scratch_per_token,
};
