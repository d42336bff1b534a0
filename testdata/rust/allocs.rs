// A Rust program whose global allocator is the system's (glibc's malloc, as every Rust program
// on Linux by default), wrapped to count what the program asks of it: the oracle for
// mapscope's native counts of a Rust program. Rust allocates through `__rust_alloc` and
// friends, which reach `malloc`, `calloc`, `realloc` and `free`.
//
// Protocol, one line each: -> "ready"; <- "go" -> {"objects": N, "bytes": B, "frees": F}: the
// calls since the last report (reading the command included), from two threads, counted as
// mapscope counts them (a realloc is an allocation of its new size and a free); <- EOF: exit.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::HashMap,
    io::{BufRead as _, Write as _},
    sync::{
        Arc, Barrier,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

struct Counting;

static OBJECTS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        OBJECTS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        OBJECTS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        OBJECTS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        FREES.fetch_add(1, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREES.fetch_add(1, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Boxes, growing vectors (reallocs), formatted strings, zeroed buffers and a hash map.
#[inline(never)]
fn work(seed: u64) -> u64 {
    let mut total = 0u64;
    for i in 0..2_000u64 {
        let boxed = Box::new([i ^ seed; 16]);
        total = total.wrapping_add(std::hint::black_box(&boxed)[3]);
        let mut grown: Vec<u64> = Vec::new();
        for j in 0..(i % 100) {
            grown.push(j);
        }
        total = total.wrapping_add(std::hint::black_box(&grown).len() as u64);
        let text = format!("request {i} from {seed}");
        total = total.wrapping_add(std::hint::black_box(&text).len() as u64);
        let zeroed = vec![0u8; 1024 + (i as usize % 512) * 8];
        total = total.wrapping_add(std::hint::black_box(&zeroed).len() as u64);
    }
    let mut map = HashMap::new();
    for i in 0..1_000u64 {
        map.insert(i, i.to_string());
    }
    total.wrapping_add(std::hint::black_box(&map).len() as u64)
}

fn main() {
    // The second thread is started before "ready": starting a thread allocates in the C
    // library too, where the counting wrapper does not see it.
    let start = Arc::new(Barrier::new(2));
    let done = Arc::new(Barrier::new(2));
    {
        let (start, done) = (Arc::clone(&start), Arc::clone(&done));
        std::thread::spawn(move || {
            // Started, and done with what starting it allocated and freed.
            done.wait();
            loop {
                start.wait();
                std::hint::black_box(work(2));
                done.wait();
            }
        });
    }
    done.wait();
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let mut line = String::with_capacity(64);
    writeln!(stdout, "ready").unwrap();
    stdout.flush().unwrap();
    // From here (the first write allocated stdout's buffer).
    let mut reported = [OBJECTS.load(Relaxed), BYTES.load(Relaxed), FREES.load(Relaxed)];
    loop {
        line.clear();
        if stdin.read_line(&mut line).unwrap() == 0 {
            return;
        }
        start.wait();
        std::hint::black_box(work(1));
        done.wait();
        let now = [OBJECTS.load(Relaxed), BYTES.load(Relaxed), FREES.load(Relaxed)];
        // Written straight into the locked stdout's buffer: no allocation of its own.
        writeln!(
            stdout,
            "{{\"objects\": {}, \"bytes\": {}, \"frees\": {}}}",
            now[0] - reported[0],
            now[1] - reported[1],
            now[2] - reported[2]
        )
        .unwrap();
        stdout.flush().unwrap();
        reported = now;
    }
}
