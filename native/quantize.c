/*
 * quantize.c: rwkv_quantize_model_file. Reads an FP32 or FP16 file and writes the same
 * tensors with the 2-D matrices quantized (rwkv.cpp's rule of which tensors stay as they
 * are is part of file compatibility), streaming tensor by tensor into a temporary file that
 * takes the output's name only when complete. rwkv_quantize_model_file_ex can also quantize
 * the head (opt-in: rwkv.cpp's quantizer never does, so by default our output is its output).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

static bool ends_with(const char * s, const char * suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Only 2-D FP32/FP16 tensors; never the embedding, the head, v7's low-rank matrices, r_k. */
static bool should_quantize(const tensor * t) {
    static const char * const keep[] = {".att.w1", ".att.w2", ".att.a1", ".att.a2", ".att.v1", ".att.v2",
                                        ".att.g1", ".att.g2", ".att.r_k"};
    if (t->n_dims != 2 || (t->type != TYPE_FP32 && t->type != TYPE_FP16)) return false;
    if (strcmp(t->key, "emb.weight") == 0 || strcmp(t->key, "head.weight") == 0) return false;
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        if (ends_with(t->key, keep[i])) return false;
    }
    return t->ne[0] % QK == 0;
}

static bool write_all(FILE * f, const void * data, size_t bytes) { return fwrite(data, 1, bytes, f) == bytes; }

static bool all_finite(const float * v, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(v[i])) return false;
    }
    return true;
}

/* Creates a new file beside path (same folder, so the final rename stays within one file
 * system), named .NAME.tmp-PID-N; the mode is the usual 0666 less the umask. Returns the
 * descriptor and the name (to free), or -1. */
static int create_temp_beside(const char * path, char ** temp_path) {
    static atomic_uint counter;
    const char * slash = strrchr(path, '/');
    const size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
    const size_t size = strlen(path) + 64;
    char * name = malloc(size);
    if (!name) return -1;
    for (int attempt = 0; attempt < 100; attempt++) {
        snprintf(name, size, "%.*s.%s.tmp-%ld-%u", (int)dir_len, path, path + dir_len, (long)getpid(),
                 atomic_fetch_add(&counter, 1));
        const int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) {
            *temp_path = name;
            return fd;
        }
        if (errno != EEXIST) break;
    }
    const int saved = errno;
    free(name);
    errno = saved;
    return -1;
}

/* Whether path names the file that fd has open (a hard link or symbolic link to it included). */
static bool is_same_file(int fd, const char * path) {
    struct stat in, out;
    if (fstat(fd, &in) != 0 || stat(path, &out) != 0) return false;
    return in.st_dev == out.st_dev && in.st_ino == out.st_ino;
}

