// gcload is mapscope's test target: a GC-heavy program that reports, about the same window
// that mapscope observes, what the Go runtime itself counted (runtime/metrics and
// runtime.ReadMemStats).
//
// Protocol on stdin/stdout, one line each:
//
//	-> "ready"           after start-up; the program is idle (no GC) until told to go
//	<- "go"              run the load
//	-> {json report}     runtime counters for the load window
//	<- "heap FILE"       write the runtime's own heap profile (pprof) to FILE, answer "ok"
//	<- "exec"            exec its own executable again, same arguments (same PID, a new
//	                     program image); it then says "ready" again
//	<- "vitals"          -> {json}: every scalar runtime/metrics value, read before anything
//	                     else the command does, and MemStats' GC counts and GOMAXPROCS
//	<- "exit" or EOF     exit 0
//
// Writing heap profiles also keeps runtime.MemProfile reachable: without it the linker turns
// the runtime's allocation sampling off (MemProfileRate = 0).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"syscall"
	"sync"
	"time"
)

var (
	duration = flag.Duration("duration", 2*time.Second, "how long the allocation load runs")
	workers  = flag.Int("workers", 4, "allocating goroutines")
	forced   = flag.Int("forced-gcs", 20, "runtime.GC() calls during the load, besides natural GCs")
	exitCode = flag.Int("exit-code", 0, "exit status on \"exit\"")
	parked   = flag.Int("parked", 0, "goroutines started at start-up that block forever")
)

var names = []string{
	"/gc/cycles/total:gc-cycles",
	"/sched/pauses/total/gc:seconds",
	"/sched/pauses/total/other:seconds",
	"/sched/pauses/stopping/gc:seconds",
	"/sched/pauses/stopping/other:seconds",
	"/gc/pauses:seconds",
	"/gc/heap/allocs:bytes",
	"/gc/heap/allocs:objects",
	"/gc/cycles/forced:gc-cycles",
	"/gc/cycles/automatic:gc-cycles",
}

type histogram struct {
	Count uint64  `json:"count"`
	SumLo float64 `json:"sum_lo"`
	SumHi float64 `json:"sum_hi"`
	Known bool    `json:"known"`
}

type report struct {
	GoVersion       string               `json:"go_version"`
	NumGC           uint32               `json:"num_gc"`
	PauseTotalNs    uint64               `json:"pause_total_ns"`
	GCCycles        uint64               `json:"gc_cycles"`
	Histograms      map[string]histogram `json:"histograms"`
	Counters        map[string]uint64    `json:"counters"`
	ReadMemStatsSTW int                  `json:"read_mem_stats_stw"`
}

func sample() []metrics.Sample {
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	metrics.Read(s)
	return s
}

// delta of a histogram between two reads: count, and the bounds of its sum from bucket edges.
func delta(before, after metrics.Value) histogram {
	if after.Kind() != metrics.KindFloat64Histogram {
		return histogram{}
	}
	a := after.Float64Histogram()
	b := before.Float64Histogram()
	var h histogram
	h.Known = true
	for i, n := range a.Counts {
		d := n - b.Counts[i]
		h.Count += d
		lo, hi := a.Buckets[i], a.Buckets[i+1]
		if lo < 0 {
			lo = 0
		}
		if hi > 1e9 { // the last bucket is open-ended (+Inf)
			hi = lo
		}
		h.SumLo += float64(d) * lo
		h.SumHi += float64(d) * hi
	}
	return h
}

var sink [][]byte

// Every runtime/metrics sample, allocated once so that reading them allocates nothing.
var all = func() []metrics.Sample {
	descriptions := metrics.All()
	samples := make([]metrics.Sample, len(descriptions))
	for i, d := range descriptions {
		samples[i].Name = d.Name
	}
	return samples
}()

type histogramValue struct {
	Counts []uint64 `json:"counts"`
	// The bucket edges but the first and last (-Inf, +Inf), which JSON cannot carry.
	Edges []float64 `json:"edges"`
}

