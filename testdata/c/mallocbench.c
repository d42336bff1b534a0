// A malloc-heavy C program for `cargo xtask bench native`: after "ready", waits for "go S" on
// standard input, then for S seconds calls malloc and free in a tight loop (sizes 16 bytes to
// 2 KiB, eight blocks in flight), and reports {"ops": N, "seconds": S}: one op is one malloc
// and one free.
#include <stdio.h>
#include <stdlib.h>
#include "clock.h"

int main(void) {
    char line[64];
    int seconds;
    void *held[8] = {0};
    puts("ready");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "go %d", &seconds) != 1) continue;
        unsigned long ops = 0;
        double start = now(), end = start + seconds, at = start;
        while (at < end) {
            for (int i = 0; i < 4096; i++, ops++) {
                int slot = ops & 7;
                free(held[slot]);
                held[slot] = malloc(16 + (ops * 2654435761u >> 7) % 2032);
            }
            at = now();
        }
        printf("{\"ops\":%lu,\"seconds\":%.6f}\n", ops, at - start);
        fflush(stdout);
    }
    return 0;
}
