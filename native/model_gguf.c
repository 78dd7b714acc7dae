/*
 * model_gguf.c: RWKV-6 and RWKV-7 GGUF files as llama.cpp writes them, opened as models.
 *
 * The tensors get the names rwkv.cpp's files use (blk.3.time_mix_key.weight becomes
 * blocks.3.att.key.weight), so the architectures' bind functions and forward passes run
 * unchanged. Where llama.cpp's layout differs from rwkv.cpp's, the difference is in the view,
 * never a copy of the weights:
 *   - rwkv6 `time_mix_lerp_fused` {C, 1, 1, 5} (w, k, v, r, g) becomes five row views
 *     time_maa_w ... time_maa_g; older files with separate time_mix_lerp_* need nothing;
 *   - rwkv7 `time_mix_lerp_fused` {C, 1, 1, 6} (r, w, k, v, a, g) is att.x_rwkvag as it is;
 *   - `time_mix_r_k` (v7) and `time_mix_first` (v6) may be flattened to {C}: viewed as
 *     {head_size, n_head} with the head size from the metadata;
 *   - rwkv6's LoRA matrices are already rwkv.cpp's (out, in) matrices: time_mix_w1 {C, 5 D},
 *     time_mix_w2 {D, C, 5}, time_mix_decay_w1 {C, D2}, time_mix_decay_w2 {D2, C}.
 * Tensors of other names keep their GGUF name behind a "gguf:" prefix (never used, never
 * mistaken for one of ours).
 *
 * From the metadata: the layer norms' eps, the group norm's (llama.cpp's graphs use 64e-5
 * unless the file says otherwise) and rwkv6's rescale_every_n_layers: llama.cpp's converter
 * divided block b's time_mix_output and channel_mix_value by 2^(b / R), and its graph halves
 * the residual stream after every R-th block; the forward pass does the same (model->
 * rescale_every), or the logits would be off by those factors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

#define MAX_KEY_BUF 1100 /* the longest tensor name (1024) and a prefix */

typedef struct name_map {
    const char * gguf; /* after "blk.N." for block tensors */
    const char * ours; /* after "blocks.N." */
} name_map;

static const name_map GLOBAL_NAMES[] = {
    {"token_embd.weight", "emb.weight"},
    {"token_embd_norm.weight", "blocks.0.ln0.weight"},
    {"token_embd_norm.bias", "blocks.0.ln0.bias"},
    {"output_norm.weight", "ln_out.weight"},
    {"output_norm.bias", "ln_out.bias"},
    {"output.weight", "head.weight"},
};

static const name_map BLOCK_NAMES_COMMON[] = {
    {"attn_norm.weight", "ln1.weight"},
    {"attn_norm.bias", "ln1.bias"},
    {"attn_norm_2.weight", "ln2.weight"},
    {"attn_norm_2.bias", "ln2.bias"},
    {"time_mix_key.weight", "att.key.weight"},
    {"time_mix_value.weight", "att.value.weight"},
    {"time_mix_receptance.weight", "att.receptance.weight"},
    {"time_mix_output.weight", "att.output.weight"},
    {"time_mix_ln.weight", "att.ln_x.weight"},
    {"time_mix_ln.bias", "att.ln_x.bias"},
    {"channel_mix_key.weight", "ffn.key.weight"},
    {"channel_mix_value.weight", "ffn.value.weight"},
};

