/*
 * model.c: opening an rwkv.cpp model file. Every header field, shape, key length and tensor
 * size is checked against the file size before use; the file is memory-mapped read-only
 * and shared by all contexts cloned from the first.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "gguf.h"

#define FILE_MAGIC 0x67676d66 /* "ggmf" */
#define MAX_DIMS 4
#define MAX_KEY_LEN 1024
#define MAX_ELEMENTS (INT64_C(1) << 40)

/* ---- errors ---- */

static atomic_bool g_print_errors = true;

bool error_print_enabled(void) { return atomic_load(&g_print_errors); }
void error_set_print_default(bool on) { atomic_store(&g_print_errors, on); }

void error_set(error_slot * slot, int flags, const char * fmt, ...) {
    slot->flags |= flags;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(slot->message, sizeof slot->message, fmt, ap);
    va_end(ap);
}

/* ---- reading the header and the tensor table ---- */

typedef struct reader {
    const uint8_t * data;
    size_t size, pos;
} reader;

static bool read_i32(reader * r, int32_t * out) {
    if (r->size - r->pos < 4) return false;
    memcpy(out, r->data + r->pos, 4);
    r->pos += 4;
    return true;
}

static bool parse_header(model * m, reader * r, const char * path, error_slot * err) {
    int32_t magic, version, n_vocab, n_embed, n_layer, data_type;
    if (!read_i32(r, &magic)) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: file too short for an rwkv.cpp header (%zu bytes)", path, r->size);
        return false;
    }
    if (magic != FILE_MAGIC) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_MAGIC, "%s: not an rwkv.cpp model file (magic %08x, expected %08x) nor a GGUF file",
                  path, (unsigned)magic, FILE_MAGIC);
        return false;
    }
    if (!read_i32(r, &version) || !read_i32(r, &n_vocab) || !read_i32(r, &n_embed) || !read_i32(r, &n_layer) || !read_i32(r, &data_type)) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: truncated header (%zu bytes)", path, r->size);
        return false;
    }
    if (version != 100 && version != 101) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_VERSION, "%s: unsupported file version %d (expected 100 or 101)", path, version);
        return false;
    }
    if (n_vocab <= 0 || n_embed <= 0 || n_layer <= 0 || n_vocab > (1 << 24) || n_embed > (1 << 20) || n_layer > 4096) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA, "%s: implausible header: n_vocab %d, n_embed %d, n_layer %d", path, n_vocab, n_embed, n_layer);
        return false;
    }
    if (!type_in_rwkv_cpp_files(data_type)) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA_TYPE, "%s: unknown data type %d in the header", path, data_type);
        return false;
    }
    if (version == 100 && type_is_quantized(data_type)) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_VERSION,
                  "%s: quantized file of version 100 uses an old block layout that is no longer supported; "
                  "re-quantize it from the FP32 or FP16 file (rwkv-cpp quantize)", path);
        return false;
    }
    m->version = version;
    m->n_vocab = n_vocab;
    m->n_embed = n_embed;
    m->n_layer = n_layer;
    m->data_type = data_type;
    return true;
}

