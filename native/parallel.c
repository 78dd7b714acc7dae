/*
 * parallel.c: work spread over a context's threads: the products of a weight matrix with
 * rows of activations (cut by weight rows, so each weight is read once), the head over
 * several rows (cut by vocabulary rows, each piece scattered to its sequences' logits), and
 * other loops cut into ranges.
 */
#include <string.h>

#include "engine.h"

/* ---- products ---- */

typedef struct matmul_job {
    const kernels * kern;
    const tensor * W;
    const void * xp;
    int R;
    float * y;
    int64_t ldy;
    int64_t chunk_rows; /* a multiple of 16, so SIMD kernels can work on row groups */
} matmul_job;

static void matmul_chunk(void * arg, int64_t chunk, int thread) {
    const matmul_job * job = (const matmul_job *)arg;
    const int64_t rows = tensor_rows(job->W);
    const int64_t r0 = chunk * job->chunk_rows;
    const int64_t r1 = r0 + job->chunk_rows < rows ? r0 + job->chunk_rows : rows;
    job->kern->matmul(job->W->type, job->W->data, tensor_row_bytes(job->W), job->W->ne[0], job->xp, job->R, job->y,
                      job->ldy, r0, r1);
}

/* ---- preparing activations ---- */

typedef struct prepare_job {
    const kernels * kern;
    int type;
    const float * x;
    int64_t n;
    int R;
    void * dst;
    int parts;
} prepare_job;

static void prepare_chunk(void * arg, int64_t part, int thread) {
    const prepare_job * job = (const prepare_job *)arg;
    job->kern->prepare_part(job->type, job->x, job->n, job->R, job->dst, (int)part, job->parts);
}

/* R rows of activations into the run state's prepared buffer: a prompt's rows (a pass of
 * 64 x 2048 floats is tens of microseconds of transposing or quantizing) on every thread. */
static void ctx_prepare(context * ctx, int type, const float * x, int64_t n, int R) {
    if (ctx->n_threads == 1 || !ctx->kern->prepare_part || (double)n * R < PARALLEL_MIN_PREPARE) {
        ctx->kern->prepare(type, x, n, R, ctx->rs.prepared);
        return;
    }
    prepare_job job = {ctx->kern, type, x, n, R, ctx->rs.prepared, 2 * ctx->n_threads};
    pool_for(ctx->pool, job.parts, prepare_chunk, &job);
}

void ctx_matmul(context * ctx, const tensor * W, const float * x, int R, float * y, int64_t ldy) {
    const int64_t n = W->ne[0], rows = tensor_rows(W);
    ctx_prepare(ctx, W->type, x, n, R);
    matmul_job job = {ctx->kern, W, ctx->rs.prepared, R, y, ldy, rows};
    if (ctx->n_threads == 1 || (double)rows * (double)n * R < PARALLEL_MIN_MACS) {
        matmul_chunk(&job, 0, 0);
        return;
    }
    /* a few chunks per thread: balance when a thread is slow or not scheduled */
    const int64_t per = (rows + 4 * ctx->n_threads - 1) / (4 * ctx->n_threads);
    job.chunk_rows = (per + 15) / 16 * 16;
    pool_for(ctx->pool, (rows + job.chunk_rows - 1) / job.chunk_rows, matmul_chunk, &job);
}

/* ---- the head over several rows ---- */

typedef struct head_job {
    context * ctx;
    int R;
    float * const * logits;
} head_job;

/* Vocabulary rows [r0, r0 + HEAD_PIECE_ROWS) for every row, computed into the thread's own
 * piece of the run state and copied out to each row's logits. */
static void head_piece(void * arg, int64_t piece, int thread) {
    const head_job * job = (const head_job *)arg;
    const context * ctx = job->ctx;
    const tensor * W = &ctx->m->head;
    const int64_t r0 = piece * HEAD_PIECE_ROWS, n_vocab = tensor_rows(W);
    const int64_t nr = n_vocab - r0 < HEAD_PIECE_ROWS ? n_vocab - r0 : HEAD_PIECE_ROWS;
    const size_t row_bytes = tensor_row_bytes(W);
    float * out = ctx->rs.head_out + (size_t)thread * HEAD_PIECE_ROWS * (size_t)ctx->rs.rows;
    ctx->kern->matmul(W->type, W->data + (size_t)r0 * row_bytes, row_bytes, W->ne[0], ctx->rs.prepared, job->R, out, nr, 0, nr);
    for (int64_t row = 0; row < job->R; row++) memcpy(job->logits[row] + r0, out + row * nr, (size_t)nr * sizeof(float));
}

void ctx_head(context * ctx, const float * x, int R, float * const * logits) {
    const tensor * W = &ctx->m->head;
    if (R == 1) { /* decode: straight into the one output */
        ctx_matmul(ctx, W, x, 1, logits[0], tensor_rows(W));
        return;
    }
    ctx_prepare(ctx, W->type, x, W->ne[0], R);
    const head_job job = {ctx, R, logits};
    pool_for(ctx->pool, (tensor_rows(W) + HEAD_PIECE_ROWS - 1) / HEAD_PIECE_ROWS, head_piece, (void *)&job);
}

/* ---- other loops ---- */

typedef struct range_job {
    range_task fn;
    void * arg;
    int64_t n, step;
} range_job;

static void range_chunk(void * arg, int64_t chunk, int thread) {
    const range_job * job = (const range_job *)arg;
    const int64_t begin = chunk * job->step;
    const int64_t end = begin + job->step < job->n ? begin + job->step : job->n;
    job->fn(job->arg, begin, end);
}

void ctx_parallel_range(context * ctx, int64_t n, int64_t align, double work, range_task fn, void * arg) {
    if (ctx->n_threads == 1 || work < PARALLEL_MIN_OPS || n <= align) {
        fn(arg, 0, n);
        return;
    }
    const int64_t pieces = 2 * (int64_t)ctx->n_threads;
    int64_t step = (n + pieces - 1) / pieces;
    step = (step + align - 1) / align * align;
    range_job job = {fn, arg, n, step};
    pool_for(ctx->pool, (n + step - 1) / step, range_chunk, &job);
}