static const name_map BLOCK_NAMES_V6[] = {
    {"time_mix_gate.weight", "att.gate.weight"},
    {"channel_mix_receptance.weight", "ffn.receptance.weight"},
    {"channel_mix_lerp_k.weight", "ffn.time_maa_k"},
    {"channel_mix_lerp_r.weight", "ffn.time_maa_r"},
    {"time_mix_lerp_x.weight", "att.time_maa_x"},
    {"time_mix_lerp_w.weight", "att.time_maa_w"},
    {"time_mix_lerp_k.weight", "att.time_maa_k"},
    {"time_mix_lerp_v.weight", "att.time_maa_v"},
    {"time_mix_lerp_r.weight", "att.time_maa_r"},
    {"time_mix_lerp_g.weight", "att.time_maa_g"},
    {"time_mix_w1.weight", "att.time_maa_w1"},
    {"time_mix_w2.weight", "att.time_maa_w2"},
    {"time_mix_decay.weight", "att.time_decay"},
    {"time_mix_decay_w1.weight", "att.time_decay_w1"},
    {"time_mix_decay_w2.weight", "att.time_decay_w2"},
    {"time_mix_first.weight", "att.time_faaaa"},
};

static const name_map BLOCK_NAMES_V7[] = {
    {"channel_mix_lerp_k.weight", "ffn.x_k"},
    {"time_mix_lerp_fused.weight", "att.x_rwkvag"},
    {"time_mix_w0.weight", "att.w0"},
    {"time_mix_w1.weight", "att.w1"},
    {"time_mix_w2.weight", "att.w2"},
    {"time_mix_a0.weight", "att.a0"},
    {"time_mix_a1.weight", "att.a1"},
    {"time_mix_a2.weight", "att.a2"},
    {"time_mix_v0.weight", "att.v0"},
    {"time_mix_v1.weight", "att.v1"},
    {"time_mix_v2.weight", "att.v2"},
    {"time_mix_g1.weight", "att.g1"},
    {"time_mix_g2.weight", "att.g2"},
    {"time_mix_k_k.weight", "att.k_k"},
    {"time_mix_k_a.weight", "att.k_a"},
    {"time_mix_r_k.weight", "att.r_k"},
};

/* rwkv6's fused token-shift mixes, in their order in the tensor */
static const char * const V6_FUSED_MIXES[] = {"att.time_maa_w", "att.time_maa_k", "att.time_maa_v", "att.time_maa_r", "att.time_maa_g"};
#define V6_FUSED "time_mix_lerp_fused.weight"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const char * lookup(const name_map * table, size_t n, const char * name, size_t len) {
    for (size_t i = 0; i < n; i++) {
        if (strlen(table[i].gguf) == len && memcmp(table[i].gguf, name, len) == 0) return table[i].ours;
    }
    return NULL;
}

/* The block number and the rest of a "blk.N.rest" name; false for other names. */
static bool split_block_name(const char * name, size_t len, long * block, const char ** rest, size_t * rest_len) {
    if (len < 6 || memcmp(name, "blk.", 4) != 0) return false;
    size_t i = 4;
    long n = 0;
    if (name[i] < '0' || name[i] > '9') return false;
    while (i < len && name[i] >= '0' && name[i] <= '9') {
        n = n * 10 + (name[i] - '0');
        if (n > 1000000) return false;
        i++;
    }
    if (i >= len || name[i] != '.') return false;
    *block = n;
    *rest = name + i + 1;
    *rest_len = len - i - 1;
    return true;
}

typedef struct arch_names {
    const char * arch; /* general.architecture */
    const arch_ops * ops;
    const name_map * names;
    size_t n_names;
} arch_names;

static const arch_names ARCHS[] = {
    {"rwkv6", &arch_v6, BLOCK_NAMES_V6, N_OF(BLOCK_NAMES_V6)},
    {"rwkv7", &arch_v7, BLOCK_NAMES_V7, N_OF(BLOCK_NAMES_V7)},
};