/* Reads one tensor record at r->pos; fills t (key pointing into the file) and its key length. */
static bool parse_tensor(model * m, reader * r, const char * path, tensor * t, int32_t * key_len_out, error_slot * err) {
    size_t at = r->pos;
    int32_t n_dims, key_len, type;
    if (!read_i32(r, &n_dims) || !read_i32(r, &key_len) || !read_i32(r, &type)) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: truncated tensor header at offset %zu", path, at);
        return false;
    }
    if (n_dims < 1 || n_dims > MAX_DIMS) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DIMENSION, "%s: tensor at offset %zu has %d dimensions (1 to %d allowed)", path, at, n_dims, MAX_DIMS);
        return false;
    }
    if (key_len < 1 || key_len > MAX_KEY_LEN) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_KEY, "%s: tensor at offset %zu has a key length of %d (1 to %d allowed)", path, at, key_len, MAX_KEY_LEN);
        return false;
    }
    if (!type_in_rwkv_cpp_files(type)) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA_TYPE, "%s: tensor at offset %zu has unknown data type %d", path, at, type);
        return false;
    }
    if (m->version == 100 && type_is_quantized(type)) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_VERSION,
                  "%s: quantized tensor in a version 100 file (old block layout); re-quantize it from the FP32 or FP16 file", path);
        return false;
    }
    int64_t elements = 1;
    for (int i = 0; i < MAX_DIMS; i++) t->ne[i] = 1;
    for (int i = 0; i < n_dims; i++) {
        int32_t d;
        if (!read_i32(r, &d)) {
            error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: truncated tensor shape at offset %zu", path, at);
            return false;
        }
        if (d < 1) {
            error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "%s: tensor at offset %zu has dimension %d = %d", path, at, i, d);
            return false;
        }
        t->ne[i] = d;
        /* checked before multiplying: elements (up to 2^40) times d (up to 2^31) overflows */
        if (d > MAX_ELEMENTS / elements) {
            error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "%s: tensor at offset %zu is too large", path, at);
            return false;
        }
        elements *= d;
    }
    if (r->size - r->pos < (size_t)key_len) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: truncated tensor key at offset %zu", path, r->pos);
        return false;
    }
    const char * key = (const char *)r->data + r->pos;
    r->pos += (size_t)key_len;
    if (memchr(key, 0, (size_t)key_len) != NULL) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_KEY, "%s: tensor key at offset %zu contains a NUL byte", path, at);
        return false;
    }
    if (type_is_quantized(type) && t->ne[0] % QK != 0) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "%s: quantized tensor '%.*s' has rows of %lld values, not a multiple of %d",
                  path, key_len, key, (long long)t->ne[0], QK);
        return false;
    }
    size_t nbytes = type_row_bytes(type, t->ne[0]) * (size_t)(elements / t->ne[0]);
    if (r->size - r->pos < nbytes) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: tensor '%.*s' needs %zu bytes at offset %zu but the file ends at %zu (truncated file?)",
                  path, key_len, key, nbytes, r->pos, r->size);
        return false;
    }
    t->type = type;
    t->n_dims = n_dims;
    t->data = r->data + r->pos;
    t->nbytes = nbytes;
    t->key = key;
    *key_len_out = key_len;
    r->pos += nbytes;
    return true;
}

static bool parse_tensors(model * m, reader * r, const char * path, error_slot * err) {
    size_t start = r->pos;
    int count = 0;
    size_t key_bytes = 0;
    /* first pass: validate and count */
    while (r->pos < r->size) {
        tensor t;
        int32_t key_len;
        if (!parse_tensor(m, r, path, &t, &key_len, err)) return false;
        count++;
        key_bytes += (size_t)key_len + 1;
    }
    if (count == 0) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "%s: the file holds no tensors", path);
        return false;
    }
    m->tensors = calloc((size_t)count, sizeof(tensor));
    m->key_arena = malloc(key_bytes);
    if (!m->tensors || !m->key_arena) {
        error_set(err, RWKV_ERROR_ALLOC, "%s: out of memory for the tensor table", path);
        return false;
    }
    /* second pass: record, with NUL-terminated copies of the keys */
    r->pos = start;
    char * k = m->key_arena;
    for (int i = 0; i < count; i++) {
        int32_t key_len;
        parse_tensor(m, r, path, &m->tensors[i], &key_len, err);
        memcpy(k, m->tensors[i].key, (size_t)key_len);
        k[key_len] = 0;
        m->tensors[i].key = k;
        k += key_len + 1;
    }
    m->n_tensors = count;
    return true;
}

/* ---- lookups used by the architecture bind functions ---- */

const tensor * model_find(const model * m, const char * key) {
    for (int i = 0; i < m->n_tensors; i++) {
        if (strcmp(m->tensors[i].key, key) == 0) return &m->tensors[i];
    }
    return NULL;
}

