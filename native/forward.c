/*
 * forward.c: the forward pass of every RWKV version, with the version's time mix plugged in
 * (arch_ops.time_mix, in forward_v*.c):
 *
 *     x = ln0(emb[token])                                    every row
 *     per layer:
 *         x += att_o(time_mix(ln1(x), its token shift))      the version's own part
 *         x += channel_mix(ln2(x), its token shift)          squared ReLU, gated before v7
 *     logits = head(ln_out(x))                               last row of each sequence asking
 *                                                            (every row: rwkv_eval_sequence_all_logits)
 *
 * The rows of a pass belong to one or more sequences, each with its own state (sequence mode:
 * one sequence of T tokens; a batch: n sequences of one token). Products run once over all
 * rows (one pass over the weights), norms per row, the token shift and the recurrences per
 * sequence.
 *
 * State per layer, as rwkv.cpp lays it out: [ffn_xx, att_xx, the time mix's state], ffn_xx
 * and att_xx being the last token's ln2 and ln1 outputs (what the next token shifts in).
 */
#include <string.h>

#include "engine.h"

static int64_t layer_state_len(const model * m) { return 2 * m->n_embed + m->ops->time_mix_state_len(m); }

size_t forward_state_len(const model * m) { return (size_t)(m->n_layer * layer_state_len(m)); }

void forward_init_state(const model * m, float * state) {
    const int64_t C = m->n_embed, len = layer_state_len(m);
    for (int64_t i = 0; i < m->n_layer; i++) {
        float * layer_state = state + i * len;
        memset(layer_state, 0, 2 * (size_t)C * sizeof(float)); /* ffn_xx, att_xx */
        m->ops->init_time_mix_state(m, layer_state + 2 * C);
    }
}

static void embed(context * ctx, const batch * b) {
    const model * m = ctx->m;
    const int64_t C = m->n_embed;
    const tensor * emb = &m->emb;
    for (int64_t row = 0; row < b->n_rows; row++) {
        float * x = ctx->rs.x + row * C;
        dequantize_row(emb->type, emb->data + (size_t)b->tokens[row] * tensor_row_bytes(emb), x, C);
        layer_norm(x, x, m->ln0_w, m->ln0_b, C, m->ln_eps);
    }
}

/* dx = the previous row's xx minus this row's, per sequence: the first row's previous is
 * `last` of its sequence (from the state), which then becomes the sequence's last row. */
static void token_shift(const batch * b, float * dx, const float * xx, float * const * last, int64_t C) {
    for (int64_t seq = 0; seq < b->n_seq; seq++) {
        const int64_t first = seq * b->seq_len;
        for (int64_t row = first; row < first + b->seq_len; row++) {
            const float * prev = row == first ? last[seq] : xx + (row - 1) * C;
            const float * cur = xx + row * C;
            float * d = dx + row * C;
            for (int64_t c = 0; c < C; c++) d[c] = prev[c] - cur[c];
        }
        memcpy(last[seq], xx + (first + b->seq_len - 1) * C, (size_t)C * sizeof(float));
    }
}

/* ---- elementwise work over a pass's rows, on the context's threads when there is enough ---- */

typedef enum { EW_RELU_SQUARED, EW_ADD, EW_SIGMOID_GATED_ADD } ew_op;

typedef struct ew_job {
    const context * ctx;
    ew_op op;
    float * x;       /* EW_RELU_SQUARED: in place; else x += ... */
    const float * a; /* the added values (EW_SIGMOID_GATED_ADD: the gate's input, made sigmoid in place) */
    float * gate;
    int64_t n;
} ew_job;

static void ew_range(void * arg, int64_t i0, int64_t i1) {
    const ew_job * job = (const ew_job *)arg;
    float * x = job->x;
    switch (job->op) {
    case EW_RELU_SQUARED:
        for (int64_t i = i0; i < i1; i++) {
            /* relu(h)^2 by clearing negative values through their sign bit: signs are random,
             * so a branch mispredicts half the time, and gcc neither vectorizes a float select
             * without -ffast-math nor keeps a multiply by (h > 0) branch-free */
            uint32_t bits;
            memcpy(&bits, &x[i], 4);
            bits &= ~(uint32_t)((int32_t)bits >> 31);
            float h;
            memcpy(&h, &bits, 4);
            x[i] = h * h;
        }
        break;
    case EW_ADD:
        for (int64_t i = i0; i < i1; i++) x[i] += job->a[i];
        break;
    case EW_SIGMOID_GATED_ADD:
        job->ctx->kern->sigmoid(job->gate + i0, job->gate + i0, i1 - i0);
        for (int64_t i = i0; i < i1; i++) x[i] += job->gate[i] * job->a[i];
        break;
    }
}

