// allocsites allocates from a handful of functions in fixed proportions, for mapscope's
// allocation-site tests. Protocol as testdata/go/gcload: prints "ready", on "go" runs the load
// (on "go NAME,NAME" only those functions' share of it)
// and prints a JSON report (runtime/metrics deltas), on "heap FILE" writes its own heap profile
// (the oracle for the site ranking), on "exit" exits.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"time"
)

var duration = flag.Duration("duration", 2*time.Second, "how long the load runs")

type point struct{ x, y, z, w int64 }

var (
	keepBytes  [][]byte
	keepPoints []*point
	keepSlices [][]int
	keepMaps   []map[int]int
)

// Per round: 4 KiB x 8 = 32 KiB.
//
//go:noinline
func allocLarge() {
	for i := 0; i < 8; i++ {
		keepBytes[i%len(keepBytes)] = make([]byte, 4096)
	}
}

// Per round: 32 B x 256 = 8 KiB.
//
//go:noinline
func allocSmall() {
	for i := 0; i < 256; i++ {
		keepPoints[i%len(keepPoints)] = &point{x: int64(i)}
	}
}

// Per round: appends that grow a slice from nothing to 512 ints (runtime.growslice).
//
//go:noinline
func growSlice() {
	var s []int
	for i := 0; i < 512; i++ {
		s = append(s, i)
	}
	keepSlices[0] = s
}

// Per round: 16 small maps (runtime.makemap_small), each filled past its first bucket.
//
//go:noinline
func smallMaps() {
	for i := 0; i < 16; i++ {
		m := map[int]int{}
		for j := 0; j < 12; j++ {
			m[j] = j
		}
		keepMaps[i%len(keepMaps)] = m
	}
}

// Per round: 2 maps sized up front (runtime.makemap).
//
//go:noinline
func presizedMaps() {
	for i := 0; i < 2; i++ {
		keepMaps[i%len(keepMaps)] = make(map[int]int, 200)
	}
}

// The allocating functions by name, for "go NAME,NAME".
var functions = map[string]func(){
	"allocLarge":   allocLarge,
	"allocSmall":   allocSmall,
	"growSlice":    growSlice,
	"smallMaps":    smallMaps,
	"presizedMaps": presizedMaps,
}

func read(names []string) []uint64 {
	samples := make([]metrics.Sample, len(names))
	for i, name := range names {
		samples[i].Name = name
	}
	metrics.Read(samples)
	values := make([]uint64, len(names))
	for i, s := range samples {
		values[i] = s.Value.Uint64()
	}
	return values
}

func main() {
	flag.Parse()
	keepBytes = make([][]byte, 64)
	keepPoints = make([]*point, 1024)
	keepSlices = make([][]int, 1)
	keepMaps = make([]map[int]int, 32)
	names := []string{"/gc/heap/allocs:bytes", "/gc/heap/allocs:objects"}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		line := in.Text()
		switch {
		case line == "go" || strings.HasPrefix(line, "go "):
			// "go" runs every function; "go allocLarge,growSlice" only those.
			run := []func(){allocLarge, allocSmall, growSlice, smallMaps, presizedMaps}
			if only := strings.TrimPrefix(line, "go "); only != line {
				run = nil
				for _, name := range strings.Split(only, ",") {
					run = append(run, functions[name])
				}
			}
			before := read(names)
			deadline := time.Now().Add(*duration)
			rounds := 0
			for time.Now().Before(deadline) {
				for i := 0; i < 64; i++ {
					for _, f := range run {
						f()
					}
				}
				rounds += 64
			}
			after := read(names)
			out, _ := json.Marshal(map[string]any{
				"rounds":   rounds,
				"counters": map[string]uint64{names[0]: after[0] - before[0], names[1]: after[1] - before[1]},
			})
			fmt.Println(string(out))
		case strings.HasPrefix(line, "heap "):
			file, err := os.Create(strings.TrimPrefix(line, "heap "))
			if err == nil {
				err = pprof.Lookup("heap").WriteTo(file, 0)
				file.Close()
			}
			fmt.Println("heap written", err)
		case line == "exit":
			return
		}
	}
}
