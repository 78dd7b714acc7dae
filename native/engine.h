/*
 * engine.h: the engine's internal structures, shared by the C files of native/.
 *
 *   tensor     a typed view of one tensor (in the memory-mapped file, or owned)
 *   model      the mapped file, shapes, per-layer tensor views; shared by cloned contexts
 *   context    run state (the forward passes' scratch), thread pool, error slot; one per clone
 *   batch      the rows of one forward pass and the sequences they belong to
 *
 * Nothing here knows about Python.
 */
#ifndef RWKV_ENGINE_H
#define RWKV_ENGINE_H

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rwkv.h"

/* ---- tensor types ----
 * Ids 0..9 are those of rwkv.cpp files; the types only GGUF files hold (gguf.c maps GGUF's own
 * ids onto these) follow them. */

enum {
    TYPE_FP32 = 0,
    TYPE_FP16 = 1,
    TYPE_Q4_0 = 2,
    TYPE_Q4_1 = 3,
    TYPE_Q5_0 = 7,
    TYPE_Q5_1 = 8,
    TYPE_Q8_0 = 9,
    TYPE_BF16 = 10, /* GGUF only, from here on */
    TYPE_Q2_K = 11,
    TYPE_Q3_K = 12,
    TYPE_Q4_K = 13,
    TYPE_Q5_K = 14,
    TYPE_Q6_K = 15,
    TYPE_COUNT = 16
};

#define QK 32  /* values per block of the rwkv.cpp quantized types */
#define QKK 256 /* values per super-block of the K-quants (kquants.c) */

bool type_is_valid(int type);
/* Block types: the rwkv.cpp quantized types and the K-quants (weights meet int8 activations). */
bool type_is_quantized(int type);
bool type_is_kquant(int type);
/* Whether rwkv.cpp files may hold the type (FP32, FP16 and its five block types). */
bool type_in_rwkv_cpp_files(int type);
/* Values per block: 1 for the float types, QK or QKK for the block types. */
int64_t type_block_values(int type);
const char * type_name(int type);
int type_from_name(const char * name); /* -1 if unknown */
/* Bytes of a row of n values (n a multiple of type_block_values). */
size_t type_row_bytes(int type, int64_t n);
size_t type_block_bytes(int type);
/* type_block_bytes of the five rwkv.cpp block types (Q8_0 for any other), as a constant the
 * kernels' inlined loops fold: ggml's block layouts (a half-precision d, m for the _1 types,
 * the high bits of the 5-bit types, 16 bytes of nibbles or 32 codes). */
static inline size_t q_block_bytes(int type) {
    switch (type) {
    case TYPE_Q4_0: return 18;
    case TYPE_Q4_1: return 20;
    case TYPE_Q5_0: return 22;
    case TYPE_Q5_1: return 24;
    default: return 34;
    }
}

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f); /* round to nearest even */

/* Dequantizes n values (a whole number of blocks for block types) from src (any alignment)
 * to dst. */
void dequantize_row(int type, const void * src, float * dst, int64_t n);
float bf16_to_fp32(uint16_t h);
/* Quantizes n float32 values (multiple of QK) into dst with rwkv.cpp-compatible arithmetic. */
void quantize_row(int type, const float * src, void * dst, int64_t n);