/* Our name for a GGUF tensor into out (cap bytes); *fused is set for rwkv6's fused mixes. */
static void our_name(const arch_names * a, const gguf_tensor_info * t, char * out, size_t cap, bool * fused) {
    long block;
    const char * rest;
    size_t rest_len;
    const char * mapped;
    *fused = false;
    if (split_block_name(t->name, t->name_len, &block, &rest, &rest_len)) {
        if (a->ops == &arch_v6 && rest_len == strlen(V6_FUSED) && memcmp(rest, V6_FUSED, rest_len) == 0) {
            *fused = true;
            snprintf(out, cap, "blocks.%ld.", block);
            return;
        }
        mapped = lookup(BLOCK_NAMES_COMMON, N_OF(BLOCK_NAMES_COMMON), rest, rest_len);
        if (!mapped) mapped = lookup(a->names, a->n_names, rest, rest_len);
        if (mapped) {
            snprintf(out, cap, "blocks.%ld.%s", block, mapped);
            return;
        }
    } else if ((mapped = lookup(GLOBAL_NAMES, N_OF(GLOBAL_NAMES), t->name, t->name_len))) {
        snprintf(out, cap, "%s", mapped);
        return;
    }
    snprintf(out, cap, "gguf:%.*s", (int)t->name_len, t->name);
}

static bool ends_with(const char * s, const char * suffix) {
    const size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

bool model_gguf_name(const model * m, const char * key, char * out, size_t cap) {
    const arch_names * a = NULL;
    for (size_t i = 0; i < N_OF(ARCHS); i++) {
        if (ARCHS[i].ops == m->gguf_ops) a = &ARCHS[i];
    }
    if (!a) return false;
    for (size_t i = 0; i < N_OF(GLOBAL_NAMES); i++) {
        if (strcmp(GLOBAL_NAMES[i].ours, key) == 0) {
            snprintf(out, cap, "%s", GLOBAL_NAMES[i].gguf);
            return true;
        }
    }
    long block;
    char rest[128];
    if (sscanf(key, "blocks.%ld.%127s", &block, rest) != 2) return false;
    if (a->ops == &arch_v6) {
        for (size_t j = 0; j < N_OF(V6_FUSED_MIXES); j++) {
            if (strcmp(rest, V6_FUSED_MIXES[j]) == 0) {
                snprintf(out, cap, "blk.%ld.%s (or blk.%ld.time_mix_lerp_%c.weight)", block, V6_FUSED, block,
                         V6_FUSED_MIXES[j][strlen(V6_FUSED_MIXES[j]) - 1]);
                return true;
            }
        }
    }
    const name_map * tables[2] = {BLOCK_NAMES_COMMON, a->names};
    const size_t sizes[2] = {N_OF(BLOCK_NAMES_COMMON), a->n_names};
    for (int t = 0; t < 2; t++) {
        for (size_t i = 0; i < sizes[t]; i++) {
            if (strcmp(tables[t][i].ours, rest) == 0) {
                snprintf(out, cap, "blk.%ld.%s", block, tables[t][i].gguf);
                return true;
            }
        }
    }
    return false;
}

/* llama.cpp's file types (general.file_type), as labels; floats in our spelling. */
static const char * file_type_label(uint64_t ftype) {
    static const char * const LABELS[] = {
        [0] = "FP32",    [1] = "FP16",    [2] = "Q4_0",    [3] = "Q4_1",    [7] = "Q8_0",    [8] = "Q5_0",
        [9] = "Q5_1",    [10] = "Q2_K",   [11] = "Q3_K_S", [12] = "Q3_K_M", [13] = "Q3_K_L", [14] = "Q4_K_S",
        [15] = "Q4_K_M", [16] = "Q5_K_S", [17] = "Q5_K_M", [18] = "Q6_K",   [21] = "Q2_K_S", [32] = "BF16",
    };
    ftype &= ~(uint64_t)1024; /* llama.cpp's "guessed" flag */
    return ftype < N_OF(LABELS) ? LABELS[ftype] : NULL;
}

static bool get_required(const gguf_file * f, const char * arch, const char * suffix, uint64_t * out, const char * path,
                         error_slot * err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (gguf_get_uint(f, key, out)) return true;
    error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "%s: GGUF metadata lacks '%s' (or it is not an unsigned integer)", path, key);
    return false;
}

static float get_eps(const gguf_file * f, const char * arch, const char * suffix, float fallback) {
    char key[128];
    double v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return gguf_get_float(f, key, &v) && v > 0 && v < 1 ? (float)v : fallback;
}

