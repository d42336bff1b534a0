// gcbench is the target of `cargo xtask bench`.
//
//	-mode alloc: allocate from several goroutines for -duration (a GC-heavy service in
//	             miniature) and print {"ops":…,"seconds":…,"gc_cycles":…,"pause_total_ns":…}.
//	-mode call:  print "ready", wait for "go" on stdin, then call stwProbeSite -calls times
//	             and print {"calls":…,"ns_per_call":…}; the bench puts uprobes on that function.
//	-mode maps:  a map-heavy service in miniature for -duration: each request hashes 1 KiB,
//	             looks up and updates a big long-lived map and builds a small map; every 64th
//	             grows a map past 8 entries, every 512th grows one from empty to 2048; print
//	             {"ops":…,"seconds":…}.
//	-mode smallmaps: build 16-entry maps from empty for -duration; print {"ns_per_map":…}.
//	-mode paced: allocate about 20 MB/s in 10 ms bursts for -duration (a service's GC load).
//	-mode growmaps: build 512-entry maps from empty for -duration; print {"maps":…} every
//	             100 ms and at the end, then "done", then idle for -then-idle.
//	-mode sizedmaps: make(map[int]int, n) with a run-time n for -duration; same output.
//	-mode bigmap: build a -entries map[int]int and a buffer of as many bytes as the map holds,
//	             print {"map":ADDR,"type":ADDR,"buffer":ADDR,"buffer_len":N}, then wait for EOF.
//	-mode stacks: like alloc, but each allocation from one of 2^depth call paths, with
//	             -one-path-around of allocations down a single path before and after;
//	             "done" at the end, then idle for -then-idle.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

var (
	mode     = flag.String("mode", "alloc", "alloc or call")
	duration = flag.Duration("duration", 2*time.Second, "alloc: how long to run")
	workers  = flag.Int("workers", 2, "alloc: allocating goroutines")
	calls    = flag.Int("calls", 200000, "call: how many calls")
	heapOut  = flag.String("heap", "", "alloc: write the heap profile here afterwards")
	entries  = flag.Int("entries", 1_000_000, "bigmap: entries")
	idle     = flag.Duration("then-idle", 0, "alloc, growmaps, stacks: after the report, stay up doing nothing this long")
	depth    = flag.Int("depth", 14, "stacks: levels of the call tree (2^depth call paths)")
	onePath  = flag.Duration("one-path-around", 0, "stacks: before and after -duration, allocate down one call path this long")
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
	time.Sleep(*idle)
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

// descend allocates at the bottom of a call chain whose shape follows path's bits, two
// frames to choose from at each of depth levels: 2^depth distinct stacks, as a service's
// allocations come from many call paths.
//
//go:noinline
func descend(path, depth int, live [][]byte, i int) {
	if depth == 0 {
		live[i%len(live)] = make([]byte, 64+i%512)
		return
	}
	if path&1 == 0 {
		left(path>>1, depth-1, live, i)
	} else {
		right(path>>1, depth-1, live, i)
	}
}

//go:noinline
func left(path, depth int, live [][]byte, i int) { descend(path, depth, live, i) }

//go:noinline
func right(path, depth int, live [][]byte, i int) { descend(path, depth, live, i) }

// manyStacks allocates flat out, like "alloc", but each allocation down one of 2^depth
// call paths picked at random: the distinct stacks mapscope sees keep growing, up to what its
// tables hold, for mapscope's footprint tests. Before and after, for -one-path-around, as fast
// down a single path: the same allocations with nothing new to see.
func manyStacks() {
	var wg sync.WaitGroup
	start := time.Now()
	manyFrom, manyUntil := start.Add(*onePath), start.Add(*onePath+*duration)
	end := manyUntil.Add(*onePath)
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(seed int) {
			defer wg.Done()
			live := make([][]byte, 1024)
			random := uint64(seed + 1)
			for i := 0; ; i++ {
				now := time.Now()
				if now.After(end) {
					break
				}
				many := now.After(manyFrom) && now.Before(manyUntil)
				// A phase's allocations between two reads of the clock.
				for j := 0; j < 1024; j++ {
					path := 0
					if many {
						random = random*6364136223846793005 + 1442695040888963407
						path = int(random >> 40)
					}
					descend(path, *depth, live, i*1024+j)
				}
			}
		}(w)
	}
	wg.Wait()
	fmt.Println("done")
	time.Sleep(*idle)
}

var mapSink atomic.Pointer[map[string]int]

