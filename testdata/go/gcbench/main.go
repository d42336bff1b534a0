// gcbench is the target of `cargo xtask bench`.
//
//	-mode alloc: allocate from several goroutines for -duration (a GC-heavy service in
//	             miniature) and print {"ops":…,"seconds":…,"gc_cycles":…,"pause_total_ns":…}.
//	-mode call:  print "ready", wait for "go" on stdin, then call stwProbeSite -calls times
//	             and print {"calls":…,"ns_per_call":…}; the bench puts uprobes on that function.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"
)

var (
	mode     = flag.String("mode", "alloc", "alloc or call")
	duration = flag.Duration("duration", 2*time.Second, "alloc: how long to run")
	workers  = flag.Int("workers", 2, "alloc: allocating goroutines")
	calls    = flag.Int("calls", 200000, "call: how many calls")
	heapOut  = flag.String("heap", "", "alloc: write the heap profile here afterwards")
)

var sink atomic.Pointer[[]byte]
var total int64

// stwProbeSite has the register shape of runtime.startTheWorldWithSema(now int64, w worldStop)
// on Go 1.23+: now in RAX, then reason, startedStopping, finishedStopping, stoppingCPUTime in
// RBX, RCX, RDI, RSI, and now returned in RAX. mapscope's programs attached here do exactly
// the work they do on a real stop-the-world.
//
//go:noinline
func stwProbeSite(now int64, reason uint8, started, finished, cpu int64) int64 {
	return now + int64(reason)*0 + cpu*0
}

func allocate() {
	deadline := time.Now().Add(*duration)
	var ops atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			live := make([][]byte, 1024)
			n := int64(0)
			for i := 0; ; i++ {
				if i%1024 == 0 && time.Now().After(deadline) {
					break
				}
				live[i%len(live)] = make([]byte, 64+i%512)
				n++
			}
			sink.Store(&live[0])
			ops.Add(n)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if *heapOut != "" {
		// Also keeps runtime.MemProfile linked, so the runtime samples allocations
		// (MemProfileRate 512 KiB) as most services that import pprof do.
		if f, err := os.Create(*heapOut); err == nil {
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}
	out, _ := json.Marshal(map[string]any{
		"ops":            ops.Load(),
		"seconds":        elapsed,
		"gc_cycles":      after.NumGC - before.NumGC,
		"pause_total_ns": after.PauseTotalNs - before.PauseTotalNs,
		"alloc_bytes":    after.TotalAlloc - before.TotalAlloc,
	})
	fmt.Println(string(out))
}

func callLoop() {
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() && in.Text() != "go" {
	}
	start := time.Now()
	for i := 0; i < *calls; i++ {
		now := int64(i) + 1_000_000
		total += stwProbeSite(now, 1, now-800, now-300, 0)
	}
	elapsed := time.Since(start)
	out, _ := json.Marshal(map[string]any{"calls": *calls, "ns_per_call": float64(elapsed.Nanoseconds()) / float64(*calls)})
	fmt.Println(string(out))
}

func main() {
	flag.Parse()
	switch *mode {
	case "alloc":
		allocate()
	case "call":
		callLoop()
	default:
		fmt.Fprintln(os.Stderr, "unknown -mode", *mode)
		os.Exit(2)
	}
}