static void elementwise(context * ctx, ew_op op, float * x, const float * a, float * gate, int64_t n) {
    ew_job job = {ctx, op, x, a, gate, n};
    ctx_parallel_range(ctx, n, 16, op == EW_SIGMOID_GATED_ADD ? 20.0 * (double)n : 2.0 * (double)n, ew_range, &job);
}

static void channel_mix(context * ctx, const layer * L, const batch * b) {
    run_state * rs = &ctx->rs;
    const int R = b->n_rows;
    const int64_t C = ctx->m->n_embed, F = L->ffn_k.ne[1], RC = (int64_t)R * C;
    layer_norm_rows(ctx, rs->xx, rs->x, L->ln2_w, L->ln2_b, R, C, ctx->m->ln_eps);
    token_shift(b, rs->dx, rs->xx, rs->ffn_xx, C);
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->ffn_mix_k, NULL, R, C);
    ctx_matmul(ctx, &L->ffn_k, rs->xm, R, rs->ffn_hidden, F);
    elementwise(ctx, EW_RELU_SQUARED, rs->ffn_hidden, NULL, NULL, (int64_t)R * F);
    ctx_matmul(ctx, &L->ffn_v, rs->ffn_hidden, R, rs->out, C);
    if (!L->ffn_mix_r) { /* v7: no receptance gate */
        elementwise(ctx, EW_ADD, rs->x, rs->out, NULL, RC);
        return;
    }
    mix_tokens(ctx, rs->xm, rs->xx, rs->dx, L->ffn_mix_r, NULL, R, C);
    ctx_matmul(ctx, &L->ffn_r, rs->xm, R, rs->r, C);
    elementwise(ctx, EW_SIGMOID_GATED_ADD, rs->x, rs->out, rs->r, RC); /* x += sigmoid(r) out */
}

/* logits = head(ln_out(x)) of the last row of every sequence that asks for them, as one
 * product over those rows. */
static void output(context * ctx, const batch * b) {
    if (!b->logits) return;
    const model * m = ctx->m;
    run_state * rs = &ctx->rs;
    const int64_t C = m->n_embed;
    if (ctx->all_logits) { /* one sequence, every row: logits[0] holds n_rows rows */
        for (int64_t row = 0; row < b->n_rows; row++) {
            layer_norm(rs->head_in + row * C, rs->x + row * C, m->ln_out_w, m->ln_out_b, C, m->ln_eps);
            rs->head_logits[row] = b->logits[0] + row * m->n_vocab;
        }
        ctx_head(ctx, rs->head_in, b->n_rows, rs->head_logits);
        return;
    }
    int n = 0;
    for (int64_t seq = 0; seq < b->n_seq; seq++) {
        if (!b->logits[seq]) continue;
        const float * last = rs->x + ((seq + 1) * b->seq_len - 1) * C;
        layer_norm(rs->head_in + n * C, last, m->ln_out_w, m->ln_out_b, C, m->ln_eps);
        rs->head_logits[n++] = b->logits[seq];
    }
    if (n > 0) ctx_head(ctx, rs->head_in, n, rs->head_logits);
}

bool forward(context * ctx, const batch * b) {
    const model * m = ctx->m;
    run_state * rs = &ctx->rs;
    if (b->n_rows != b->n_seq * b->seq_len || b->n_rows < 1 || b->n_rows > rs->rows) {
        error_set(&ctx->err, RWKV_ERROR_CTX, "internal error: a forward pass of %d x %d rows (capacity %d)", b->n_seq, b->seq_len,
                  rs->rows);
        return false;
    }
    const int R = b->n_rows;
    const int64_t C = m->n_embed, RC = (int64_t)R * C, len = layer_state_len(m);
    embed(ctx, b);
    for (int64_t i = 0; i < m->n_layer; i++) {
        const layer * L = &m->layers[i];
        for (int64_t seq = 0; seq < b->n_seq; seq++) {
            float * layer_state = b->state[seq] + i * len;
            rs->ffn_xx[seq] = layer_state;
            rs->att_xx[seq] = layer_state + C;
            rs->att_state[seq] = layer_state + 2 * C;
        }
        layer_norm_rows(ctx, rs->xx, rs->x, L->ln1_w, L->ln1_b, R, C, m->ln_eps);
        token_shift(b, rs->dx, rs->xx, rs->att_xx, C);
        m->ops->time_mix(ctx, L, b);
        ctx_matmul(ctx, &L->att_o, rs->y, R, rs->out, C);
        elementwise(ctx, EW_ADD, rs->x, rs->out, NULL, RC);
        channel_mix(ctx, L, b);
        if (m->rescale_every && (i + 1) % m->rescale_every == 0) {
            /* llama.cpp's rwkv6 files hold block b's output and value matrices divided by
             * 2^(b / R); its graph halves the residual stream after every R-th block (model_gguf.c) */
            for (int64_t j = 0; j < RC; j++) rs->x[j] *= 0.5f;
        }
    }
    output(ctx, b);
    return true;
}
