/*
 * rwkv.h: the public C API of the rwkv-cpp engine.
 *
 * Function names, argument order, state and logits layouts and error flag values follow
 * rwkv.cpp's public header, so a program written for rwkv.cpp's librwkv.so can load ours
 * (and the Python layer can load theirs). Functions marked "extension" are ours only.
 */
#ifndef RWKV_H
#define RWKV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define RWKV_API __declspec(dllexport)
#else
#define RWKV_API __attribute__((visibility("default")))
#endif

/* Error flags: an area (high byte) or'ed with a detail (low byte), as in rwkv.cpp. */
enum rwkv_error_flags {
    RWKV_ERROR_NONE = 0,

    RWKV_ERROR_ARGS = 1 << 8,
    RWKV_ERROR_FILE = 2 << 8,
    RWKV_ERROR_MODEL = 3 << 8,
    RWKV_ERROR_MODEL_PARAMS = 4 << 8,
    RWKV_ERROR_GRAPH = 5 << 8,
    RWKV_ERROR_CTX = 6 << 8,

    RWKV_ERROR_ALLOC = 1,
    RWKV_ERROR_FILE_OPEN = 2,
    RWKV_ERROR_FILE_STAT = 3,
    RWKV_ERROR_FILE_READ = 4,
    RWKV_ERROR_FILE_WRITE = 5,
    RWKV_ERROR_FILE_MAGIC = 6,
    RWKV_ERROR_FILE_VERSION = 7,
    RWKV_ERROR_DATA_TYPE = 8,
    RWKV_ERROR_UNSUPPORTED = 9,
    RWKV_ERROR_SHAPE = 10,
    RWKV_ERROR_DIMENSION = 11,
    RWKV_ERROR_KEY = 12,
    RWKV_ERROR_DATA = 13,
    RWKV_ERROR_PARAM_MISSING = 14
};

struct rwkv_context;

/* Whether errors are also printed to stderr. ctx may be NULL (the global setting). */
RWKV_API void rwkv_set_print_errors(struct rwkv_context * ctx, bool print_errors);
RWKV_API bool rwkv_get_print_errors(const struct rwkv_context * ctx);

/* Returns and clears the last error of ctx (or, for NULL, of calls made without a context
 * on this thread). */
RWKV_API enum rwkv_error_flags rwkv_get_last_error(struct rwkv_context * ctx);

/* Loads a model file (memory-mapped, read-only). n_gpu_layers must be 0: this engine has
 * no GPU backend. Returns NULL on error; see rwkv_get_last_error(NULL). */
RWKV_API struct rwkv_context * rwkv_init_from_file(const char * model_file_path, const uint32_t n_threads, const uint32_t n_gpu_layers);

/* A new context over the same weights (shared, not copied), with its own state scratch and
 * thread pool. */
RWKV_API struct rwkv_context * rwkv_clone_context(struct rwkv_context * ctx, const uint32_t n_threads);

/* No GPU backend: returns false with RWKV_ERROR_UNSUPPORTED unless n_layers is 0. */
RWKV_API bool rwkv_gpu_offload_layers(struct rwkv_context * ctx, const uint32_t n_layers);

/* One token. state_in NULL means a fresh state; state_in == state_out is allowed;
 * logits_out NULL skips the head. */
RWKV_API bool rwkv_eval(struct rwkv_context * ctx, const uint32_t token, const float * state_in, float * state_out, float * logits_out);

/* Several tokens at once (sequence mode); logits are those after the last token. */
RWKV_API bool rwkv_eval_sequence(struct rwkv_context * ctx, const uint32_t * tokens, size_t sequence_len, const float * state_in, float * state_out, float * logits_out);

/* Sequence mode in chunks of at most chunk_size tokens (bounds the scratch memory). */
RWKV_API bool rwkv_eval_sequence_in_chunks(struct rwkv_context * ctx, const uint32_t * tokens, const size_t sequence_len, const size_t chunk_size, const float * state_in, float * state_out, float * logits_out);

RWKV_API size_t rwkv_get_n_vocab(const struct rwkv_context * ctx);
RWKV_API size_t rwkv_get_n_embed(const struct rwkv_context * ctx);
RWKV_API size_t rwkv_get_n_layer(const struct rwkv_context * ctx);
RWKV_API size_t rwkv_get_state_len(const struct rwkv_context * ctx);
RWKV_API size_t rwkv_get_logits_len(const struct rwkv_context * ctx);