void * model_own(model * m, void * block) {
    if (!block) return NULL;
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void ** grown = realloc(m->owned, (size_t)cap * sizeof(void *));
        if (!grown) {
            free(block);
            return NULL;
        }
        m->owned = grown;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = block;
    return block;
}

static int64_t tensor_elements(const tensor * t) { return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]; }

void model_missing(const model * m, error_slot * err, const char * key) {
    error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_PARAM_MISSING, "model file lacks tensor '%s' (architecture v%s)", key,
              m->ops ? m->ops->version : "?");
}

const float * model_vector(model * m, error_slot * err, const char * key, int64_t n) {
    const tensor * t = model_find(m, key);
    if (!t) {
        model_missing(m, err, key);
        return NULL;
    }
    if (tensor_elements(t) != n) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "tensor '%s' has %lld elements, expected %lld",
                  key, (long long)tensor_elements(t), (long long)n);
        return NULL;
    }
    float * out = model_own(m, malloc((size_t)n * sizeof(float)));
    if (!out) {
        error_set(err, RWKV_ERROR_ALLOC, "out of memory copying '%s'", key);
        return NULL;
    }
    const int64_t rows = n / t->ne[0];
    const size_t rb = tensor_row_bytes(t);
    for (int64_t i = 0; i < rows; i++) dequantize_row(t->type, t->data + i * rb, out + i * t->ne[0], t->ne[0]);
    return out;
}

bool model_matrix(model * m, error_slot * err, const char * key, int64_t cols, int64_t rows, tensor * out) {
    const tensor * t = model_find(m, key);
    if (!t) {
        model_missing(m, err, key);
        return false;
    }
    if (t->ne[2] != 1 || t->ne[3] != 1 || (cols >= 0 && t->ne[0] != cols) || (rows >= 0 && t->ne[1] != rows)) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "tensor '%s' has shape [%lld, %lld, %lld] (file order), expected [%lld, %lld]",
                  key, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)cols, (long long)rows);
        return false;
    }
    *out = *t;
    return true;
}

/* ---- binding the tensors of a layer ---- */

#define MAX_LAYER_KEY 128

static const char * layer_key(char * key, int i, const char * name) {
    snprintf(key, MAX_LAYER_KEY, "blocks.%d.%s", i, name);
    return key;
}

bool bind_vector(model * m, error_slot * err, int i, const char * name, int64_t n, const float ** out) {
    char key[MAX_LAYER_KEY];
    *out = model_vector(m, err, layer_key(key, i, name), n);
    return *out != NULL;
}

bool bind_matrix(model * m, error_slot * err, int i, const char * name, int64_t cols, int64_t rows, tensor * out) {
    char key[MAX_LAYER_KEY];
    return model_matrix(m, err, layer_key(key, i, name), cols, rows, out);
}

bool bind_mix(model * m, error_slot * err, int i, const char * name, int64_t n, const float ** out) {
    if (!bind_vector(m, err, i, name, n, out)) return false;
    float * mix = (float *)*out; /* the model's own copy, so it may be rewritten */
    for (int64_t c = 0; c < n; c++) mix[c] = 1.0f - mix[c];
    return true;
}

bool bind_heads(model * m, error_slot * err, const char * key) {
    const tensor * t = model_find(m, key);
    if (!t) {
        model_missing(m, err, key);
        return false;
    }
    /* (n_head, 1 or head_size, ...) in PyTorch order: the outermost dimension counts the heads */
    m->n_head = t->ne[t->n_dims - 1];
    if (m->n_head < 1 || m->n_embed % m->n_head != 0) {
        error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_SHAPE, "tensor '%s' gives %lld heads, which do not divide n_embed %lld",
                  key, (long long)m->n_head, (long long)m->n_embed);
        return false;
    }
    m->head_size = m->n_embed / m->n_head;
    return true;
}

bool bind_ffn_dim(model * m, error_slot * err) {
    const tensor * ffn_key = model_find(m, "blocks.0.ffn.key.weight");
    if (!ffn_key) {
        model_missing(m, err, "blocks.0.ffn.key.weight");
        return false;
    }
    m->ffn_dim = ffn_key->ne[1];
    return true;
}

