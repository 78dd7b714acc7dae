/*
 * pool.c: the thread pool of a context. n_threads - 1 workers are created with the context
 * (the calling thread is worker 0); a product hands each worker a share of its rows. Workers
 * spin briefly between tasks (decoding issues many small products per token), then sleep
 * on a condition variable so an idle context costs no CPU.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "engine.h"

#define SPIN_ROUNDS (1 << 16)

typedef struct worker {
    pool * owner;
    int index;
    pthread_t thread;
} worker;

struct pool {
    int n_threads;
    worker * workers;
    pool_task task;
    void * arg;
    atomic_uint generation; /* bumped for each task */
    atomic_int pending;     /* workers still running the current task */
    atomic_int sleepers;
    atomic_bool quit;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

static void * worker_main(void * p) {
    worker * w = (worker *)p;
    pool * pl = w->owner;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load(&pl->generation);
        for (int i = 0; g == seen && i < SPIN_ROUNDS; i++) {
            cpu_relax();
            g = atomic_load(&pl->generation);
        }
        if (g == seen) {
            pthread_mutex_lock(&pl->lock);
            atomic_fetch_add(&pl->sleepers, 1);
            while ((g = atomic_load(&pl->generation)) == seen && !atomic_load(&pl->quit)) {
                pthread_cond_wait(&pl->wake, &pl->lock);
            }
            atomic_fetch_sub(&pl->sleepers, 1);
            pthread_mutex_unlock(&pl->lock);
        }
        if (atomic_load(&pl->quit)) break;
        seen = g;
        pl->task(pl->arg, w->index, pl->n_threads);
        atomic_fetch_sub(&pl->pending, 1);
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
            free(p);
            return NULL;
        }
        for (int i = 1; i < n_threads; i++) {
            p->workers[i].owner = p;
            p->workers[i].index = i;
            if (pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]) != 0) {
                p->n_threads = i; /* run with the workers that started */
                break;
            }
        }
    }
    return p;
}

int pool_size(const pool * p) { return p->n_threads; }

void pool_run(pool * p, pool_task task, void * arg) {
    if (p->n_threads == 1) {
        task(arg, 0, 1);
        return;
    }
    p->task = task;
    p->arg = arg;
    atomic_store(&p->pending, p->n_threads - 1);
    atomic_fetch_add(&p->generation, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    task(arg, 0, p->n_threads);
    for (int i = 0; atomic_load(&p->pending) > 0; i++) {
        cpu_relax();
        if (i > SPIN_ROUNDS) sched_yield();
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