func mapLoad() {
	deadline := time.Now().Add(*duration)
	var ops atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	keys := make([]string, 16)
	for i := range keys {
		keys[i] = fmt.Sprintf("field-%d", i)
	}
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cache := make(map[int]int)
			for i := 0; i < 200_000; i++ {
				cache[i] = i
			}
			payload := make([]byte, 1024)
			n := int64(0)
			for i := 0; ; i++ {
				if i%256 == 0 && time.Now().After(deadline) {
					break
				}
				// A request: hash a payload, look up and update the cache, build a small map
				// of fields (6: no growth).
				payload[i%len(payload)] = byte(i)
				digest := sha256.Sum256(payload)
				sum := int(digest[0])
				for j := 0; j < 16; j++ {
					sum += cache[(i*7919+j*104729)%400_000]
				}
				cache[200_000+i%200_000] = sum
				delete(cache, 200_000+(i+100_000)%200_000)
				fields := make(map[string]int)
				for j, key := range keys[:6] {
					fields[key] = j + sum
				}
				// Every 64th request builds a bigger map of fields (it grows once or twice).
				if i%64 == 0 {
					for j, key := range keys {
						fields[key] = j
					}
				}
				mapSink.Store(&fields)
				// Every 512th request grows a map from empty to 2048 entries.
				if i%512 == 0 {
					grown := map[int]int{}
					for j := 0; j < 2048; j++ {
						grown[j] = j
					}
					sum += len(grown)
				}
				n++
			}
			ops.Add(n)
		}(w)
	}
	wg.Wait()
	out, _ := json.Marshal(map[string]any{"ops": ops.Load(), "seconds": time.Since(start).Seconds()})
	fmt.Println(string(out))
}

// pacedLoad allocates about 20 MB/s in bursts every 10 ms, keeping a small live set, for
// -duration: a service's GC load, a few cycles a second (the daemon footprint bench's targets).
func pacedLoad() {
	live := make([][]byte, 1024)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	i := 0
	for time.Since(start) < *duration {
		<-tick.C
		for j := 0; j < 200; j++ {
			live[i%len(live)] = make([]byte, 1024)
			i++
		}
	}
}

// growMaps builds 512-entry maps from empty for -duration, every growth a map event (those
// past 128 entries counted by mapscope), printing {"maps":…,"seconds":…} every 100 ms (the
// count so far) and at the end, then idles -then-idle.
func growMaps() {
	start := time.Now()
	count := 0
	report := func() {
		out, _ := json.Marshal(map[string]any{"maps": count, "seconds": time.Since(start).Seconds()})
		fmt.Println(string(out))
	}
	next := start.Add(100 * time.Millisecond)
	for time.Since(start) < *duration {
		m := map[int]int{}
		for j := 0; j < 512; j++ {
			m[j] = j
		}
		total += int64(len(m))
		count++
		if now := time.Now(); now.After(next) {
			report()
			next = now.Add(100 * time.Millisecond)
		}
	}
	report()
	fmt.Println("done")
	time.Sleep(*idle)
}

// smallMaps builds 16-entry maps from empty for -duration (each grows past its first bucket or
// group: one growth event on swiss tables, two on bucket maps) and prints
// {"ns_per_map":…}.
func smallMaps() {
	start := time.Now()
	count := 0
	for time.Since(start) < *duration {
		for i := 0; i < 1000; i++ {
			m := map[int]int{}
			for j := 0; j < 16; j++ {
				m[j] = j
			}
			total += int64(len(m))
			count++
		}
	}
	out, _ := json.Marshal(map[string]any{"ns_per_map": float64(time.Since(start).Nanoseconds()) / float64(count)})
	fmt.Println(string(out))
}

// sizedMaps calls make(map[int]int, n) with a run-time n (runtime.makemap) for -duration and
// prints {"ns_per_map":…}.
func sizedMaps() {
	n := 16 + len(os.Args)%2
	start := time.Now()
	count := 0
	for time.Since(start) < *duration {
		for i := 0; i < 100; i++ {
			m := make(map[int]int, n)
			total += int64(len(m))
			mapSink.Store(nil)
			count++
		}
	}
	out, _ := json.Marshal(map[string]any{"ns_per_map": float64(time.Since(start).Nanoseconds()) / float64(count)})
	fmt.Println(string(out))
}

// eface is an interface's two words: the type descriptor and the data (for a map, its header).
type eface struct{ typ, data unsafe.Pointer }

func bigMap() {
	m := make(map[int]int)
	for i := 0; i < *entries; i++ {
		m[i*7919] = i
	}
	var boxed any = m
	e := (*eface)(unsafe.Pointer(&boxed))
	buffer := make([]byte, 64<<20)
	for i := range buffer {
		buffer[i] = byte(i)
	}
	out, _ := json.Marshal(map[string]any{
		"map":        uintptr(e.data),
		"type":       uintptr(e.typ),
		"buffer":     uintptr(unsafe.Pointer(&buffer[0])),
		"buffer_len": len(buffer),
	})
	fmt.Println(string(out))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
	}
	runtime.KeepAlive(m)
	runtime.KeepAlive(buffer)
}

func main() {
	flag.Parse()
	switch *mode {
	case "maps":
		mapLoad()
	case "smallmaps":
		smallMaps()
	case "growmaps":
		growMaps()
	case "paced":
		pacedLoad()
	case "sizedmaps":
		sizedMaps()
	case "bigmap":
		bigMap()
	case "alloc":
		allocate()
	case "stacks":
		manyStacks()
	case "call":
		callLoop()
	default:
		fmt.Fprintln(os.Stderr, "unknown -mode", *mode)
		os.Exit(2)
	}
}