static int map_tensors(model * m, const gguf_file * f, const arch_names * a, int64_t head_size, const char * path,
                       error_slot * err) {
    /* first pass: how many tensors and key bytes */
    size_t count = 0, key_bytes = 0;
    char name[MAX_KEY_BUF];
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        bool fused;
        our_name(a, &f->tensors[i], name, sizeof name, &fused);
        if (fused) {
            count += N_OF(V6_FUSED_MIXES);
            for (size_t j = 0; j < N_OF(V6_FUSED_MIXES); j++) key_bytes += strlen(name) + strlen(V6_FUSED_MIXES[j]) + 1;
        } else {
            count++;
            key_bytes += strlen(name) + 1;
        }
    }
    if (count == 0) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "%s: the GGUF file holds no tensors", path);
        return -1;
    }
    m->tensors = calloc(count, sizeof(tensor));
    m->key_arena = malloc(key_bytes);
    if (!m->tensors || !m->key_arena) {
        error_set(err, RWKV_ERROR_ALLOC, "%s: out of memory for the tensor table", path);
        return -1;
    }
    char * k = m->key_arena;
    int n = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor_info * g = &f->tensors[i];
        bool fused;
        our_name(a, g, name, sizeof name, &fused);
        tensor t = {0};
        t.type = g->type;
        t.n_dims = g->n_dims;
        memcpy(t.ne, g->ne, sizeof t.ne);
        t.data = g->data;
        t.nbytes = g->nbytes;
        if (fused) {
            const int64_t rows = g->ne[1] * g->ne[2] * g->ne[3];
            if (rows != (int64_t)N_OF(V6_FUSED_MIXES)) {
                error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "%s: tensor '%.*s' holds %lld rows of %lld, expected 5 (w, k, v, r, g)",
                          path, (int)g->name_len, g->name, (long long)rows, (long long)g->ne[0]);
                return -1;
            }
            const size_t row_bytes = type_row_bytes(g->type, g->ne[0]);
            for (size_t j = 0; j < N_OF(V6_FUSED_MIXES); j++) {
                tensor v = t;
                v.n_dims = 1;
                v.ne[1] = v.ne[2] = v.ne[3] = 1;
                v.data = g->data + j * row_bytes;
                v.nbytes = row_bytes;
                const int len = sprintf(k, "%s%s", name, V6_FUSED_MIXES[j]);
                v.key = k;
                k += len + 1;
                m->tensors[n++] = v;
            }
            continue;
        }
        /* per-head tensors flattened to {C}: viewed as {head_size, n_head} */
        if ((ends_with(name, ".att.r_k") || ends_with(name, ".att.time_faaaa")) && t.ne[1] * t.ne[2] * t.ne[3] == 1 &&
            t.ne[0] > head_size && t.ne[0] % head_size == 0) {
            t.n_dims = 2;
            t.ne[1] = t.ne[0] / head_size;
            t.ne[0] = head_size;
        }
        const size_t len = strlen(name);
        memcpy(k, name, len + 1);
        t.key = k;
        k += len + 1;
        m->tensors[n++] = t;
    }
    m->n_tensors = n;
    return 0;
}

/* The most common type of the layers' big matrices, by bytes: the file's type when no label
 * says it (the low-rank and mixing tensors, which llama-quantize leaves alone, do not count). */
static int dominant_type(const model * m) {
    size_t bytes[TYPE_COUNT] = {0};
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor * t = &m->tensors[i];
        if (t->ne[1] > 1 && strncmp(t->key, "blocks.", 7) == 0 && ends_with(t->key, ".weight")) bytes[t->type] += t->nbytes;
    }
    int best = TYPE_FP32;
    for (int t = 0; t < TYPE_COUNT; t++) {
        if (bytes[t] > bytes[best]) best = t;
    }
    return best;
}