/* Unaligned loads: tensors in the file start at arbitrary byte offsets. */
static inline uint16_t load_u16(const void * p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t load_u32(const void * p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline float load_f32(const void * p) { float v; memcpy(&v, p, 4); return v; }

typedef struct tensor {
    int type;
    int n_dims;
    int64_t ne[4];        /* file order: ne[0] is the row length (innermost) */
    const uint8_t * data; /* any alignment */
    size_t nbytes;
    const char * key;
} tensor;

static inline int64_t tensor_rows(const tensor * t) { return t->ne[1] * t->ne[2] * t->ne[3]; }
static inline size_t tensor_row_bytes(const tensor * t) { return type_row_bytes(t->type, t->ne[0]); }

/* ---- errors ---- */

typedef struct error_slot {
    int flags;
    char message[512];
} error_slot;

void error_set(error_slot * slot, int flags, const char * fmt, ...) __attribute__((format(printf, 3, 4)));
bool error_print_enabled(void);
void error_set_print_default(bool on);
/* The slot of this thread's context-less calls (loading, quantizing). */
error_slot * error_thread_slot(void);

/* ---- kernels: products of a typed matrix with float activations ---- */

/* A kernel set. Activations are first converted once per product ("prepared") into the
 * form the dot products of that weight type want (floats, or int8 blocks). */
typedef struct kernels {
    const char * name;
    /* bytes needed to prepare T rows of n activations for weights of `type` */
    size_t (*prepared_bytes)(int type, int64_t n, int T);
    /* prepares T rows of n activations (x row stride n) into dst */
    void (*prepare)(int type, const float * x, int64_t n, int T, void * dst);
    /* part `part` of `parts` of that preparation, for the context's threads: the parts, run in
     * any order or at once, write what one prepare call writes (NULL: not cut) */
    void (*prepare_part)(int type, const float * x, int64_t n, int T, void * dst, int part, int parts);
    /* y[t * ldy + r] = dot(W row r, x_t) for r in [r0, r1), t in [0, T) */
    void (*matmul)(int type, const uint8_t * w, size_t row_bytes, int64_t n, const void * xp, int T,
                   float * y, int64_t ldy, int64_t r0, int64_t r1);
    /* y = e^x and y = 1 / (1 + e^-x) over n values (y may be x): the forward passes' many
     * exponentials, vectorized (libm's expf is scalar, and the engine's baseline build may
     * not use wider instructions outside these files). Over the whole float range: exp within
     * 2 ulp of expf, sigmoid within 3 ulp of the exact value, NaN in gives NaN out. */
    void (*exp)(float * y, const float * x, int64_t n);
    void (*sigmoid)(float * y, const float * x, int64_t n);
} kernels;

extern const kernels kernels_scalar;
/* The best kernel set that the CPU supports, or the one RWKV_KERNELS names. Never NULL. */
const kernels * kernels_select(char * why, size_t why_len);
const char * kernels_available(void); /* e.g. "scalar avx2 avx512", "scalar neon neon_dotprod" */

/* ---- thread pool ---- */

/* A piece of a parallel loop: chunk is its index, thread the index (0 .. n_threads - 1) of the
 * thread running it, so a task can use scratch of its own without locks. */
typedef void (*pool_chunk_task)(void * arg, int64_t chunk, int thread);
typedef struct pool pool;

pool * pool_create(int n_threads); /* n_threads - 1 workers; the caller takes part too */
/* Runs task(arg, c, thread) for every c in [0, n_chunks) on the pool's threads; returns when
 * all are done. Chunks must be independent. */
void pool_for(pool * p, int64_t n_chunks, pool_chunk_task task, void * arg);
int pool_size(const pool * p);
void pool_free(pool * p);

/* ---- conventions of the rest of the engine ----
 * A function that can fail returns bool (true: done) or a pointer (NULL: failed) and writes
 * the reason into the error_slot it is given. Shapes are named the same in every file:
 *   C  n_embed          H  n_head          S  head_size        F  ffn_dim
 *   R  rows of a forward pass (tokens of every sequence in it)
 *   T  tokens of one sequence in a forward pass
 *   L  the layer being computed (a `const layer *`)
 */

/* Below this much work a loop runs on the calling thread alone: waking the workers and
 * waiting for them costs a few microseconds. Products count multiply-adds; the other loops
 * (recurrences, elementwise passes) count rough operations, so the two bars differ. */
#define PARALLEL_MIN_MACS 32768.0
#define PARALLEL_MIN_OPS 65536.0
#define PARALLEL_MIN_PREPARE 32768.0 /* activation values (rows x n) from which a preparation is cut */

/* For the loops of the recurrences (plain C that the compiler vectorizes): built for the
 * baseline x86-64 they get 4-wide SSE; this adds an AVX2 copy that the loader picks when the
 * CPU has it (function multiversioning). AVX2 without FMA rounds every product and sum as
 * the baseline does, so both copies compute the same bits. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define LAYER_NORM_EPS 1e-5f      /* ln0, ln1, ln2, ln_out of every version */
#define GROUP_NORM_EPS 64e-5f     /* v5+'s per-head norm (the official models'; rwkv.cpp uses 1e-5 for v5) */
#define SEQ_CHUNK 64              /* rows per forward pass: tokens of a sequence-mode chunk or sequences of a batch */
#define HEAD_PIECE_ROWS 256       /* vocabulary rows per piece of a head product over several rows */

/* ---- the model ---- */

enum { ARCH_V4 = 40, ARCH_V5_1 = 51, ARCH_V5_2 = 52, ARCH_V6 = 60, ARCH_V7 = 70 };

typedef struct layer {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;

    /* v4 and v5: token-shift mixes (weights of the previous token) and decay */
    const float *att_mix_k, *att_mix_v, *att_mix_r, *att_mix_g;
    const float *att_decay, *att_first; /* v4: n_embed; v5: as stored (see forward_v5.c) */
    const float *ln_x_w, *ln_x_b;       /* v5+: per-head group norm */
    tensor att_k, att_v, att_r, att_o, att_g;
    const float *ffn_mix_k, *ffn_mix_r; /* ffn_mix_r NULL: no receptance gate (v7) */
    tensor ffn_k, ffn_v, ffn_r;

    /* v6 */
    const float *maa_x, *maa_w, *maa_k, *maa_v, *maa_r, *maa_g;
    tensor maa_w1;    /* C -> 5 * D */
    tensor maa_w2[5]; /* D -> C each */
    tensor decay_w1, decay_w2;
    const float * faaaa;

    /* v7 */
    const float * x_rwkvag; /* 6 x C: r, w, k, v, a, g */
    tensor w1, w2, a1, a2, v1, v2, g1, g2;
    const float *w0, *a0, *v0, *k_k, *k_a, *r_k;
    bool has_v_lora; /* layers after the first mix v with v_first */
} layer;

typedef struct model model;
typedef struct context context;
typedef struct batch batch;

/* Floats per row of the scratch buffers a time mix needs besides those every version uses
 * (x, xx, dx, xm, r, y, out, the FFN hidden): C for the flags, the given width for the rest. */
typedef struct time_mix_scratch {
    bool k, v, w, a, g, kk, v_first, extra;
    int64_t lora, lora_part, decay_lora;
} time_mix_scratch;

/* What an architecture plugs into the forward skeleton (forward.c). */
typedef struct arch_ops {
    int arch;             /* ARCH_V4 ... */
    const char * version; /* "4", "5.1", ... */
    bool (*bind)(model * m, error_slot * err);
    /* A layer's state is [ffn_xx, att_xx, the time mix's state]; this is the length of the
     * last part and what a fresh one holds. */
    int64_t (*time_mix_state_len)(const model * m);
    void (*init_time_mix_state)(const model * m, float * state);
    void (*scratch)(const model * m, time_mix_scratch * need);
    /* Reads the run state's xx (ln1 of every row) and dx (their token shift) and each
     * sequence's att_state; writes y, the input of the output product att_o. */
    void (*time_mix)(context * ctx, const layer * L, const batch * b);
} arch_ops;

extern const arch_ops arch_v4, arch_v5_1, arch_v5_2, arch_v6, arch_v7;

struct model {
    /* file */
    int fd;
    const uint8_t * map;   /* the file's bytes: a read-only file mapping, or a copy (weights_in_huge_pages) */
    size_t map_size;
    void * region;         /* what to munmap: the mapping, or the copy's larger anonymous region */
    size_t region_size;
    int version, data_type;
    int64_t n_vocab, n_embed, n_layer;
    int n_tensors;
    tensor * tensors;
    char * key_arena;

    /* architecture */
    int arch;
    const arch_ops * ops;
    int64_t head_size, n_head, ffn_dim;
    float ln_eps;      /* the layer norms (ln0, ln1, ln2, ln_out) */
    float ln_x_eps;    /* the per-head group norm of v5 and later */
    int rescale_every; /* halve the residual stream after every n-th block (llama.cpp's rwkv6 files); 0: never */
    tensor emb, head;
    const float *ln0_w, *ln0_b, *ln_out_w, *ln_out_b;
    layer * layers;

    /* owned float32 copies of vectors and small tensors */
    void ** owned;
    int n_owned, cap_owned;

    atomic_int refcount;
    size_t weight_bytes_per_token;

    /* GGUF files (model_gguf.c) */
    int gguf_version;         /* 0 for rwkv.cpp files */
    const arch_ops * gguf_ops; /* the architecture the metadata names */
    char type_label[16];      /* llama.cpp's file type ("Q4_K_M"), or the dominant tensor type */
};

/* Maps and validates the file and its tensor table (no architecture binding): an rwkv.cpp
 * file, or a GGUF file (its tensors renamed to rwkv.cpp's keys, see model_gguf.c). */
model * model_open(const char * path, error_slot * err);
/* The GGUF part of model_open: fills the tensor table, shapes and metadata of m from its map. */
int model_open_gguf(model * m, const char * path, error_slot * err);
/* The GGUF name of one of our keys in a GGUF model (for error messages); false if none. */
bool model_gguf_name(const model * m, const char * key, char * out, size_t cap);
/* model_open, then detects the architecture and binds the tensors. */
model * model_load(const char * path, error_slot * err);
void model_release(model * m); /* drops one reference */

/* Tensor lookup: NULL if absent (no error set). */
const tensor * model_find(const model * m, const char * key);
/* A float32 copy (owned by the model) of a tensor of exactly n elements. */
const float * model_vector(model * m, error_slot * err, const char * key, int64_t n);
/* A 2-D matrix view with ne[0] == cols and rows rows (rows/cols -1: any). */
bool model_matrix(model * m, error_slot * err, const char * key, int64_t cols, int64_t rows, tensor * out);
/* A float32 matrix owned by the model, viewed as a tensor (for small 3-D tensors). */
tensor model_owned_matrix(const float * data, int64_t cols, int64_t rows, const char * key);
/* Remembers a heap block to free with the model; NULL (and the block freed) when out of memory. */
void * model_own(model * m, void * block);
/* An error naming a tensor the architecture needs and the file lacks. */
void model_missing(const model * m, error_slot * err, const char * key);

/* Binding the tensors of layer i, "blocks.<i>.<name>" (forward_v*.c): */
bool bind_vector(model * m, error_slot * err, int i, const char * name, int64_t n, const float ** out);
bool bind_matrix(model * m, error_slot * err, int i, const char * name, int64_t cols, int64_t rows, tensor * out);
/* v4/v5 store time_mix as the weight of the current token; the token shift weights the
 * previous one (as v6/v7 store it): this binds 1 - time_mix. */
bool bind_mix(model * m, error_slot * err, int i, const char * name, int64_t n, const float ** out);
/* Head count and size from the outermost dimension of `key`. */
bool bind_heads(model * m, error_slot * err, const char * key);
bool bind_ffn_dim(model * m, error_slot * err);

/* ---- contexts ---- */

/* The scratch of the forward passes (llama2.c's RunState): every buffer holds `rows` rows,
 * allocated once when the context is created from the list in run_state_declare (context.c).
 * Buffers an architecture does not use are NULL. */
typedef struct run_state {
    int rows; /* capacity: the most rows a forward pass may have */
    /* rows x C */
    float * x;   /* the residual stream */
    float * xx;  /* a block's normalized input */
    float * dx;  /* the token shift: the previous row's xx minus this row's */
    float * xm;  /* the mixed input of a product */
    float * y;   /* the time mix's result, input of the output product */
    float * out; /* a product's output before it is added to x */
    float * r;   /* receptance (time mix), the gate (channel mix) */
    float *k, *v, *w, *a, *g, *kk, *v_first, *extra; /* more time-mix projections (per version) */
    /* rows x a low-rank width (v6, v7) */
    float *lora, *lora_part, *decay_lora;
    float * ffn_hidden; /* rows x F */
    float * head_in;    /* rows x C: ln_out of the rows whose logits are wanted */
    float * head_out;   /* per thread, HEAD_PIECE_ROWS x rows: a piece of the head's output */
    /* per sequence (at most `rows` of them): its views of the current layer's state */
    float **ffn_xx, **att_xx, **att_state;
    float ** head_logits; /* the outputs of the rows in head_in */
    void * prepared; /* activations prepared for the kernels */
    size_t prepared_bytes;
    void * block;    /* the one allocation all of the above live in */
} run_state;

struct context {
    model * m;
    const kernels * kern;
    pool * pool;
    int n_threads;
    error_slot err;
    bool print_errors;
    run_state rs;
    bool all_logits; /* forward() writes the logits of every row, not only the last one's */
};

/* y (R rows of tensor_rows(W) floats, row stride ldy) = W x (R rows of W->ne[0] floats). */
void ctx_matmul(context * ctx, const tensor * W, const float * x, int R, float * y, int64_t ldy);
/* The head over R rows of ln_out'ed x: logits[i] (n_vocab floats each) = head x_i. */
void ctx_head(context * ctx, const float * x, int R, float * const * logits);
/* Runs fn(arg, begin, end) over [0, n) in ranges aligned to `align`, on the context's threads
 * when `work` (a rough count of operations) is worth it. */
typedef void (*range_task)(void * arg, int64_t begin, int64_t end);
void ctx_parallel_range(context * ctx, int64_t n, int64_t align, double work, range_task fn, void * arg);

/* ---- the forward pass (forward.c) ---- */

/* The rows of one forward pass: n_seq sequences of seq_len consecutive tokens each, rows in
 * sequence order (sequence mode: one sequence of T tokens; a batch: n sequences of one). */
struct batch {
    int n_seq, seq_len, n_rows;
    const uint32_t * tokens; /* n_rows */
    float * const * state;   /* n_seq states, advanced in place */
    float * const * logits;  /* n_seq outputs for the last row of each; NULL entries (or NULL): none */
};

/* Fails (an internal error) when n_rows exceeds ctx->rs.rows: callers cut longer work into
 * passes of at most that many rows. */
bool forward(context * ctx, const batch * b);
size_t forward_state_len(const model * m);
void forward_init_state(const model * m, float * state);

/* ---- building blocks of the time mixes (blocks.c); x, xx, dx are R rows of C ---- */

void layer_norm(float * out, const float * x, const float * w, const float * b, int64_t n, float eps);
/* layer_norm of each of R rows; a prompt's rows on the context's threads. */
void layer_norm_rows(context * ctx, float * out, const float * x, const float * w, const float * b, int R, int64_t C, float eps);
void group_norm(float * out, const float * x, const float * w, const float * b, int64_t n_groups, int64_t group, float eps);
/* out_r = xx_r + dx_r * (mix + extra_r) (extra may be NULL): lerp toward the previous token. */
void mix_tokens(context * ctx, float * out, const float * xx, const float * dx, const float * mix, const float * extra, int R,
                int64_t C);
/* x_r += bias for each of R rows; tanh in place (vectorized through the kernels). */
void add_rows(float * x, const float * bias, int R, int64_t C);
void tanh_array(context * ctx, float * x, int64_t n);
/* v5/v6: y = gate(group_norm(y)) with L's per-head norm, the gate SiLU(g) when g is not
 * NULL; scratch: R x C. */
void group_norm_and_gate(context * ctx, const layer * L, float * y, const float * g, int R, float * scratch);

/* The per-head recurrence of v5 and later. Every (sequence, head) pair is independent, so
 * the pairs are shared among the context's threads; each sees its sequence's rows in order. */
typedef struct heads_job {
    float * const * state;          /* per sequence: n_head matrices S x S */
    const float *r, *k, *v, *w, *b; /* R rows of C (w: see w_stride; b: v7's kk * a) */
    const float *u, *kk;            /* u: per channel (v5/v6 bonus); kk: R rows (v7) */
    float * y;                      /* R rows of C */
    int n_seq, seq_len;
    int64_t C, S;
    int64_t w_stride; /* C for a decay per token (v6, v7), 0 for a constant one (v5) */
    /* one row through head h, whose S x S matrix is `state` */
    void (*step)(const struct heads_job * job, float * state, int64_t h, int64_t row);
} heads_job;
void run_heads(context * ctx, const heads_job * job);
/* The step of v5 and v6 (their recurrence is the same; v6's decay changes per token). */
void key_major_step(const heads_job * job, float * state, int64_t h, int64_t row);
/* v5 and later: a layer's time-mix state is n_head matrices S x S, fresh = 0. */
int64_t heads_state_len(const model * m);
void heads_init_state(const model * m, float * state);

#endif /* RWKV_ENGINE_H */
