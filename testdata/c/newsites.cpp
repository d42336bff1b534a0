// A C++ program whose functions allocate in known proportions through four forms of
// operator new (which call malloc or aligned_alloc from libstdc++, built without frame
// pointers), and report what each asked for: the oracle for mapscope's native sites in C++.
// The site must be each function, named as C++ names it, never operator new.
//
// Protocol, one line each: -> "ready"; <- "go N" (N rounds); -> {"orders": B, "notes": B,
// "spares": B, "blocks": B, "bytes": T}; <- EOF: exit 0.
#include <cstdio>
#include <cstring>
#include <new>

namespace shop {

struct Order {
    char payload[4000];
    Order() { std::memset(payload, 1, sizeof payload); }
};

struct alignas(64) Block {
    char data[1024];
};

// 4000 of every 8024 bytes: operator new(size_t).
__attribute__((noinline)) Order *place_order() { return new Order(); }

// 2000 of 8024: operator new[](size_t), which jumps to operator new.
__attribute__((noinline)) char *write_note(int i) {
    char *note = new char[2000];
    note[i % 2000] = 1;
    return note;
}

// 1000 of 8024: operator new[](size_t, nothrow_t), which calls operator new[].
__attribute__((noinline)) char *spare_parts(int i) {
    char *spare = new (std::nothrow) char[1000];
    if (spare) spare[i % 1000] = 1;
    return spare;
}

// 1024 of 8024: operator new(size_t, align_val_t), which calls aligned_alloc.
__attribute__((noinline)) Block *aligned_block(int i) {
    Block *block = new Block;
    block->data[i % 1024] = 1;
    return block;
}

}  // namespace shop

int main() {
    char line[64];
    std::puts("ready");
    std::fflush(stdout);
    while (std::fgets(line, sizeof line, stdin)) {
        int rounds;
        if (std::sscanf(line, "go %d", &rounds) != 1) continue;
        unsigned long orders = 0, notes = 0, spares = 0, blocks = 0;
        for (int i = 0; i < rounds; i++) {
            shop::Order *order = shop::place_order();
            orders += sizeof(shop::Order);
            char *note = shop::write_note(i);
            notes += 2000;
            char *spare = shop::spare_parts(i);
            spares += 1000;
            shop::Block *block = shop::aligned_block(i);
            blocks += sizeof(shop::Block);
            __asm__ volatile("" : : "r"(order), "r"(note), "r"(spare), "r"(block) : "memory");
            delete order;
            delete[] note;
            delete[] spare;
            delete block;
        }
        std::printf("{\"orders\":%lu,\"notes\":%lu,\"spares\":%lu,\"blocks\":%lu,\"bytes\":%lu}\n",
                    orders, notes, spares, blocks, orders + notes + spares + blocks);
        std::fflush(stdout);
    }
    return 0;
}
