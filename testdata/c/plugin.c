// A C program that loads an allocator library after it started, as a program loads a plugin
// (dlopen), allocates through the library's own entry points found by name (dlsym), and
// unloads it (dlclose): the oracle for mapscope's pickup of libraries mapped and unmapped
// after attach.
//
// Usage: plugin LIBRARY MALLOC FREE (e.g. libmimalloc.so.2 mi_malloc mi_free).
// Protocol, one line each: -> "ready"; then any of
//   <- "open"  -> {"mapped": true}          the library loaded (and mapped)
//   <- "go"    -> {"objects": N, "bytes": B, "frees": F}   what it asked the library for
//   <- "close" -> {"mapped": false}         the library unloaded (and unmapped)
// <- EOF: exit 0.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CALLS 20000

// Whether the library's file is mapped, by its name, from /proc/self/maps.
static int mapped(const char *library) {
    const char *name = strrchr(library, '/');
    name = name ? name + 1 : library;
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) abort();
    char line[4096];
    int found = 0;
    while (fgets(line, sizeof line, maps))
        if (strstr(line, name)) found = 1;
    fclose(maps);
    return found;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: plugin LIBRARY MALLOC FREE\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *library = NULL;
    void *(*allocate)(size_t) = NULL;
    void (*release)(void *) = NULL;
    printf("ready\n");
    char command[64];
    while (fgets(command, sizeof command, stdin)) {
        if (strcmp(command, "open\n") == 0 && !library) {
            library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
            if (!library) {
                fprintf(stderr, "dlopen: %s\n", dlerror());
                return 1;
            }
            allocate = (void *(*)(size_t))dlsym(library, argv[2]);
            release = (void (*)(void *))dlsym(library, argv[3]);
            if (!allocate || !release) {
                fprintf(stderr, "dlsym: %s\n", dlerror());
                return 1;
            }
            printf("{\"mapped\": %s}\n", mapped(argv[1]) ? "true" : "false");
        } else if (strcmp(command, "go\n") == 0 && library) {
            unsigned long objects = 0, bytes = 0, frees = 0;
            for (int i = 0; i < CALLS; i++) {
                size_t n = 8 + (size_t)(i % 64) * 16;
                void *block = allocate(n);
                if (!block) abort();
                objects++, bytes += n;
                // Written, so that the call is not optimised away.
                memset(block, 1, 1);
                release(block);
                frees++;
            }
            printf("{\"objects\": %lu, \"bytes\": %lu, \"frees\": %lu}\n", objects, bytes,
                   frees);
        } else if (strcmp(command, "close\n") == 0 && library) {
            if (dlclose(library) != 0) {
                fprintf(stderr, "dlclose: %s\n", dlerror());
                return 1;
            }
            library = NULL;
            printf("{\"mapped\": %s}\n", mapped(argv[1]) ? "true" : "false");
        } else {
            fprintf(stderr, "unexpected command: %s", command);
            return 2;
        }
    }
    return 0;
}