int model_open_gguf(model * m, const char * path, error_slot * err) {
    gguf_file f;
    if (gguf_parse(m->map, m->map_size, path, &f, err) != 0) return -1;
    int rc = -1;
    const char * arch_name;
    size_t arch_len;
    const arch_names * a = NULL;
    if (!gguf_get_string(&f, "general.architecture", &arch_name, &arch_len)) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "%s: GGUF metadata lacks 'general.architecture'", path);
        goto done;
    }
    for (size_t i = 0; i < N_OF(ARCHS); i++) {
        if (strlen(ARCHS[i].arch) == arch_len && memcmp(ARCHS[i].arch, arch_name, arch_len) == 0) a = &ARCHS[i];
    }
    if (!a) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_UNSUPPORTED,
                  "%s: GGUF architecture '%.*s' is not one this engine runs (rwkv6, rwkv7; RWKV-4 and 5 come as rwkv.cpp files)", path,
                  (int)(arch_len > 64 ? 64 : arch_len), arch_name);
        goto done;
    }
    uint64_t n_embed, n_layer, head_size;
    if (!get_required(&f, a->arch, "embedding_length", &n_embed, path, err) ||
        !get_required(&f, a->arch, "block_count", &n_layer, path, err) ||
        !get_required(&f, a->arch, "wkv.head_size", &head_size, path, err)) {
        goto done;
    }
    if (n_embed < 1 || n_embed > (1 << 20) || n_layer < 1 || n_layer > 4096 || head_size < 1 || n_embed % head_size != 0) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA,
                  "%s: implausible GGUF metadata: embedding_length %llu, block_count %llu, wkv.head_size %llu", path,
                  (unsigned long long)n_embed, (unsigned long long)n_layer, (unsigned long long)head_size);
        goto done;
    }
    char key[128];
    uint64_t value;
    if (a->ops == &arch_v7) {
        snprintf(key, sizeof key, "%s.token_shift_count", a->arch);
        if (gguf_get_uint(&f, key, &value) && value != 2) {
            error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_UNSUPPORTED, "%s: %s is %llu; RWKV-7 shifts by 2 vectors", path, key,
                      (unsigned long long)value);
            goto done;
        }
    }
    snprintf(key, sizeof key, "%s.rescale_every_n_layers", a->arch);
    if (gguf_get_uint(&f, key, &value) && value > 0) {
        if (a->ops != &arch_v6) {
            error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_UNSUPPORTED, "%s: %s is set, which only rwkv6 files use", path, key);
            goto done;
        }
        m->rescale_every = value > n_layer ? (int)n_layer + 1 : (int)value; /* past the last block: never */
    }
    if (map_tensors(m, &f, a, (int64_t)head_size, path, err) != 0) goto done;

    const tensor * emb = model_find(m, "emb.weight");
    if (!emb) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "%s: GGUF file lacks tensor 'token_embd.weight'", path);
        goto done;
    }
    m->n_embed = (int64_t)n_embed;
    m->n_layer = (int64_t)n_layer;
    m->n_vocab = emb->ne[1] * emb->ne[2] * emb->ne[3];
    if (m->n_vocab > (1 << 24)) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA, "%s: implausible vocabulary of %lld tokens", path, (long long)m->n_vocab);
        goto done;
    }
    m->gguf_ops = a->ops;
    m->gguf_version = (int)f.version;
    m->head_size = (int64_t)head_size;
    m->ln_eps = get_eps(&f, a->arch, "attention.layer_norm_epsilon", 1e-5f);
    m->ln_x_eps = get_eps(&f, a->arch, "attention.group_norm_epsilon", 64e-5f);
    m->data_type = dominant_type(m);
    const char * label = gguf_get_uint(&f, "general.file_type", &value) ? file_type_label(value) : NULL;
    snprintf(m->type_label, sizeof m->type_label, "%s", label ? label : type_name(m->data_type));
    rc = 0;
done:
    gguf_free(&f);
    return rc;
}