tensor model_owned_matrix(const float * data, int64_t cols, int64_t rows, const char * key) {
    tensor t = {0};
    t.type = TYPE_FP32;
    t.n_dims = 2;
    t.ne[0] = cols;
    t.ne[1] = rows;
    t.ne[2] = t.ne[3] = 1;
    t.data = (const uint8_t *)data;
    t.nbytes = (size_t)(cols * rows) * 4;
    t.key = key;
    return t;
}

/* ---- architecture detection ---- */

static const arch_ops * detect_arch(const model * m) {
    if (model_find(m, "blocks.0.att.k_k")) return &arch_v7;
    if (model_find(m, "blocks.0.att.time_maa_x")) return &arch_v6;
    if (model_find(m, "blocks.0.att.ln_x.weight")) {
        return model_find(m, "blocks.0.att.gate.weight") ? &arch_v5_2 : &arch_v5_1;
    }
    if (model_find(m, "blocks.0.att.time_decay")) return &arch_v4;
    return NULL;
}

/* Bytes of matrices read per token: every 2-D tensor except the embedding (one row). */
static size_t count_weight_bytes(const model * m) {
    size_t total = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor * t = &m->tensors[i];
        if (strcmp(t->key, "emb.weight") == 0) {
            total += tensor_row_bytes(t);
        } else if (t->ne[1] > 1) {
            total += t->nbytes;
        }
    }
    return total;
}

/* ---- load / release ---- */

/* Decoding streams every weight once per token, so the weights' page size matters: on
 * machines where a TLB miss is expensive (virtual machines above all: a miss walks two page
 * tables), one thread reads a file mapping's 4 KiB pages at about two thirds of the rate it
 * reads the same bytes in 2 MiB pages (measured on a KVM guest: 11.1 against 16.9 GB/s).
 * Page-cache pages of a regular file cannot be mapped huge on most kernels, so where the
 * kernel offers transparent huge pages on request, a file of 64 MB to 2 GiB that takes at
 * most half the available memory is read into an anonymous region that asks for them. The
 * price: the load reads the whole file at once (0.1-0.45 s for 300 MB here), and processes
 * that load the same file no longer share its pages. RWKV_WEIGHTS=mmap keeps the file
 * mapping (pages shared, read on first use); RWKV_WEIGHTS=copy copies any file, small or
 * large, also on kernels without such pages (the tests use it). */
#define HUGE_PAGE_BYTES ((size_t)2 << 20)
#define HUGE_PAGE_MIN_FILE ((size_t)64 << 20) /* smaller files: too few pages to matter */
/* Larger files stay mapped unless asked: the copy's load time grows with the file (3 GB took
 * 1.5-7 s here, against a 1.05-1.2x faster decode at that size), and a copy cannot be
 * evicted as page cache can, so a file near the machine's memory would risk running out. */
#define HUGE_PAGE_MAX_FILE ((size_t)2 << 30)
#define THP_SETTING "/sys/kernel/mm/transparent_hugepage/enabled"

/* MemAvailable of /proc/meminfo in bytes, 0 when unknown. */
static size_t memory_available(void) {
    FILE * f = fopen("/proc/meminfo", "re");
    if (!f) return 0;
    char line[256];
    unsigned long long kib = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
    }
    fclose(f);
    return (size_t)kib * 1024;
}

static int huge_pages_on_request(void) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    char line[128] = {0};
    int fd = open(THP_SETTING, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, line, sizeof line - 1);
    close(fd);
    if (n <= 0) return 0;
    return strstr(line, "[always]") != NULL || strstr(line, "[madvise]") != NULL;
#else
    return 0;
#endif
}

typedef enum { WEIGHTS_AUTO, WEIGHTS_MMAP, WEIGHTS_COPY, WEIGHTS_UNKNOWN } weights_choice;

