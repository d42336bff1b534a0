// nosampling allocates but never references runtime.MemProfile (no runtime/pprof, no
// net/http/pprof), so the Go linker turns the runtime's allocation sampling off:
// runtime.MemProfileRate is 0, as in most services.
//
// Without flags it allocates as fast as it can. With -paced it works at a steady pace, like a
// service serving steady traffic: every 10 ms it computes for -work, buildLarge makes 24
// objects of 32 KiB and buildSmall 64 of 4 KiB (both exact size classes, so requested bytes
// are the bytes the runtime counts): three quarters of the bytes come from buildLarge.
//
// Prints "ready", then on stdin:
//
//	"counters" -> {"bytes":B,"objects":O,"large":L,"small":S}: the runtime's
//	              /gc/heap/allocs:bytes and :objects, and the objects each site made so far
//	"exit"     -> exits
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

var (
	sink        []byte
	keep        [][]byte
	largeMade   atomic.Uint64
	smallMade   atomic.Uint64
	paced       = flag.Bool("paced", false, "allocate at a steady pace from two sites")
	work        = flag.Duration("work", time.Millisecond, "computing besides allocating, every 10 ms")
	worked      uint64
	largeObject = 32 << 10
	smallObject = 4 << 10
)

//go:noinline
func buildLarge(n int) {
	for i := 0; i < n; i++ {
		keep[i%len(keep)] = make([]byte, largeObject)
	}
	largeMade.Add(uint64(n))
}

//go:noinline
func buildSmall(n int) {
	for i := 0; i < n; i++ {
		keep[i%len(keep)] = make([]byte, smallObject)
	}
	smallMade.Add(uint64(n))
}

// compute keeps a CPU busy for d without allocating.
func compute(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
		for i := 0; i < 1000; i++ {
			worked = worked*6364136223846793005 + 1442695040888963407
		}
	}
}

func counters() map[string]uint64 {
	samples := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/gc/heap/allocs:objects"},
	}
	metrics.Read(samples)
	return map[string]uint64{
		"bytes":   samples[0].Value.Uint64(),
		"objects": samples[1].Value.Uint64(),
		"large":   largeMade.Load(),
		"small":   smallMade.Load(),
	}
}

func main() {
	flag.Parse()
	keep = make([][]byte, 64)
	if *paced {
		go func() {
			tick := time.NewTicker(10 * time.Millisecond)
			for range tick.C {
				compute(*work)
				buildLarge(24)
				buildSmall(64)
			}
		}()
	} else {
		go func() {
			for i := 0; ; i++ {
				sink = make([]byte, 1024+i%1024)
			}
		}()
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		switch in.Text() {
		case "counters":
			out.Encode(counters())
		case "exit":
			return
		}
	}
}
