/*
 * forward_v6.c: the time mix of RWKV v6 "Finch" (World v6).
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
 * Time-mix state per layer, as rwkv.cpp lays it out: n_head matrices S x S, key-major;
 * fresh = zeros.
 */
#include <stdio.h>

#include "engine.h"

/* The order of the five low-rank mixes in time_maa_w1's output and time_maa_w2. */
enum { MIX_W, MIX_K, MIX_V, MIX_R, MIX_G, N_MIX };

static bool v6_bind_mix(model * m, error_slot * err, int i, layer * L) {
    const int64_t C = m->n_embed;
    if (!bind_matrix(m, err, i, "att.time_maa_w1", C, -1, &L->maa_w1)) return false;
    const int64_t D = L->maa_w1.ne[1] / N_MIX;
    char key[128];
    snprintf(key, sizeof key, "blocks.%d.att.time_maa_w2", i);
    const tensor * w2 = model_find(m, key);
    if (w2 && (L->maa_w1.ne[1] % N_MIX != 0 || w2->ne[0] != D || w2->ne[1] != C || w2->ne[2] != N_MIX || w2->ne[3] != 1)) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE,
                  "tensor '%s' has shape [%lld, %lld, %lld] (file order), expected [%lld, %lld, 5] to match '%s'", key,
                  (long long)w2->ne[0], (long long)w2->ne[1], (long long)w2->ne[2], (long long)D, (long long)C,
                  L->maa_w1.key);
        return false;
    }
    const float * all = model_vector(m, err, key, N_MIX * C * D);
    if (!all) return false;
    for (int j = 0; j < N_MIX; j++) L->maa_w2[j] = model_owned_matrix(all + j * C * D, D, C, w2->key);
    return true;
}

static bool v6_bind(model * m, error_slot * err) {
    const int64_t C = m->n_embed;
    if (!bind_heads(m, err, "blocks.0.att.time_faaaa") || !bind_ffn_dim(m, err)) return false;
    const int64_t F = m->ffn_dim;
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        const bool ok = bind_vector(m, err, i, "ln1.weight", C, &L->ln1_w) && bind_vector(m, err, i, "ln1.bias", C, &L->ln1_b) &&
                        bind_vector(m, err, i, "ln2.weight", C, &L->ln2_w) && bind_vector(m, err, i, "ln2.bias", C, &L->ln2_b) &&
                        bind_vector(m, err, i, "att.time_maa_x", C, &L->maa_x) &&
                        bind_vector(m, err, i, "att.time_maa_w", C, &L->maa_w) &&
                        bind_vector(m, err, i, "att.time_maa_k", C, &L->maa_k) &&
                        bind_vector(m, err, i, "att.time_maa_v", C, &L->maa_v) &&
                        bind_vector(m, err, i, "att.time_maa_r", C, &L->maa_r) &&
                        bind_vector(m, err, i, "att.time_maa_g", C, &L->maa_g) && v6_bind_mix(m, err, i, L) &&
                        bind_vector(m, err, i, "att.time_decay", C, &L->att_decay) &&
                        bind_vector(m, err, i, "att.time_faaaa", C, &L->faaaa) &&
                        bind_matrix(m, err, i, "att.time_decay_w1", C, -1, &L->decay_w1) &&
                        bind_matrix(m, err, i, "att.time_decay_w2", L->decay_w1.ne[1], C, &L->decay_w2) &&
                        bind_matrix(m, err, i, "att.receptance.weight", C, C, &L->att_r) &&
                        bind_matrix(m, err, i, "att.key.weight", C, C, &L->att_k) &&
                        bind_matrix(m, err, i, "att.value.weight", C, C, &L->att_v) &&
                        bind_matrix(m, err, i, "att.output.weight", C, C, &L->att_o) &&
                        bind_matrix(m, err, i, "att.gate.weight", C, C, &L->att_g) &&
                        bind_vector(m, err, i, "att.ln_x.weight", C, &L->ln_x_w) &&
                        bind_vector(m, err, i, "att.ln_x.bias", C, &L->ln_x_b) &&
                        bind_vector(m, err, i, "ffn.time_maa_k", C, &L->ffn_mix_k) &&
                        bind_vector(m, err, i, "ffn.time_maa_r", C, &L->ffn_mix_r) &&
                        bind_matrix(m, err, i, "ffn.key.weight", C, F, &L->ffn_k) &&
                        bind_matrix(m, err, i, "ffn.receptance.weight", C, C, &L->ffn_r) &&
                        bind_matrix(m, err, i, "ffn.value.weight", F, C, &L->ffn_v);
        if (!ok) return false;
    }
    return true;
}

