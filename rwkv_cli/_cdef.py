"""The C declarations of native/rwkv.h, as cffi reads them.

Shared by the build script (API mode, compiled at install time) and by native.py when it
dlopen()s an external rwkv.cpp library. Keep in step with native/rwkv.h.
"""

CDEF_RWKV_CPP = """
enum rwkv_error_flags {
    RWKV_ERROR_NONE = 0,
    RWKV_ERROR_ARGS = 256,
    RWKV_ERROR_FILE = 512,
    RWKV_ERROR_MODEL = 768,
    RWKV_ERROR_MODEL_PARAMS = 1024,
    RWKV_ERROR_GRAPH = 1280,
    RWKV_ERROR_CTX = 1536,
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
void rwkv_set_print_errors(struct rwkv_context * ctx, bool print_errors);
bool rwkv_get_print_errors(const struct rwkv_context * ctx);
enum rwkv_error_flags rwkv_get_last_error(struct rwkv_context * ctx);
struct rwkv_context * rwkv_init_from_file(const char * model_file_path, const uint32_t n_threads, const uint32_t n_gpu_layers);
struct rwkv_context * rwkv_clone_context(struct rwkv_context * ctx, const uint32_t n_threads);
bool rwkv_gpu_offload_layers(struct rwkv_context * ctx, const uint32_t n_layers);
bool rwkv_eval(struct rwkv_context * ctx, const uint32_t token, const float * state_in, float * state_out, float * logits_out);
bool rwkv_eval_sequence(struct rwkv_context * ctx, const uint32_t * tokens, size_t sequence_len, const float * state_in, float * state_out, float * logits_out);
bool rwkv_eval_sequence_in_chunks(struct rwkv_context * ctx, const uint32_t * tokens, const size_t sequence_len, const size_t chunk_size, const float * state_in, float * state_out, float * logits_out);
size_t rwkv_get_n_vocab(const struct rwkv_context * ctx);
size_t rwkv_get_n_embed(const struct rwkv_context * ctx);
size_t rwkv_get_n_layer(const struct rwkv_context * ctx);
size_t rwkv_get_state_len(const struct rwkv_context * ctx);
size_t rwkv_get_logits_len(const struct rwkv_context * ctx);
void rwkv_init_state(const struct rwkv_context * ctx, float * state);
void rwkv_free(struct rwkv_context * ctx);
bool rwkv_quantize_model_file(const char * model_file_path_in, const char * model_file_path_out, const char * format_name);
const char * rwkv_get_system_info_string(void);
"""

CDEF_EXTENSIONS = """
const char * rwkv_get_last_error_message(const struct rwkv_context * ctx);
const char * rwkv_get_arch_version(const struct rwkv_context * ctx);
const char * rwkv_get_kernel_path(const struct rwkv_context * ctx);
const char * rwkv_get_data_type_name(const struct rwkv_context * ctx);
size_t rwkv_get_weight_bytes_per_token(const struct rwkv_context * ctx);
typedef void (*rwkv_progress_callback)(void * user_data, size_t done_bytes, size_t total_bytes);
bool rwkv_quantize_model_file_with_progress(const char * model_file_path_in, const char * model_file_path_out, const char * format_name, rwkv_progress_callback callback, void * user_data);
size_t rwkv_get_allocation_count(const struct rwkv_context * ctx);
bool rwkv_eval_sequence_all_logits(struct rwkv_context * ctx, const uint32_t * tokens, size_t sequence_len, const float * state_in, float * state_out, float * logits_out);
"""

CDEF = CDEF_RWKV_CPP + CDEF_EXTENSIONS
