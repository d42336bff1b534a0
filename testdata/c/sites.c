// A C program whose functions allocate in known proportions, through several entry points,
// from two threads, when told to ("go N" on standard input: N rounds), and report what each
// asked for: the oracle for mapscope's native allocation sites. Built with and without frame
// pointers: the site is the direct caller either way.
//
// Protocol, one line each: -> "ready"; <- "go N"; -> {"big_bytes": B, "medium_bytes": M,
// "small_bytes": S, "objects": O, "bytes": T, "leaked_bytes": L}; <- EOF: exit 0. "leak N" is
// "go N" with a fourth function that keeps what it allocates (2 to 6 KiB a round, from the
// first thread): the leak, reported as leaked_bytes; "free" frees it all (-> {"freed": L}).
// "loop S": rounds paced at 2,000 a second in each thread for S seconds, leaking every 10th
// round's block (a slow leak, for dashboards), then the same report.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "clock.h"

struct counts {
    unsigned long big, medium, small, objects;
};

static struct counts counts[2];
static int rounds, leaking, pace_seconds;

// What leaky_allocs kept, freed by "free".
#define MAX_KEPT 200000
static void *kept[MAX_KEPT];
static int kept_count;
static unsigned long leaked;

// Keeps its blocks: 2, 4 and 6 KiB from malloc.
__attribute__((noinline)) static void leaky_allocs(int i) {
    if (kept_count == MAX_KEPT) return;
    size_t n = 2048 + (size_t)(i % 3) * 2048;
    kept[kept_count++] = malloc(n);
    leaked += n;
}
static pthread_barrier_t start, done;

// 8 of every 17 bytes: 4, 8 and 12 KiB blocks from malloc.
__attribute__((noinline)) static void big_allocs(struct counts *c, int i) {
    size_t n = 4096 + (size_t)(i % 3) * 4096;
    void *p = malloc(n);
    c->big += n, c->objects++;
    __asm__ volatile("" : : "r"(p) : "memory");
    free(p);
}

// 6 of 17: calloc of 3 × 1, 2 and 3 KiB.
__attribute__((noinline)) static void medium_allocs(struct counts *c, int i) {
    size_t n = 1024 + (size_t)(i % 3) * 1024;
    void *p = calloc(3, n);
    c->medium += 3 * n, c->objects++;
    __asm__ volatile("" : : "r"(p) : "memory");
    free(p);
}

// 3 of 17: 0.5, 1 and 1.5 KiB allocated by realloc(NULL, n), then grown to twice that.
__attribute__((noinline)) static void small_allocs(struct counts *c, int i) {
    size_t n = 512 + (size_t)(i % 3) * 512;
    void *p = realloc(NULL, n);
    p = realloc(p, 2 * n);
    c->small += 3 * n, c->objects += 2;
    __asm__ volatile("" : : "r"(p) : "memory");
    free(p);
}

// A paced run: a tenth of a second's rounds at a time, on schedule.
static void paced(struct counts *c) {
    double start = now();
    for (int step = 1; step <= pace_seconds * 10; step++) {
        for (int i = 0; i < 200; i++) {
            big_allocs(c, i);
            medium_allocs(c, i);
            small_allocs(c, i);
            if (c == &counts[0] && i % 10 == 0) leaky_allocs(i + step);
        }
        sleep_until(start + step / 10.0);
    }
}

static void work(struct counts *c) {
    if (pace_seconds > 0) {
        paced(c);
        return;
    }
    for (int i = 0; i < rounds; i++) {
        big_allocs(c, i);
        medium_allocs(c, i);
        small_allocs(c, i);
        if (leaking && c == &counts[0]) leaky_allocs(i);
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
        if (strncmp(line, "free", 4) == 0) {
            for (int i = 0; i < kept_count; i++) free(kept[i]);
            printf("{\"freed\":%lu}\n", leaked);
            fflush(stdout);
            kept_count = 0, leaked = 0;
            continue;
        }
        pace_seconds = 0;
        if (sscanf(line, "go %d", &rounds) == 1) {
            leaking = 0;
        } else if (sscanf(line, "leak %d", &rounds) == 1) {
            leaking = 1;
        } else if (sscanf(line, "loop %d", &pace_seconds) == 1) {
            leaking = 0;
        } else {
            continue;
        }
        unsigned long leaked_before = leaked;
        memset(counts, 0, sizeof counts);
        pthread_barrier_wait(&start);
        work(&counts[0]);
        pthread_barrier_wait(&done);
        unsigned long big = counts[0].big + counts[1].big;
        unsigned long medium = counts[0].medium + counts[1].medium;
        unsigned long small = counts[0].small + counts[1].small;
        printf("{\"big_bytes\":%lu,\"medium_bytes\":%lu,\"small_bytes\":%lu,\"objects\":%lu,"
               "\"bytes\":%lu,\"leaked_bytes\":%lu}\n",
               big, medium, small, counts[0].objects + counts[1].objects, big + medium + small,
               leaked - leaked_before);
        fflush(stdout);
    }
    return 0;
}
