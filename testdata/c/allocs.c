// A C program that calls every standard allocator entry point a known number of times, from
// two threads, when told to ("go" on standard input), and reports its own counts of what it
// asked for: the oracle for mapscope's native allocation counts.
//
// Protocol, one line each: -> "ready"; <- "go"; -> {"objects": N, "bytes": B, "frees": F,
// "reallocs": R}; <- EOF: exit 0. "pace N S [W]" in place of "go": each thread does N rounds a
// second for S seconds, each round also working W microseconds of its own CPU time (a
// service does more than allocate), a paced load like a service's, then the same report.
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "clock.h"

#define ROUNDS 1000

struct counts {
    unsigned long objects, bytes, frees, reallocs;
};

static struct counts counts[2];
// Rounds a second, seconds, and each round's own work in microseconds of a paced run; 0
// seconds for one burst of ROUNDS.
static int pace_rounds, pace_seconds, pace_work_us;
// The second thread starts and ends each run with the first: made before "ready", so that
// making it (glibc allocates its thread-local storage) is not counted in a run.
static pthread_barrier_t start, done;

// Each kind of call once per round: what the program asked its allocator for.
static void rounds(struct counts *c, int count) {
    for (int i = 0; i < count; i++) {
        size_t n = 16 + (size_t)(i % 64) * 8;
        void *a = malloc(n);
        c->objects++, c->bytes += n;
        void *b = calloc(3, n);
        c->objects++, c->bytes += 3 * n;
        void *r = realloc(NULL, n); // allocates
        c->objects++, c->bytes += n;
        r = realloc(r, 4 * n); // moves: a free and an allocation
        c->objects++, c->bytes += 4 * n, c->frees++, c->reallocs++;
        void *ra = reallocarray(NULL, 5, n);
        c->objects++, c->bytes += 5 * n;
        void *p;
        if (posix_memalign(&p, 64, n) != 0) abort();
        c->objects++, c->bytes += n;
        void *al = aligned_alloc(64, 128);
        c->objects++, c->bytes += 128;
        void *m = memalign(128, n);
        c->objects++, c->bytes += n;
        void *v = valloc(n);
        c->objects++, c->bytes += n;
        // Frees a; glibc, jemalloc and tcmalloc return NULL, mimalloc a new empty block.
        void *z = realloc(a, 0);
        c->frees++;
        if (z) c->objects++, c->reallocs++, c->frees++;
        free(z);
        free(b), free(r), free(ra), free(p), free(al), free(m), free(v);
        c->frees += 7;
        free(NULL);
    }
}

// One run: a burst, or a paced load (a tenth of a second's rounds at a time, on schedule).
static void work(struct counts *c) {
    if (pace_seconds == 0) {
        rounds(c, ROUNDS);
        return;
    }
    double start = now();
    for (int step = 1; step <= pace_seconds * 10; step++) {
        for (int round = 0; round < pace_rounds / 10; round++) {
            rounds(c, 1);
            spin(pace_work_us / 1e6);
        }
        sleep_until(start + step / 10.0);
    }
}

static void *second(void *unused) {
    (void)unused;
    for (;;) {
        pthread_barrier_wait(&start);
        work(&counts[1]);
        pthread_barrier_wait(&done);
    }
    return NULL;
}

int main(void) {
    char line[64];
    pthread_t other;
    pthread_barrier_init(&start, NULL, 2);
    pthread_barrier_init(&done, NULL, 2);
    pthread_create(&other, NULL, second, NULL);
    puts("ready");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        pace_work_us = 0;
        if (sscanf(line, "pace %d %d %d", &pace_rounds, &pace_seconds, &pace_work_us) < 2) {
            if (strncmp(line, "go", 2) != 0) continue;
            pace_rounds = pace_seconds = 0;
        }
        memset(counts, 0, sizeof counts);
        pthread_barrier_wait(&start);
        work(&counts[0]);
        pthread_barrier_wait(&done);
        printf("{\"objects\":%lu,\"bytes\":%lu,\"frees\":%lu,\"reallocs\":%lu}\n",
               counts[0].objects + counts[1].objects, counts[0].bytes + counts[1].bytes,
               counts[0].frees + counts[1].frees, counts[0].reallocs + counts[1].reallocs);
        fflush(stdout);
    }
    return 0;
}
