/*
 * forward_v5.c: the time mix of RWKV v5 "Eagle": v5.1 and v5.2 (World v5).
 *
 * Per head, with the state K key-major (K[i][j]: key i, value j):
 *     y_t[j] = sum_i r_t[i] (K[i][j] + u[i] k_t[i] v_t[j])
 *     K[i][j] = w[i] K[i][j] + k_t[i] v_t[j]
 * then a group norm per head (eps m->ln_x_eps, see model.c) and, in v5.2, a SiLU gate.
 *
 * Format facts (rwkv.cpp's converter): `time_decay` is stored as exp(-exp(w)), the decay factor
 * itself. v5.1 keeps one decay and one bonus per head, shaped (n_head, 1, 1), the bonus
 * `time_first` stored as exp(u) and used as the factor of the current token's k v^T as is;
 * v5.2 has one per channel, (n_head, head_size, 1), the bonus `time_faaaa`, and a gate. Both are
 * expanded here to one value per channel so the two versions share one recurrence.
 *
 * Time-mix state per layer, as rwkv.cpp lays it out: n_head matrices S x S, key-major;
 * fresh = zeros.
 */
#include <stdio.h>
#include <stdlib.h>

#include "engine.h"

/* One value per channel from a tensor of one value per head or per channel. */
static bool bind_per_channel(model * m, error_slot * err, int i, const char * name, const float ** out) {
    const int64_t C = m->n_embed, H = m->n_head, S = m->head_size;
    char key[128];
    snprintf(key, sizeof key, "blocks.%d.%s", i, name);
    const tensor * t = model_find(m, key);
    if (t && t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3] == H && H != C) {
        const float * heads = model_vector(m, err, key, H);
        float * channels = heads ? model_own(m, malloc((size_t)C * sizeof(float))) : NULL;
        if (heads && !channels) error_set(err, RWKV_ERROR_ALLOC, "out of memory copying '%s'", key);
        if (!channels) return false;
        for (int64_t c = 0; c < C; c++) channels[c] = heads[c / S];
        *out = channels;
        return true;
    }
    return bind_vector(m, err, i, name, C, out); /* reports a missing key or a wrong shape */
}

static bool v5_bind(model * m, error_slot * err) {
    const int64_t C = m->n_embed;
    const bool gated = m->arch == ARCH_V5_2;
    if (!bind_heads(m, err, "blocks.0.att.time_decay") || !bind_ffn_dim(m, err)) return false;
    const int64_t F = m->ffn_dim;
    for (int i = 0; i < m->n_layer; i++) {
        layer * L = &m->layers[i];
        bool ok = bind_vector(m, err, i, "ln1.weight", C, &L->ln1_w) && bind_vector(m, err, i, "ln1.bias", C, &L->ln1_b) &&
                  bind_vector(m, err, i, "ln2.weight", C, &L->ln2_w) && bind_vector(m, err, i, "ln2.bias", C, &L->ln2_b) &&
                  bind_per_channel(m, err, i, "att.time_decay", &L->att_decay) &&
                  bind_per_channel(m, err, i, gated ? "att.time_faaaa" : "att.time_first", &L->att_first) &&
                  bind_mix(m, err, i, "att.time_mix_k", C, &L->att_mix_k) &&
                  bind_mix(m, err, i, "att.time_mix_v", C, &L->att_mix_v) &&
                  bind_mix(m, err, i, "att.time_mix_r", C, &L->att_mix_r) &&
                  bind_vector(m, err, i, "att.ln_x.weight", C, &L->ln_x_w) &&
                  bind_vector(m, err, i, "att.ln_x.bias", C, &L->ln_x_b) &&
                  bind_matrix(m, err, i, "att.key.weight", C, C, &L->att_k) &&
                  bind_matrix(m, err, i, "att.value.weight", C, C, &L->att_v) &&
                  bind_matrix(m, err, i, "att.receptance.weight", C, C, &L->att_r) &&
                  bind_matrix(m, err, i, "att.output.weight", C, C, &L->att_o) &&
                  bind_mix(m, err, i, "ffn.time_mix_k", C, &L->ffn_mix_k) &&
                  bind_mix(m, err, i, "ffn.time_mix_r", C, &L->ffn_mix_r) &&
                  bind_matrix(m, err, i, "ffn.key.weight", C, F, &L->ffn_k) &&
                  bind_matrix(m, err, i, "ffn.value.weight", F, C, &L->ffn_v) &&
                  bind_matrix(m, err, i, "ffn.receptance.weight", C, C, &L->ffn_r);
        if (ok && gated) {
            ok = bind_mix(m, err, i, "att.time_mix_g", C, &L->att_mix_g) && bind_matrix(m, err, i, "att.gate.weight", C, C, &L->att_g);
        }
        if (!ok) return false;
    }
    return true;
}

static void v5_scratch(const model * m, time_mix_scratch * need) {
    need->k = need->v = true;
    need->g = m->arch == ARCH_V5_2;
}

static void v5_time_mix(context * ctx, const layer * L, const batch * b) {
    const model * m = ctx->m;
    run_state * rs = &ctx->rs;
    const int R = b->n_rows;
    const int64_t C = m->n_embed;
    const bool gated = m->arch == ARCH_V5_2;
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->att_mix_k, NULL, R, C);
    ctx_matmul(ctx, &L->att_k, rs->xm, R, rs->k, C);
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->att_mix_v, NULL, R, C);
    ctx_matmul(ctx, &L->att_v, rs->xm, R, rs->v, C);
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->att_mix_r, NULL, R, C);
    ctx_matmul(ctx, &L->att_r, rs->xm, R, rs->r, C);
    if (gated) {
        mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->att_mix_g, NULL, R, C);
        ctx_matmul(ctx, &L->att_g, rs->xm, R, rs->g, C);
    }

    const heads_job recurrence = {.state = rs->att_state, .r = rs->r, .k = rs->k, .v = rs->v, .w = L->att_decay,
                                  .u = L->att_first, .y = rs->y, .n_seq = b->n_seq, .seq_len = b->seq_len, .C = C,
                                  .S = m->head_size, .w_stride = 0, .step = key_major_step};
    run_heads(ctx, &recurrence);

    group_norm_and_gate(ctx, L, rs->y, gated ? rs->g : NULL, R, rs->out);
}

const arch_ops arch_v5_1 = {
    .arch = ARCH_V5_1,
    .version = "5.1",
    .bind = v5_bind,
    .time_mix_state_len = heads_state_len,
    .init_time_mix_state = heads_init_state,
    .scratch = v5_scratch,
    .time_mix = v5_time_mix,
};

const arch_ops arch_v5_2 = {
    .arch = ARCH_V5_2,
    .version = "5.2",
    .bind = v5_bind,
    .time_mix_state_len = heads_state_len,
    .init_time_mix_state = heads_init_state,
    .scratch = v5_scratch,
    .time_mix = v5_time_mix,
};
