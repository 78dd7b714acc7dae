/*
 * gguf.c: the GGUF container, versions 2 and 3 (little endian).
 *
 * Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count; the metadata entries
 * (string key, u32 value type, value); one record per tensor (string name, u32 dims, u64 ne[dims]
 * with the row length first, u32 type, u64 offset into the data section); padding to
 * `general.alignment` (default 32); the data section. A string is a u64 byte length and the
 * bytes; an array is a u32 element type, a u64 count and the elements. Every tensor offset is
 * a multiple of the alignment.
 *
 * The file is hostile until proven otherwise: every length and count is compared with the
 * bytes that remain before anything is allocated or read, and arithmetic is kept from
 * overflowing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define MAX_NAME_LEN 1024      /* ggml's own limit is 64 */
#define MAX_ARRAY_DEPTH 4      /* arrays of arrays, as the format allows */
#define MAX_TENSORS (1 << 20)
#define MAX_ELEMENTS (INT64_C(1) << 40)

/* GGUF's type ids and the engine type each maps to (-1: not supported here). */
typedef struct gguf_type_entry {
    const char * name;
    int engine_type;
} gguf_type_entry;

static const gguf_type_entry GGUF_TYPES[] = {
    [0] = {"F32", TYPE_FP32},     [1] = {"F16", TYPE_FP16},       [2] = {"Q4_0", TYPE_Q4_0},     [3] = {"Q4_1", TYPE_Q4_1},
    [6] = {"Q5_0", TYPE_Q5_0},    [7] = {"Q5_1", TYPE_Q5_1},      [8] = {"Q8_0", TYPE_Q8_0},     [9] = {"Q8_1", -1},
    [10] = {"Q2_K", TYPE_Q2_K},   [11] = {"Q3_K", TYPE_Q3_K},     [12] = {"Q4_K", TYPE_Q4_K},    [13] = {"Q5_K", TYPE_Q5_K},
    [14] = {"Q6_K", TYPE_Q6_K},   [15] = {"Q8_K", -1},            [16] = {"IQ2_XXS", -1},        [17] = {"IQ2_XS", -1},
    [18] = {"IQ3_XXS", -1},       [19] = {"IQ1_S", -1},           [20] = {"IQ4_NL", -1},         [21] = {"IQ3_S", -1},
    [22] = {"IQ2_S", -1},         [23] = {"IQ4_XS", -1},          [24] = {"I8", -1},             [25] = {"I16", -1},
    [26] = {"I32", -1},           [27] = {"I64", -1},             [28] = {"F64", -1},            [29] = {"IQ1_M", -1},
    [30] = {"BF16", TYPE_BF16},   [34] = {"TQ1_0", -1},           [35] = {"TQ2_0", -1},          [39] = {"MXFP4", -1},
};
#define N_GGUF_TYPES ((int)(sizeof GGUF_TYPES / sizeof GGUF_TYPES[0]))

const char * gguf_type_name(int ggml_type) {
    return ggml_type >= 0 && ggml_type < N_GGUF_TYPES ? GGUF_TYPES[ggml_type].name : NULL;
}

static const size_t SCALAR_BYTES[GGUF_VALUE_TYPES] = {
    [GGUF_U8] = 1, [GGUF_I8] = 1, [GGUF_U16] = 2, [GGUF_I16] = 2, [GGUF_U32] = 4, [GGUF_I32] = 4, [GGUF_F32] = 4,
    [GGUF_BOOL] = 1, [GGUF_U64] = 8, [GGUF_I64] = 8, [GGUF_F64] = 8,
};

/* ---- a bounds-checked cursor ---- */

typedef struct cursor {
    const uint8_t * data;
    size_t size, pos;
    const char * path;
    error_slot * err;
} cursor;

static size_t left(const cursor * c) { return c->size - c->pos; }

static int truncated(cursor * c, const char * what) {
    error_set(c->err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: GGUF file truncated reading %s at offset %zu (file size %zu)",
              c->path, what, c->pos, c->size);
    return -1;
}

static int read_u32(cursor * c, uint32_t * out, const char * what) {
    if (left(c) < 4) return truncated(c, what);
    *out = load_u32(c->data + c->pos);
    c->pos += 4;
    return 0;
}

static int read_u64(cursor * c, uint64_t * out, const char * what) {
    if (left(c) < 8) return truncated(c, what);
    memcpy(out, c->data + c->pos, 8);
    c->pos += 8;
    return 0;
}

static int read_string(cursor * c, const char ** s, size_t * len, const char * what) {
    uint64_t n;
    if (read_u64(c, &n, what) != 0) return -1;
    if (n > left(c)) return truncated(c, what);
    *s = (const char *)c->data + c->pos;
    *len = (size_t)n;
    c->pos += (size_t)n;
    return 0;
}

