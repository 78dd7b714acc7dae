/*
 * pool.c: the thread pool of a context. n_threads - 1 workers are created with the context
 * (the calling thread takes part too). A parallel loop is cut into chunks that any thread
 * claims with one compare-and-swap, so the caller never waits for a worker that the OS has
 * not scheduled yet (on a busy machine it simply does the chunks itself); it only waits for
 * chunks already in progress. Workers spin briefly between loops (decoding issues many small
 * products per token), then sleep on a condition variable so an idle context costs no CPU.
 * Workers block the asynchronous signals: a signal sent to the process (Ctrl-C) then goes to
 * one of the application's own threads, whose handlers expect it there. A fault's signal stays
 * open, so a crash in a worker still reaches a crash handler (Python's faulthandler).
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#include "engine.h"

#define SPIN_ROUNDS (1 << 15)

/* The loop of one generation. Two slots alternate, so the slot of generation g is never
 * rewritten while a thread can still claim one of its chunks (that needs g + 2, which waits
 * for all of g + 1, which waits for all of g). */
typedef struct job {
    pool_chunk_task task;
    void * arg;
    int64_t n_chunks;
} job;

typedef struct worker {
    pool * owner;
    pthread_t thread;
    int index; /* 1 .. n_threads - 1; the calling thread is 0 */
} worker;

struct pool {
    int n_threads;
    worker * workers;
    job jobs[2];
    uint32_t last_generation;  /* caller only */
    _Atomic uint64_t claim;    /* generation << 32 | next chunk to claim */
    atomic_llong done;         /* chunks finished in the current generation */
    atomic_uint generation;    /* what sleeping workers wait for */
    atomic_int sleepers;
    atomic_bool quit;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

/* Claims and runs chunks of generation g until none are left (or g is over). */
static void run_chunks(pool * p, uint32_t g, int thread) {
    const job * j = &p->jobs[g & 1];
    for (;;) {
        uint64_t c = atomic_load(&p->claim);
        if ((uint32_t)(c >> 32) != g) return;
        const int64_t next = (int64_t)(c & 0xffffffffu);
        if (next >= j->n_chunks) return;
        if (!atomic_compare_exchange_weak(&p->claim, &c, c + 1)) continue;
        j->task(j->arg, next, thread);
        atomic_fetch_add(&p->done, 1);
    }
}

static void * worker_main(void * arg) {
    const worker * self = (const worker *)arg;
    pool * p = self->owner;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load(&p->generation);
        for (int i = 0; g == seen && i < SPIN_ROUNDS; i++) {
            cpu_relax();
            g = atomic_load(&p->generation);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->lock);
            atomic_fetch_add(&p->sleepers, 1);
            while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->quit)) {
                pthread_cond_wait(&p->wake, &p->lock);
            }
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->lock);
        }
        if (atomic_load(&p->quit)) break;
        seen = g;
        run_chunks(p, g, self->index);
    }
    return NULL;
}

pool * pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    pool * p = calloc(1, sizeof(pool));
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads, sizeof(worker));
        if (!p->workers) {
            pool_free(p);
            return NULL;
        }
        /* workers inherit the creating thread's mask: set theirs while creating them */
        sigset_t async_signals, previous;
        sigfillset(&async_signals);
        static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
        for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) sigdelset(&async_signals, faults[i]);
        pthread_sigmask(SIG_SETMASK, &async_signals, &previous);
        for (int i = 1; i < n_threads; i++) {
            p->workers[i].owner = p;
            p->workers[i].index = i;
            if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0) {
                p->n_threads = i; /* run with the workers that started */
                break;
            }
        }
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
    }
    return p;
}

int pool_size(const pool * p) { return p->n_threads; }

void pool_for(pool * p, int64_t n_chunks, pool_chunk_task task, void * arg) {
    if (n_chunks <= 0) return;
    if (p->n_threads == 1 || n_chunks == 1) {
        for (int64_t i = 0; i < n_chunks; i++) task(arg, i, 0);
        return;
    }
    const uint32_t g = ++p->last_generation;
    job * j = &p->jobs[g & 1];
    j->task = task;
    j->arg = arg;
    j->n_chunks = n_chunks;
    atomic_store(&p->done, 0);
    atomic_store(&p->claim, (uint64_t)g << 32);
    atomic_store(&p->generation, g);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    run_chunks(p, g, 0);
    for (int i = 0; atomic_load(&p->done) < n_chunks; i++) {
        cpu_relax();
        if (i > 256) sched_yield(); /* a worker holding a chunk was descheduled */
    }
}

void pool_free(pool * p) {
    if (!p) return;
    if (p->workers) {
        pthread_mutex_lock(&p->lock);
        atomic_store(&p->quit, true);
        atomic_fetch_add(&p->generation, 1);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (int i = 1; i < p->n_threads; i++) pthread_join(p->workers[i].thread, NULL);
        free(p->workers);
    }
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p);
}