bool rwkv_quantize_model_file_ex(const char * path_in, const char * path_out, const char * format_name,
                                 const char * head_format_name, rwkv_progress_callback callback, void * user_data) {
    error_slot * err = error_thread_slot();
    err->flags = 0;
    err->message[0] = 0;
    if (!path_in || !path_out || !format_name) {
        error_set(err, RWKV_ERROR_ARGS, "rwkv_quantize_model_file: NULL argument");
        return false;
    }
    const int target = type_from_name(format_name);
    if (!type_is_quantized(target) || !type_in_rwkv_cpp_files(target)) {
        error_set(err, RWKV_ERROR_ARGS | RWKV_ERROR_DATA_TYPE,
                  "unsupported quantization format '%s' (expected Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0)", format_name);
        return false;
    }
    const bool with_head = head_format_name && head_format_name[0];
    const int head_target = with_head ? type_from_name(head_format_name) : -1;
    if (with_head && (!type_is_quantized(head_target) || !type_in_rwkv_cpp_files(head_target))) {
        error_set(err, RWKV_ERROR_ARGS | RWKV_ERROR_DATA_TYPE,
                  "unsupported head quantization format '%s' (expected Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0)", head_format_name);
        return false;
    }
    model * m = model_open(path_in, err);
    if (!m) return false;
    const tensor * head = with_head ? model_find(m, "head.weight") : NULL;
    if (with_head && (!head || head->n_dims != 2 || (head->type != TYPE_FP32 && head->type != TYPE_FP16) || head->ne[0] % QK != 0)) {
        error_set(err, RWKV_ERROR_ARGS | RWKV_ERROR_SHAPE,
                  "%s: the head cannot be quantized: %s", path_in,
                  !head ? "the file has no head.weight"
                  : head->n_dims != 2 || (head->type != TYPE_FP32 && head->type != TYPE_FP16) ? "head.weight is not an FP32 or FP16 matrix"
                  : "its rows (n_embed) are not a multiple of 32 values");
        model_release(m);
        return false;
    }
    if (m->gguf_version) {
        error_set(err, RWKV_ERROR_ARGS | RWKV_ERROR_UNSUPPORTED,
                  "%s is a GGUF file: it runs as it is; this quantizer writes rwkv.cpp files from rwkv.cpp FP32 or FP16 files", path_in);
        model_release(m);
        return false;
    }
    if (m->data_type != TYPE_FP32 && m->data_type != TYPE_FP16) {
        error_set(err, RWKV_ERROR_ARGS | RWKV_ERROR_DATA_TYPE, "%s is %s; only FP32 and FP16 files can be quantized", path_in,
                  type_name(m->data_type));
        model_release(m);
        return false;
    }
    /* device and inode, not names: another path, a hard link or a symbolic link may all name
     * the input, which is mapped while it is read */
    if (is_same_file(m->fd, path_out)) {
        error_set(err, RWKV_ERROR_ARGS | RWKV_ERROR_FILE_WRITE,
                  "cannot quantize %s onto itself: %s is the same file; choose another output path", path_in, path_out);
        model_release(m);
        if (error_print_enabled()) fprintf(stderr, "rwkv: %s\n", err->message);
        return false;
    }
    struct stat out_stat;
    if (stat(path_out, &out_stat) == 0 && S_ISDIR(out_stat.st_mode)) {
        error_set(err, RWKV_ERROR_ARGS | RWKV_ERROR_FILE_OPEN, "cannot write %s: it is a folder; name the output file",
                  path_out);
        model_release(m);
        if (error_print_enabled()) fprintf(stderr, "rwkv: %s\n", err->message);
        return false;
    }
    /* the output is written to a temporary file renamed over path_out once complete, so a
     * failure leaves no partial file and an existing path_out as it was */
    char * temp_path = NULL;
    const int fd = create_temp_beside(path_out, &temp_path);
    FILE * out = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!out) {
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_OPEN, "cannot create %s: %s", path_out, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(temp_path);
        }
        free(temp_path);
        model_release(m);
        if (error_print_enabled()) fprintf(stderr, "rwkv: %s\n", err->message);
        return false;
    }
    int64_t widest = 0;
    for (int i = 0; i < m->n_tensors; i++) widest = m->tensors[i].ne[0] > widest ? m->tensors[i].ne[0] : widest;
    float * row = malloc((size_t)widest * sizeof(float));
    uint8_t * qrow = malloc(type_row_bytes(TYPE_FP32, widest));
    bool ok = row && qrow;
    if (!ok) error_set(err, RWKV_ERROR_ALLOC, "out of memory");

    const int32_t header[6] = {0x67676d66, 101, (int32_t)m->n_vocab, (int32_t)m->n_embed, (int32_t)m->n_layer, target};
    ok = ok && write_all(out, header, sizeof header);
    size_t done = 0, total = m->map_size;
    for (int i = 0; ok && i < m->n_tensors; i++) {
        const tensor * t = &m->tensors[i];
        const bool is_head = with_head && t == head;
        const bool quantize = is_head || should_quantize(t);
        const int type = is_head ? head_target : quantize ? target : t->type;
        const int32_t key_len = (int32_t)strlen(t->key);
        const int32_t head[3] = {t->n_dims, key_len, type};
        ok = write_all(out, head, sizeof head);
        for (int d = 0; ok && d < t->n_dims; d++) {
            const int32_t dim = (int32_t)t->ne[d];
            ok = write_all(out, &dim, 4);
        }
        ok = ok && write_all(out, t->key, (size_t)key_len);
        if (!ok) break;
        if (!quantize) {
            ok = write_all(out, t->data, t->nbytes);
        } else {
            const int64_t rows = tensor_rows(t);
            const size_t in_bytes = tensor_row_bytes(t), out_bytes = type_row_bytes(type, t->ne[0]);
            for (int64_t r = 0; ok && r < rows; r++) {
                dequantize_row(t->type, t->data + r * in_bytes, row, t->ne[0]);
                /* a block's scale would be NaN or infinite, and every value of it lost */
                if (!all_finite(row, t->ne[0])) {
                    error_set(err, RWKV_ERROR_MODEL_PARAMS | RWKV_ERROR_DATA,
                              "%s: tensor '%s' holds a value that is not finite (NaN or infinity) in row %lld; "
                              "refusing to quantize it", path_in, t->key, (long long)r);
                    ok = false;
                    break;
                }
                quantize_row(type, row, qrow, t->ne[0]);
                ok = write_all(out, qrow, out_bytes);
            }
        }
        done = (size_t)(t->data - m->map) + t->nbytes;
        if (ok && callback) callback(user_data, done, total);
    }
    if (!ok && !err->flags) error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_WRITE, "cannot write %s: %s", path_out, strerror(errno));
    /* on disk before it takes the destination's name */
    if (ok && (fflush(out) != 0 || fsync(fileno(out)) != 0)) {
        ok = false;
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_WRITE, "cannot write %s: %s", path_out, strerror(errno));
    }
    if (fclose(out) != 0 && ok) {
        ok = false;
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_WRITE, "cannot write %s: %s", path_out, strerror(errno));
    }
    if (ok && rename(temp_path, path_out) != 0) {
        ok = false;
        error_set(err, RWKV_ERROR_FILE | RWKV_ERROR_FILE_WRITE, "cannot replace %s: %s", path_out, strerror(errno));
    }
    if (!ok) unlink(temp_path);
    free(temp_path);
    free(row);
    free(qrow);
    model_release(m);
    if (!ok && error_print_enabled()) fprintf(stderr, "rwkv: %s\n", err->message);
    return ok;
}

bool rwkv_quantize_model_file_with_progress(const char * path_in, const char * path_out, const char * format_name,
                                            rwkv_progress_callback callback, void * user_data) {
    return rwkv_quantize_model_file_ex(path_in, path_out, format_name, NULL, callback, user_data);
}

bool rwkv_quantize_model_file(const char * path_in, const char * path_out, const char * format_name) {
    return rwkv_quantize_model_file_ex(path_in, path_out, format_name, NULL, NULL, NULL);
}