/* Skips (validating) one value of the given type; arrays recurse up to MAX_ARRAY_DEPTH. */
static int skip_value(cursor * c, int type, int depth, const char * key, size_t key_len) {
    if (type < 0 || type >= GGUF_VALUE_TYPES) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA_TYPE, "%s: metadata '%.*s' has unknown value type %d",
                  c->path, (int)(key_len > 200 ? 200 : key_len), key, type);
        return -1;
    }
    if (type == GGUF_STRING) {
        const char * s;
        size_t n;
        return read_string(c, &s, &n, "a metadata string");
    }
    if (type != GGUF_ARRAY) {
        if (left(c) < SCALAR_BYTES[type]) return truncated(c, "a metadata value");
        c->pos += SCALAR_BYTES[type];
        return 0;
    }
    if (depth >= MAX_ARRAY_DEPTH) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA, "%s: metadata '%.*s' nests arrays deeper than %d", c->path,
                  (int)(key_len > 200 ? 200 : key_len), key, MAX_ARRAY_DEPTH);
        return -1;
    }
    uint32_t elem;
    uint64_t count;
    if (read_u32(c, &elem, "an array type") != 0 || read_u64(c, &count, "an array length") != 0) return -1;
    if (elem >= GGUF_VALUE_TYPES) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA_TYPE, "%s: metadata '%.*s' is an array of unknown type %u",
                  c->path, (int)(key_len > 200 ? 200 : key_len), key, elem);
        return -1;
    }
    if (elem != GGUF_STRING && elem != GGUF_ARRAY) {
        if (count > left(c) / SCALAR_BYTES[elem]) return truncated(c, "a metadata array");
        c->pos += (size_t)count * SCALAR_BYTES[elem];
        return 0;
    }
    /* every string or array element takes at least 8 bytes: a cheap bound before the loop */
    if (count > left(c) / 8) return truncated(c, "a metadata array");
    for (uint64_t i = 0; i < count; i++) {
        if (skip_value(c, (int)elem, depth + 1, key, key_len) != 0) return -1;
    }
    return 0;
}

static int parse_kv(cursor * c, gguf_kv * kv) {
    if (read_string(c, &kv->key, &kv->key_len, "a metadata key") != 0) return -1;
    if (kv->key_len == 0 || kv->key_len > MAX_NAME_LEN || memchr(kv->key, 0, kv->key_len)) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_KEY, "%s: metadata key at offset %zu is empty, too long or holds a NUL byte",
                  c->path, c->pos - kv->key_len);
        return -1;
    }
    uint32_t type;
    if (read_u32(c, &type, "a metadata type") != 0) return -1;
    kv->type = (int)type;
    const size_t start = c->pos;
    if (type == GGUF_STRING) {
        const char * s;
        if (read_string(c, &s, &kv->value_len, "a metadata string") != 0) return -1;
        kv->value = (const uint8_t *)s;
        return 0;
    }
    if (type == GGUF_ARRAY && left(c) >= 12) {
        kv->elem_type = (int)load_u32(c->data + c->pos);
        memcpy(&kv->count, c->data + c->pos + 4, 8);
        kv->value = c->data + c->pos + 12;
    } else {
        kv->value = c->data + start;
    }
    return skip_value(c, (int)type, 0, kv->key, kv->key_len);
}