type vitals struct {
	Metrics     map[string]float64        `json:"metrics"`
	Histograms  map[string]histogramValue `json:"histograms"`
	NumGC       uint32             `json:"num_gc"`
	NumForcedGC uint32             `json:"num_forced_gc"`
	Gomaxprocs  int                `json:"gomaxprocs"`
}

// The runtime's own view now: the metrics first, before this goroutine allocates anything.
func readVitals() vitals {
	metrics.Read(all)
	v := vitals{
		Metrics:    map[string]float64{},
		Histograms: map[string]histogramValue{},
		Gomaxprocs: runtime.GOMAXPROCS(0),
	}
	for _, sample := range all {
		switch sample.Value.Kind() {
		case metrics.KindUint64:
			v.Metrics[sample.Name] = float64(sample.Value.Uint64())
		case metrics.KindFloat64:
			v.Metrics[sample.Name] = sample.Value.Float64()
		case metrics.KindFloat64Histogram:
			h := sample.Value.Float64Histogram()
			v.Histograms[sample.Name] = histogramValue{
				Counts: append([]uint64(nil), h.Counts...),
				Edges:  append([]float64(nil), h.Buckets[1:len(h.Buckets)-1]...),
			}
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	v.NumGC, v.NumForcedGC = ms.NumGC, ms.NumForcedGC
	return v
}

func load() {
	deadline := time.Now().Add(*duration)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			live := make([][]byte, 4096)
			for i := 0; time.Now().Before(deadline); i++ {
				live[i%len(live)] = make([]byte, 256+i%2048)
			}
			sink = append(sink[:0], live[0])
		}(w)
	}
	interval := *duration / time.Duration(*forced+1)
	for i := 0; i < *forced; i++ {
		time.Sleep(interval)
		runtime.GC()
	}
	wg.Wait()
	// Finish any cycle the load started, so every cycle in the window is complete.
	runtime.GC()
}

// Set by cgo.go in a cgo build: makes C allocations and reports them as JSON.
var cMalloc func() string

func main() {
	flag.Parse()
	block := make(chan struct{})
	for i := 0; i < *parked; i++ {
		go func() { <-block }()
	}
	runtime.GC()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "go":
			before := sample()
			var msBefore, msAfter runtime.MemStats
			runtime.ReadMemStats(&msBefore)
			load()
			runtime.ReadMemStats(&msAfter)
			after := sample()
			r := report{
				GoVersion:       runtime.Version(),
				NumGC:           msAfter.NumGC - msBefore.NumGC,
				PauseTotalNs:    msAfter.PauseTotalNs - msBefore.PauseTotalNs,
				Histograms:      map[string]histogram{},
				Counters:        map[string]uint64{},
				ReadMemStatsSTW: 2,
			}
			if after[0].Value.Kind() == metrics.KindUint64 {
				r.GCCycles = after[0].Value.Uint64() - before[0].Value.Uint64()
			}
			for i := 1; i < len(names); i++ {
				if after[i].Value.Kind() == metrics.KindUint64 {
					r.Counters[names[i]] = after[i].Value.Uint64() - before[i].Value.Uint64()
				} else {
					r.Histograms[names[i]] = delta(before[i].Value, after[i].Value)
				}
			}
			out, _ := json.Marshal(r)
			fmt.Println(string(out))
		case "vitals":
			out, _ := json.Marshal(readVitals())
			fmt.Println(string(out))
		case "cmalloc":
			// Built with cgo: C allocations the Go runtime does not see (cgo.go).
			if cMalloc == nil {
				fmt.Println(`{"error":"built without cgo"}`)
				continue
			}
			fmt.Println(cMalloc())
		case "exit":
			os.Exit(*exitCode)
		case "exec":
			err := syscall.Exec("/proc/self/exe", os.Args, os.Environ())
			fmt.Println("error:", err)
		default:
			if strings.HasPrefix(in.Text(), "heap ") {
				file := strings.TrimPrefix(in.Text(), "heap ")
				out, err := os.Create(file)
				if err == nil {
					err = pprof.Lookup("heap").WriteTo(out, 0)
					out.Close()
				}
				if err != nil {
					fmt.Println("error:", err)
				} else {
					fmt.Println("ok")
				}
			}
		}
	}
}