/* RWKV_WEIGHTS: unset or empty (auto), mmap, copy (tests: the copy on any file, any kernel). */
static weights_choice weights_choice_from_env(const char * value) {
    if (!value || !*value) return WEIGHTS_AUTO;
    if (strcmp(value, "mmap") == 0) return WEIGHTS_MMAP;
    if (strcmp(value, "copy") == 0) return WEIGHTS_COPY;
    return WEIGHTS_UNKNOWN;
}

/* Reads the whole file into 2 MiB-aligned anonymous memory that asks for huge pages.
 * Returns 0 (and leaves m untouched) where that is not wanted or not possible (no such
 * pages, no memory, a failed or short read): the caller then maps the file, and the
 * header and size checks that follow treat both the same. */
static int weights_in_huge_pages(model * m, weights_choice choice) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (choice == WEIGHTS_MMAP) return 0;
    if (choice == WEIGHTS_AUTO) {
        if (m->map_size < HUGE_PAGE_MIN_FILE || m->map_size > HUGE_PAGE_MAX_FILE) return 0;
        if (!huge_pages_on_request() || m->map_size > memory_available() / 2) return 0;
    }
    size_t region_size = m->map_size + HUGE_PAGE_BYTES;
    uint8_t * region = mmap(NULL, region_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) return 0;
    uint8_t * base = (uint8_t *)(((uintptr_t)region + HUGE_PAGE_BYTES - 1) & ~(uintptr_t)(HUGE_PAGE_BYTES - 1));
    madvise(base, m->map_size, MADV_HUGEPAGE);
    size_t done = 0;
    while (done < m->map_size) {
        ssize_t got = pread(m->fd, base + done, m->map_size - done, (off_t)done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) { /* a short or failed read: fall back to the mapping, which reports it */
            munmap(region, region_size);
            return 0;
        }
        done += (size_t)got;
    }
    mprotect(region, region_size, PROT_READ); /* the weights are read-only, as in the mapping */
    m->map = base;
    m->region = region;
    m->region_size = region_size;
    return 1;
#else
    (void)m;
    (void)choice;
    return 0;
#endif
}

static void model_destroy(model * m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->tensors);
    free(m->key_arena);
    if (m->region) munmap(m->region, m->region_size);
    if (m->fd >= 0) close(m->fd);
    free(m);
}

model * model_open(const char * path, error_slot * err) {
    if (!path) {
        error_set(err, RWKV_ERROR_ARGS, "model path is NULL");
        return NULL;
    }
    model * m = calloc(1, sizeof(model));
    if (!m) {
        error_set(err, RWKV_ERROR_ALLOC, "out of memory");
        return NULL;
    }
    m->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (m->fd < 0) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_OPEN, "cannot open model file %s: %s", path, strerror(errno));
        model_destroy(m);
        return NULL;
    }
    struct stat st;
    if (fstat(m->fd, &st) != 0) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_STAT, "cannot stat model file %s: %s", path, strerror(errno));
        model_destroy(m);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_OPEN, "%s is not a regular file", path);
        model_destroy(m);
        return NULL;
    }
    m->map_size = (size_t)st.st_size;
    if (m->map_size < 24) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "%s: file too short for an rwkv.cpp header (%zu bytes)", path, m->map_size);
        model_destroy(m);
        return NULL;
    }
    const char * weights_env = getenv("RWKV_WEIGHTS");
    const weights_choice choice = weights_choice_from_env(weights_env);
    if (choice == WEIGHTS_UNKNOWN) {
        error_set(err, RWKV_ERROR_ARGS, "RWKV_WEIGHTS=%s is not a choice: mmap, copy, or unset", weights_env);
        model_destroy(m);
        return NULL;
    }
    if (!weights_in_huge_pages(m, choice)) {
        void * map = mmap(NULL, m->map_size, PROT_READ, MAP_PRIVATE, m->fd, 0);
        if (map == MAP_FAILED) {
            error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_READ, "cannot map model file %s: %s", path, strerror(errno));
            model_destroy(m);
            return NULL;
        }
        m->map = map;
        m->region = map;
        m->region_size = m->map_size;
    }
    if (gguf_is_gguf(m->map, m->map_size)) {
        if (model_open_gguf(m, path, err) != 0) {
            model_destroy(m);
            return NULL;
        }
    } else {
        reader r = {m->map, m->map_size, 0};
        if (!parse_header(m, &r, path, err) || !parse_tensors(m, &r, path, err)) {
            model_destroy(m);
            return NULL;
        }
        m->ln_eps = LAYER_NORM_EPS;
        snprintf(m->type_label, sizeof m->type_label, "%s", type_name(m->data_type));
    }
    atomic_store(&m->refcount, 1);
    return m;
}