static int64_t tensor_elements(const gguf_tensor_info * t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

static int parse_tensor_info(cursor * c, gguf_tensor_info * t) {
    const size_t at = c->pos;
    if (read_string(c, &t->name, &t->name_len, "a tensor name") != 0) return -1;
    const int shown = (int)(t->name_len > 200 ? 200 : t->name_len);
    if (t->name_len == 0 || t->name_len > MAX_NAME_LEN || memchr(t->name, 0, t->name_len)) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_KEY, "%s: tensor record at offset %zu has an empty, too long or NUL-holding name",
                  c->path, at);
        return -1;
    }
    uint32_t n_dims;
    if (read_u32(c, &n_dims, "a tensor's dimensions") != 0) return -1;
    if (n_dims < 1 || n_dims > 4) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DIMENSION, "%s: tensor '%.*s' has %u dimensions (1 to 4 allowed)", c->path,
                  shown, t->name, n_dims);
        return -1;
    }
    t->n_dims = (int)n_dims;
    int64_t elements = 1;
    for (int i = 0; i < 4; i++) t->ne[i] = 1;
    for (uint32_t i = 0; i < n_dims; i++) {
        uint64_t d;
        if (read_u64(c, &d, "a tensor shape") != 0) return -1;
        if (d < 1 || d > (uint64_t)MAX_ELEMENTS || elements > MAX_ELEMENTS / (int64_t)d) {
            error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "%s: tensor '%.*s' has dimension %u = %llu (empty or too large)",
                      c->path, shown, t->name, i, (unsigned long long)d);
            return -1;
        }
        t->ne[i] = (int64_t)d;
        elements *= (int64_t)d;
    }
    uint32_t type;
    uint64_t offset;
    if (read_u32(c, &type, "a tensor type") != 0 || read_u64(c, &offset, "a tensor offset") != 0) return -1;
    t->ggml_type = (int)type;
    const char * type_label = gguf_type_name((int)type);
    if (!type_label) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA_TYPE, "%s: tensor '%.*s' has unknown GGUF type id %u", c->path, shown,
                  t->name, type);
        return -1;
    }
    t->type = GGUF_TYPES[type].engine_type;
    if (t->type < 0) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA_TYPE,
                  "%s: tensor '%.*s' is of type %s, which this engine does not run (supported: F32, F16, BF16, Q4_0, Q4_1, "
                  "Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                  c->path, shown, t->name, type_label);
        return -1;
    }
    const int64_t block = type_block_values(t->type);
    if (t->ne[0] % block != 0) {
        error_set(c->err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "%s: tensor '%.*s' (%s) has rows of %lld values, not a multiple of %lld",
                  c->path, shown, t->name, type_label, (long long)t->ne[0], (long long)block);
        return -1;
    }
    t->nbytes = type_row_bytes(t->type, t->ne[0]) * (size_t)(elements / t->ne[0]);
    t->offset = offset; /* checked once the data section's start is known */
    return 0;
}

static int compare_names(const void * a, const void * b) {
    const gguf_tensor_info * x = *(const gguf_tensor_info * const *)a;
    const gguf_tensor_info * y = *(const gguf_tensor_info * const *)b;
    const size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    const int c = memcmp(x->name, y->name, n);
    if (c) return c;
    return x->name_len < y->name_len ? -1 : x->name_len > y->name_len;
}

static int check_unique_names(gguf_file * f, const char * path, error_slot * err) {
    if (f->n_tensors < 2) return 0;
    const gguf_tensor_info ** order = malloc((size_t)f->n_tensors * sizeof *order);
    if (!order) {
        error_set(err, RWKV_ERROR_ALLOC, "%s: out of memory checking tensor names", path);
        return -1;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n_tensors, sizeof *order, compare_names);
    for (uint64_t i = 1; i < f->n_tensors; i++) {
        if (compare_names(&order[i - 1], &order[i]) == 0) {
            const gguf_tensor_info * t = order[i];
            error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_KEY, "%s: tensor '%.*s' appears twice", path,
                      (int)(t->name_len > 200 ? 200 : t->name_len), t->name);
            free(order);
            return -1;
        }
    }
    free(order);
    return 0;
}

bool gguf_is_gguf(const uint8_t * data, size_t size) { return size >= 4 && memcmp(data, "GGUF", 4) == 0; }

void gguf_free(gguf_file * f) {
    if (!f) return;
    free(f->kv);
    free(f->tensors);
    f->kv = NULL;
    f->tensors = NULL;
}

