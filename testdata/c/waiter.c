// A C program that allocates through whatever malloc it is linked or preloaded with, says
// "ready", and waits for its standard input to close: a native target to inspect by PID.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    // One allocation of each common kind, so the allocator is initialised and in use.
    char *text = malloc(64);
    char *zeroed = calloc(4, 16);
    text = realloc(text, 128);
    strcpy(text, "ready");
    puts(text);
    fflush(stdout);
    while (getchar() != EOF) {
    }
    free(zeroed);
    free(text);
    return 0;
}
