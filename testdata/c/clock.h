// The C fixtures' clock: seconds on the monotonic clock, and sleeping until a time on it (a
// paced load keeps its schedule: a step that ran late is not slept after); working for a
// while on the calling thread's CPU clock.
#include <time.h>

static inline double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static inline void sleep_until(double at) {
    double wait = at - now();
    if (wait > 0) {
        struct timespec t = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        nanosleep(&t, NULL);
    }
}

static inline double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static inline void spin(double seconds) {
    if (seconds <= 0) return;
    double until = thread_cpu() + seconds;
    while (thread_cpu() < until) {
    }
}
