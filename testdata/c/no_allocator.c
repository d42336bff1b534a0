// A static program with no C library, hence no malloc: it only exits. Built with
// `-nostdlib -static`; mapscope must say it finds no allocator, in one line.
void _start(void) {
    __asm__ volatile("mov $60, %eax\n\txor %edi, %edi\n\tsyscall");
}