static void v6_scratch(const model * m, time_mix_scratch * need) {
    need->w = need->k = need->v = need->g = need->extra = true;
    /* the widest low-rank dimensions of any layer: token shift D (five at once) and decay */
    need->lora_part = need->decay_lora = 1;
    for (int64_t i = 0; i < m->n_layer; i++) {
        const layer * L = &m->layers[i];
        if (L->maa_w2[0].ne[0] > need->lora_part) need->lora_part = L->maa_w2[0].ne[0];
        if (L->decay_w1.ne[1] > need->decay_lora) need->decay_lora = L->decay_w1.ne[1];
    }
    need->lora = N_MIX * need->lora_part;
}

static void v6_time_mix(context * ctx, const layer * L, const batch * b) {
    const model * m = ctx->m;
    run_state * rs = &ctx->rs;
    const int R = b->n_rows;
    const int64_t C = m->n_embed, RC = (int64_t)R * C;
    const int64_t D = L->maa_w2[0].ne[0], D2 = L->decay_w1.ne[1];

    /* ddlerp: the five token-shift mixes, each with its own low-rank correction */
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->maa_x, NULL, R, C);
    ctx_matmul(ctx, &L->maa_w1, rs->xm, R, rs->lora, N_MIX * D);
    tanh_array(ctx, rs->lora, R * N_MIX * D);

    const float * maa[N_MIX] = {L->maa_w, L->maa_k, L->maa_v, L->maa_r, L->maa_g};
    for (int mix = 0; mix < N_MIX; mix++) {
        for (int64_t row = 0; row < R; row++) {
            memcpy(rs->lora_part + row * D, rs->lora + (row * N_MIX + mix) * D, (size_t)D * sizeof(float));
        }
        ctx_matmul(ctx, &L->maa_w2[mix], rs->lora_part, R, rs->extra, C);
        mix_tokens(ctx, rs->xm, rs->xx, rs->dx, maa[mix], rs->extra, R, C);
        switch (mix) {
        case MIX_W: {
            float * w = rs->w;
            ctx_matmul(ctx, &L->decay_w1, rs->xm, R, rs->decay_lora, D2);
            tanh_array(ctx, rs->decay_lora, R * D2);
            ctx_matmul(ctx, &L->decay_w2, rs->decay_lora, R, w, C);
            /* w = exp(-exp(time_decay + lora)) */
            add_rows(w, L->att_decay, R, C);
            ctx->kern->exp(w, w, RC);
            for (int64_t i = 0; i < RC; i++) w[i] = -w[i];
            ctx->kern->exp(w, w, RC);
            break;
        }
        case MIX_K: ctx_matmul(ctx, &L->att_k, rs->xm, R, rs->k, C); break;
        case MIX_V: ctx_matmul(ctx, &L->att_v, rs->xm, R, rs->v, C); break;
        case MIX_R: ctx_matmul(ctx, &L->att_r, rs->xm, R, rs->r, C); break;
        case MIX_G: ctx_matmul(ctx, &L->att_g, rs->xm, R, rs->g, C); break;
        }
    }

    const heads_job recurrence = {.state = rs->att_state, .r = rs->r, .k = rs->k, .v = rs->v, .w = rs->w, .u = L->faaaa,
                                  .y = rs->y, .n_seq = b->n_seq, .seq_len = b->seq_len, .C = C, .S = m->head_size,
                                  .w_stride = C, .step = key_major_step};
    run_heads(ctx, &recurrence);

    group_norm_and_gate(ctx, L, rs->y, rs->g, R, rs->out);
}

const arch_ops arch_v6 = {
    .arch = ARCH_V6,
    .version = "6",
    .bind = v6_bind,
    .time_mix_state_len = heads_state_len,
    .init_time_mix_state = heads_init_state,
    .scratch = v6_scratch,
    .time_mix = v6_time_mix,
};