int gguf_parse(const uint8_t * data, size_t size, const char * path, gguf_file * out, error_slot * err) {
    memset(out, 0, sizeof *out);
    cursor c = {data, size, 0, path, err};
    if (!gguf_is_gguf(data, size)) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_MAGIC, "%s: not a GGUF file", path);
        return -1;
    }
    c.pos = 4;
    if (read_u32(&c, &out->version, "the version") != 0) return -1;
    if (out->version != 2 && out->version != 3) {
        /* a big-endian file shows its version byte-swapped */
        const bool swapped = out->version == 0x02000000u || out->version == 0x03000000u;
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_VERSION, "%s: GGUF version %u is not supported (versions 2 and 3, little endian%s)",
                  path, swapped ? __builtin_bswap32(out->version) : out->version, swapped ? "; this file is big endian" : "");
        return -1;
    }
    if (read_u64(&c, &out->n_tensors, "the tensor count") != 0 || read_u64(&c, &out->n_kv, "the metadata count") != 0) return -1;
    /* a metadata entry takes at least 8 + 1 + 4 + 1 bytes, a tensor record 8 + 1 + 4 + 8 + 4 + 8 */
    if (out->n_kv > left(&c) / 14) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: GGUF header claims %llu metadata entries, more than the file can hold",
                  path, (unsigned long long)out->n_kv);
        return -1;
    }
    if (out->n_tensors > MAX_TENSORS || out->n_tensors > left(&c) / 33) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: GGUF header claims %llu tensors, more than the file can hold", path,
                  (unsigned long long)out->n_tensors);
        return -1;
    }
    out->kv = calloc((size_t)(out->n_kv ? out->n_kv : 1), sizeof(gguf_kv));
    out->tensors = calloc((size_t)(out->n_tensors ? out->n_tensors : 1), sizeof(gguf_tensor_info));
    if (!out->kv || !out->tensors) {
        error_set(err, RWKV_ERROR_ALLOC, "%s: out of memory for the GGUF tables", path);
        gguf_free(out);
        return -1;
    }
    for (uint64_t i = 0; i < out->n_kv; i++) {
        if (parse_kv(&c, &out->kv[i]) != 0) {
            gguf_free(out);
            return -1;
        }
    }
    out->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv * align = gguf_find(out, "general.alignment");
    if (align) {
        uint64_t a = 0;
        if (!gguf_get_uint(out, "general.alignment", &a) || a == 0 || (a & (a - 1)) != 0 || a > (1u << 20)) {
            error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA, "%s: general.alignment must be a power of two up to 2^20", path);
            gguf_free(out);
            return -1;
        }
        out->alignment = (size_t)a;
    }
    for (uint64_t i = 0; i < out->n_tensors; i++) {
        if (parse_tensor_info(&c, &out->tensors[i]) != 0) {
            gguf_free(out);
            return -1;
        }
    }
    const size_t data_offset = (c.pos + out->alignment - 1) / out->alignment * out->alignment;
    if (data_offset > size || (out->n_tensors > 0 && data_offset == size)) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: GGUF file ends before its data section (at %zu, file size %zu)", path,
                  data_offset, size);
        gguf_free(out);
        return -1;
    }
    out->data_offset = data_offset;
    const size_t data_size = size - data_offset;
    for (uint64_t i = 0; i < out->n_tensors; i++) {
        gguf_tensor_info * t = &out->tensors[i];
        const uint64_t offset = t->offset;
        const int shown = (int)(t->name_len > 200 ? 200 : t->name_len);
        if (offset % out->alignment != 0) {
            error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA, "%s: tensor '%.*s' starts at offset %llu, not a multiple of the alignment %zu",
                      path, shown, t->name, (unsigned long long)offset, out->alignment);
            gguf_free(out);
            return -1;
        }
        if (offset > data_size || t->nbytes > data_size - offset) {
            error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ,
                      "%s: tensor '%.*s' needs %zu bytes at data offset %llu but the data section holds %zu (truncated file?)", path,
                      shown, t->name, t->nbytes, (unsigned long long)offset, data_size);
            gguf_free(out);
            return -1;
        }
        t->data = data + data_offset + offset;
    }
    if (check_unique_names(out, path, err) != 0) {
        gguf_free(out);
        return -1;
    }
    return 0;
}

/* ---- metadata lookups ---- */

const gguf_kv * gguf_find(const gguf_file * f, const char * key) {
    const size_t n = strlen(key);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        if (f->kv[i].key_len == n && memcmp(f->kv[i].key, key, n) == 0) return &f->kv[i];
    }
    return NULL;
}

bool gguf_get_uint(const gguf_file * f, const char * key, uint64_t * out) {
    const gguf_kv * kv = gguf_find(f, key);
    if (!kv) return false;
    const uint8_t * v = kv->value;
    int64_t s;
    switch (kv->type) {
    case GGUF_U8: *out = v[0]; return true;
    case GGUF_U16: *out = load_u16(v); return true;
    case GGUF_U32: *out = load_u32(v); return true;
    case GGUF_U64: memcpy(out, v, 8); return true;
    case GGUF_I8: s = (int8_t)v[0]; break;
    case GGUF_I16: s = (int16_t)load_u16(v); break;
    case GGUF_I32: s = (int32_t)load_u32(v); break;
    case GGUF_I64: memcpy(&s, v, 8); break;
    default: return false;
    }
    if (s < 0) return false;
    *out = (uint64_t)s;
    return true;
}

bool gguf_get_float(const gguf_file * f, const char * key, double * out) {
    const gguf_kv * kv = gguf_find(f, key);
    if (!kv) return false;
    if (kv->type == GGUF_F32) {
        *out = load_f32(kv->value);
        return true;
    }
    if (kv->type == GGUF_F64) {
        memcpy(out, kv->value, 8);
        return true;
    }
    return false;
}

bool gguf_get_string(const gguf_file * f, const char * key, const char ** s, size_t * len) {
    const gguf_kv * kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_STRING) return false;
    *s = (const char *)kv->value;
    *len = kv->value_len;
    return true;
}