/* Writes the fresh state (v4: zeros except att_pp = -1e30; v5 and later: zeros). */
RWKV_API void rwkv_init_state(const struct rwkv_context * ctx, float * state);

RWKV_API void rwkv_free(struct rwkv_context * ctx);

/* FP32 or FP16 file to format_name in Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (rwkv.cpp's blocks). */
RWKV_API bool rwkv_quantize_model_file(const char * model_file_path_in, const char * model_file_path_out, const char * format_name);

RWKV_API const char * rwkv_get_system_info_string(void);

/* ---- extensions (not in rwkv.cpp) ---- */

/* Advances n independent sequences by one token each, reading the weights once.
 * state_in[i] NULL: sequence i starts from the initial state. logits_out[i] NULL: skip the
 * head for it. state_in[i] may equal state_out[i]; otherwise the buffers of different
 * sequences must not overlap. The results are those of n rwkv_eval calls (up to the order of
 * float sums). Every argument is checked before anything is computed: n = 0, a NULL array,
 * a NULL state_out[i] or a token >= n_vocab fails and writes nothing. Any n works: sequences
 * beyond the context's scratch capacity are processed in further passes, without
 * allocating. */
RWKV_API bool rwkv_eval_batch(struct rwkv_context * ctx, uint32_t n, const uint32_t * tokens, const float * const * state_in,
                              float * const * state_out, float * const * logits_out);

/* The message of the last error of ctx (NULL: of this thread's context-less calls); "" if
 * none. Not cleared by reading; valid until the next failing call. */
RWKV_API const char * rwkv_get_last_error_message(const struct rwkv_context * ctx);

/* "4", "5.1", "5.2", "6" or "7". */
RWKV_API const char * rwkv_get_arch_version(const struct rwkv_context * ctx);

/* The kernel path chosen at load: "scalar", "avx2" or "avx512" (the environment variable
 * RWKV_KERNELS forces one of those that the CPU supports). */
RWKV_API const char * rwkv_get_kernel_path(const struct rwkv_context * ctx);

/* The file's data type name: "FP32", "FP16", "Q4_0", ... */
RWKV_API const char * rwkv_get_data_type_name(const struct rwkv_context * ctx);

/* Bytes of weights read to evaluate one token with logits (all matrices and the head). */
RWKV_API size_t rwkv_get_weight_bytes_per_token(const struct rwkv_context * ctx);

/* Quantization with a progress callback called after each tensor (may be NULL). */
typedef void (*rwkv_progress_callback)(void * user_data, size_t done_bytes, size_t total_bytes);
RWKV_API bool rwkv_quantize_model_file_with_progress(const char * model_file_path_in, const char * model_file_path_out, const char * format_name, rwkv_progress_callback callback, void * user_data);

/* Quantization as rwkv_quantize_model_file_with_progress, and the head (head.weight) too when
 * head_format_name names a quantized type ("Q8_0", "Q5_1", "Q4_0", ...; NULL or "": the head
 * stays as the source has it, which is what rwkv.cpp's quantizer does, byte for byte). The
 * embedding is never quantized (a token reads one row of it). Such a file holds the head's
 * type in the head's tensor header, as every rwkv.cpp file holds each tensor's type. */
RWKV_API bool rwkv_quantize_model_file_ex(const char * model_file_path_in, const char * model_file_path_out, const char * format_name, const char * head_format_name, rwkv_progress_callback callback, void * user_data);

/* The head's tensor type ("FP16" in rwkv.cpp's quantized files, "Q8_0" after
 * rwkv_quantize_model_file_ex with a head type; GGUF files: as stored, e.g. "Q6_K"). */
RWKV_API const char * rwkv_get_head_type_name(const struct rwkv_context * ctx);

/* Sequence mode with the logits after every token: logits_out holds sequence_len rows of
 * n_vocab floats, row i the logits after tokens[0..i] (what perplexity needs; the head then
 * runs as one matrix product per chunk). */
RWKV_API bool rwkv_eval_sequence_all_logits(struct rwkv_context * ctx, const uint32_t * tokens, size_t sequence_len, const float * state_in, float * state_out, float * logits_out);

#ifdef __cplusplus
}
#endif

#endif /* RWKV_H */
