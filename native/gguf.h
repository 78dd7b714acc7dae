/*
 * gguf.h: reading the GGUF container (gguf.c): the header, the typed metadata, the tensor
 * records and the data section, every count, length, offset and size checked against the
 * file size. Knows nothing about RWKV (model_gguf.c maps the tensors onto the engine's).
 */
#ifndef RWKV_GGUF_H
#define RWKV_GGUF_H

#include "engine.h"

enum gguf_value_type {
    GGUF_U8 = 0,
    GGUF_I8 = 1,
    GGUF_U16 = 2,
    GGUF_I16 = 3,
    GGUF_U32 = 4,
    GGUF_I32 = 5,
    GGUF_F32 = 6,
    GGUF_BOOL = 7,
    GGUF_STRING = 8,
    GGUF_ARRAY = 9,
    GGUF_U64 = 10,
    GGUF_I64 = 11,
    GGUF_F64 = 12,
    GGUF_VALUE_TYPES = 13
};

/* One metadata entry; pointers into the mapped file (strings are not NUL-terminated). */
typedef struct gguf_kv {
    const char * key;
    size_t key_len;
    int type;
    const uint8_t * value; /* scalars: the value; strings: the bytes; arrays: the first element */
    size_t value_len;      /* strings: byte length */
    int elem_type;         /* arrays */
    uint64_t count;        /* arrays: elements */
} gguf_kv;

typedef struct gguf_tensor_info {
    const char * name; /* into the file, name_len bytes */
    size_t name_len;
    int n_dims;
    int64_t ne[4]; /* ggml order: ne[0] is the row length; unused dims are 1 */
    int ggml_type; /* GGUF's id */
    int type;      /* the engine's id (TYPE_*) */
    uint64_t offset; /* into the data section */
    const uint8_t * data;
    size_t nbytes;
} gguf_tensor_info;

typedef struct gguf_file {
    uint32_t version;
    uint64_t n_kv, n_tensors;
    gguf_kv * kv;
    gguf_tensor_info * tensors;
    size_t alignment;
    size_t data_offset; /* where the data section starts in the file */
} gguf_file;

/* Whether the bytes start with the GGUF magic. */
bool gguf_is_gguf(const uint8_t * data, size_t size);
/* Parses and validates the whole container. On error: -1, err set naming path, nothing to free. */
int gguf_parse(const uint8_t * data, size_t size, const char * path, gguf_file * out, error_slot * err);
void gguf_free(gguf_file * f);

const gguf_kv * gguf_find(const gguf_file * f, const char * key);
/* Typed lookups: false when the key is absent or holds another kind of value. */
bool gguf_get_uint(const gguf_file * f, const char * key, uint64_t * out); /* any non-negative integer */
bool gguf_get_float(const gguf_file * f, const char * key, double * out); /* F32 or F64 */
bool gguf_get_string(const gguf_file * f, const char * key, const char ** s, size_t * len);
/* GGUF's name of a ggml type id ("Q4_K", "IQ2_XXS", ...), or NULL. */
const char * gguf_type_name(int ggml_type);

#endif /* RWKV_GGUF_H */
