// A program with no C allocator at all: no C library, no malloc. It waits (the pause system
// call) until killed, or, built with -DEXIT_AT_ONCE, exits with status 5 at once. mapscope
// must refuse it with a reason, not attach to nothing.
void _start(void) {
#ifdef EXIT_AT_ONCE
    __asm__ volatile("syscall" : : "a"(60), "D"(5) : "rcx", "r11", "memory");
#endif
    for (;;) __asm__ volatile("syscall" : : "a"(34) : "rcx", "r11", "memory");
}