model * model_load(const char * path, error_slot * err) {
    model * m = model_open(path, err);
    if (!m) return NULL;
    m->ops = m->gguf_ops ? m->gguf_ops : detect_arch(m);
    if (!m->ops) {
        error_set(err, RWKV_ERROR_MODEL | RWKV_ERROR_UNSUPPORTED,
                  "%s: unknown model layout: no 'blocks.0.att.time_decay', 'blocks.0.att.time_maa_x' or 'blocks.0.att.k_k' tensor", path);
        model_destroy(m);
        return NULL;
    }
    m->arch = m->ops->arch;
    m->layers = calloc((size_t)m->n_layer, sizeof(layer));
    if (!m->layers) {
        error_set(err, RWKV_ERROR_ALLOC, "out of memory");
        model_destroy(m);
        return NULL;
    }
    /* shared tensors of every architecture */
    if (!model_matrix(m, err, "emb.weight", m->n_embed, m->n_vocab, &m->emb) ||
        !model_matrix(m, err, "head.weight", m->n_embed, m->n_vocab, &m->head) ||
        !(m->ln0_w = model_vector(m, err, "blocks.0.ln0.weight", m->n_embed)) ||
        !(m->ln0_b = model_vector(m, err, "blocks.0.ln0.bias", m->n_embed)) ||
        !(m->ln_out_w = model_vector(m, err, "ln_out.weight", m->n_embed)) ||
        !(m->ln_out_b = model_vector(m, err, "ln_out.bias", m->n_embed)) ||
        !m->ops->bind(m, err)) {
        /* prefix the file name to the bind error; in a GGUF file, name the tensor as it does */
        char msg[sizeof err->message], gguf[160] = "";
        memcpy(msg, err->message, sizeof msg);
        const char * open_quote = strchr(msg, '\'');
        const char * close_quote = open_quote ? strchr(open_quote + 1, '\'') : NULL;
        if (m->gguf_version && close_quote && close_quote - open_quote < 128) {
            char key[128], name[128];
            snprintf(key, sizeof key, "%.*s", (int)(close_quote - open_quote - 1), open_quote + 1);
            if (model_gguf_name(m, key, name, sizeof name)) snprintf(gguf, sizeof gguf, " (GGUF tensor %s)", name);
        }
        snprintf(err->message, sizeof err->message, "%.200s: %.200s%s", path, msg, gguf);
        model_destroy(m);
        return NULL;
    }
    /* RWKV_V5_LN_X_EPS: rwkv.cpp's v5 eps (1e-5) reproduces its fixtures; GGUF files say theirs
     * (model_gguf.c) */
    if (!m->gguf_version) m->ln_x_eps = GROUP_NORM_EPS;
    const char * eps = getenv("RWKV_V5_LN_X_EPS");
    if (!m->gguf_version && (m->arch == ARCH_V5_1 || m->arch == ARCH_V5_2) && eps && *eps) {
        char * end;
        const double v = strtod(eps, &end);
        if (end != eps && v > 0) m->ln_x_eps = (float)v;
    }
    m->weight_bytes_per_token = count_weight_bytes(m);
    return m;
}

void model_release(model * m) {
    if (m && atomic_fetch_sub(&m->refcount, 1) == 1) model_destroy(m);
}
