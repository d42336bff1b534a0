// mapshapes builds Go maps of known shapes and reports their internals as the runtime lays
// them out, computed in-process through unsafe: the oracle for mapscope's map snapshots.
//
// Protocol on stdin/stdout, one line each:
//
//	-> "ready"          after start-up
//	<- "build"          build every shape, counting its growths and overflow-bucket allocations
//	                    by watching the map header after each insert or delete
//	-> {json report}    each map's internals (see shape)
//	<- "inspect"        the same report again, without touching the maps
//	<- "free NAME"      drop the map NAME, collect it and reuse its memory; answer "reused"
//	<- "churn NAME"     keep inserting into and deleting from NAME in the background; "ok"
//	<- "load NAME L A I"  keep looking up L, assigning to existing keys A and ranging over the
//	                    whole map I times per second in NAME (no growth); "ok"
//	<- "counted MS S"   -> {"lookups": …, "assigns": …, "iterations": …}: per second done by the
//	                    load in the S seconds from Unix millisecond MS (a discovery window's
//	                    span): the load keeps pace on average, but not over every stretch of
//	                    a busy machine
//	<- "use"            keep reading every map (and rewriting existing keys of grown) a few
//	                    hundred times a second from main.useMaps, as a service uses maps it
//	                    built long ago; "ok"
//	<- "exit" or EOF    exit 0
//
// Each shape is built in its own function, which is the map's site as mapscope names it.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"reflect"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// shape is one map's internals, as mapscope must see them.
type shape struct {
	Name     string `json:"name"`
	Function string `json:"function"`
	// Address of the map header (*hmap or *maps.Map).
	Address uint64 `json:"address"`
	Layout  string `json:"layout"` // "buckets" or "swiss"
	Entries int    `json:"entries"`
	// Capacity in slots: bucket maps, 8 per bucket reachable from the bucket array (including
	// overflow chains); swiss tables, the tables' capacities (8 for a one-group small map).
	CapacitySlots uint64 `json:"capacity_slots"`
	Bytes         uint64 `json:"bytes"`
	// Entries per bucket including its overflow chain (bucket maps) or full slots per group
	// (swiss): value -> how many buckets/groups.
	BucketEntries map[int]int `json:"bucket_entries"`
	// Overflow buckets chained to each bucket (bucket maps).
	ChainLengths map[int]int `json:"chain_lengths,omitempty"`
	// Tombstones per group (swiss).
	Tombstones map[int]int `json:"tombstones,omitempty"`
	// Growths and overflow-bucket allocations, counted while building.
	Growths   int `json:"growths"`
	Overflows int `json:"overflows"`
	// Bucket maps: log2 of the bucket count, and whether a growth is still evacuating.
	B       int  `json:"b,omitempty"`
	Growing bool `json:"growing,omitempty"`
	// Swiss: the directory's length and its distinct tables.
	DirLen int `json:"dir_len,omitempty"`
	Tables int `json:"tables,omitempty"`
	// Bucket maps outside a growth: the buckets a uniformly random hash would give k entries,
	// entries·Binomial(entries, 1/buckets) for k = 0..40, computed here from the map's own
	// count and B (the expectation mapscope must draw beside the observed spread).
	RandomHash map[int]float64 `json:"random_hash,omitempty"`
	// The map's type as reflect names it, and its key and element sizes.
	Type      string  `json:"type"`
	KeyBytes  uintptr `json:"key_bytes"`
	ElemBytes uintptr `json:"elem_bytes"`
}

// labelSet is a named map type: its name is the type's, not its map[K]V spelling.
type labelSet map[string]string

var (
	mu     sync.Mutex
	maps   = map[string]any{}
	counts = map[string]*watch{}
	sites  = map[string]string{}
	// Keeps freed-map garbage alive long enough to land where the map was.
	reuse []*junk
)

// mapscope ignores the growth and overflow events of maps with fewer entries
// (profiler-common/src/maps.rs, MIN_TRACKED_ENTRIES).
const minTrackedEntries = 128

const (
	grownN    = 150000
	presizedN = 60000
	shrunkN   = 80000
	keptN     = 4000
	stringsN  = 40000
)

//go:noinline
func buildGrown() {
	m := map[int]int{}
	w := newWatch(m)
	for i := 0; i < grownN; i++ {
		m[i*7919] = i
		w.step()
	}
	keep("grown", "main.buildGrown", m, w)
}

//go:noinline
func buildPresized() {
	m := make(map[int]int, presizedN)
	w := newWatch(m)
	for i := 0; i < presizedN; i++ {
		m[i*31+7] = i
		w.step()
	}
	keep("presized", "main.buildPresized", m, w)
}

//go:noinline
func buildShrunk() {
	// Three-word values: a bigger bucket or slot than the other maps'.
	m := map[int][3]uint64{}
	w := newWatch(m)
	for i := 0; i < shrunkN; i++ {
		m[i] = [3]uint64{uint64(i)}
		w.step()
	}
	for i := keptN; i < shrunkN; i++ {
		delete(m, i)
		w.step()
	}
	keep("shrunk", "main.buildShrunk", m, w)
}

//go:noinline
func buildStrings() {
	m := labelSet{}
	w := newWatch(m)
	for i := 0; i < stringsN; i++ {
		m[fmt.Sprintf("key-%d", i)] = "v"
		w.step()
	}
	keep("strings", "main.buildStrings", m, w)
}

func keep(name, function string, m any, w *watch) {
	mu.Lock()
	defer mu.Unlock()
	maps[name] = m
	counts[name] = w
	sites[name] = function
}

// rtype mirrors the runtime's type descriptor (_type, abi.Type), the same in every release
// here: the first 48 bytes of a map type.
type rtype struct {
	size       uintptr
	ptrdata    uintptr
	hash       uint32
	tflag      uint8
	align      uint8
	fieldAlign uint8
	kind       uint8
	equal      unsafe.Pointer
	gcdata     *byte
	str        int32
	ptrToThis  int32
}

// header is the map's runtime header: a map value is a pointer to it.
func header(m any) unsafe.Pointer {
	return (*[2]unsafe.Pointer)(unsafe.Pointer(&m))[1]
}

// typeOf is the map's runtime type descriptor.
func typeOf(m any) unsafe.Pointer {
	return (*[2]unsafe.Pointer)(unsafe.Pointer(&m))[0]
}

func report() {
	mu.Lock()
	defer mu.Unlock()
	var out []shape
	for _, name := range []string{"grown", "presized", "shrunk", "strings"} {
		m, ok := maps[name]
		if !ok {
			continue
		}
		s := inspect(m)
		s.Name = name
		s.Function = sites[name]
		s.Address = uint64(uintptr(header(m)))
		s.Growths = counts[name].growths
		s.Overflows = counts[name].overflows
		t := reflect.TypeOf(m)
		s.Type, s.KeyBytes, s.ElemBytes = t.String(), t.Key().Size(), t.Elem().Size()
		if s.Layout == "buckets" && !s.Growing {
			s.RandomHash = binomial(s.Entries, 1<<s.B)
		}
		out = append(out, s)
	}
	b, err := json.Marshal(map[string]any{"go_version": runtime.Version(), "maps": out})
	if err != nil {
		panic(err)
	}
	fmt.Println(string(b))
}

// binomial is, for k = 0..40, how many of `buckets` buckets hold k of n keys hashed uniformly:
// buckets · C(n, k) · p^k · (1-p)^(n-k), p = 1/buckets, in log space.
func binomial(n, buckets int) map[int]float64 {
	out := map[int]float64{}
	p := 1 / float64(buckets)
	lgN, _ := math.Lgamma(float64(n + 1))
	for k := 0; k <= 40 && k <= n; k++ {
		lgK, _ := math.Lgamma(float64(k + 1))
		lgNK, _ := math.Lgamma(float64(n - k + 1))
		logP := lgN - lgK - lgNK + float64(k)*math.Log(p) + float64(n-k)*math.Log1p(-p)
		out[k] = float64(buckets) * math.Exp(logP)
	}
	return out
}

// junk has the size of a map header (48 bytes) and, like it, a pointer: the runtime keeps
// objects with and without pointers in different spans.
type junk struct {
	next *junk
	fill [5]uint64
}

// free drops a map and allocates garbage in its header's size class until the header's memory
// holds something else (checked through its old address), so mapscope finds the memory it
// tracked freed and reused. Answers "reused" or, if the runtime never reused it, "not reused".
func free(name string) string {
	mu.Lock()
	m := maps[name]
	delete(maps, name)
	delete(counts, name) // its watch points into the map too
	mu.Unlock()
	address := uintptr(header(m))
	original := *(*uint64)(header(m))
	m = nil
	for round := 0; round < 50; round++ {
		runtime.GC()
		debug.FreeOSMemory()
		for i := 0; i < 20000; i++ {
			b := &junk{}
			for j := range b.fill {
				b.fill[j] = 0xA5A5A5A5A5A5A5A5
			}
			reuse = append(reuse, b)
		}
		// Reading freed heap memory is safe here: the heap arena stays mapped.
		if *(*uint64)(unsafe.Pointer(address)) != original {
			return "reused"
		}
	}
	return "not reused"
}

func churn(name string) {
	mu.Lock()
	m, ok := maps[name].(map[int]int)
	mu.Unlock()
	if !ok {
		return
	}
	go func() {
		for i := 0; ; i++ {
			mu.Lock()
			k := 1 << 40 + i%50000
			m[k] = i
			delete(m, k-1000)
			mu.Unlock()
		}
	}()
}

// loadDone is what the load had done by a time; samples are in time order.
type loadDone struct {
	at                         time.Time
	looked, assigned, iterated int
}

var loadSamples []loadDone // under mu

// load keeps operating on existing keys of NAME (no growth) at paced rates, as a service under
// steady traffic does: every millisecond it catches up with the clock, so a late tick does not
// lower the rates over the long run.
func load(name string, lookups, assigns, iterations int) {
	mu.Lock()
	m, ok := maps[name].(map[int]int)
	mu.Unlock()
	if !ok {
		return
	}
	started := time.Now()
	go func() {
		ticker := time.NewTicker(time.Millisecond)
		var looked, assigned, iterated int
		sink := 0
		for {
			<-ticker.C
			seconds := time.Since(started).Seconds()
			mu.Lock()
			// Sampled every few operations, not only per tick: a tick late on a busy machine
			// catches up in a burst, which a window may end in the middle of.
			done := func() {
				loadSamples = append(loadSamples, loadDone{time.Now(), looked, assigned, iterated})
			}
			for ; looked < int(seconds*float64(lookups)); looked++ {
				sink += m[(looked%grownN)*7919]
				if looked%16 == 0 {
					done()
				}
			}
			for ; assigned < int(seconds*float64(assigns)); assigned++ {
				m[(assigned%grownN)*7919] = assigned
				if assigned%16 == 0 {
					done()
				}
			}
			for ; iterated < int(seconds*float64(iterations)); iterated++ {
				for k := range m {
					sink += k
					break
				}
				done()
			}
			done()
			mu.Unlock()
		}
	}()
}

// doneBy is what the load had done by `at`: the last sample taken then or before.
func doneBy(at time.Time) loadDone {
	i := sort.Search(len(loadSamples), func(i int) bool { return loadSamples[i].at.After(at) })
	if i == 0 {
		return loadDone{}
	}
	return loadSamples[i-1]
}

// counted prints the load's rates over the span of `seconds` from Unix millisecond `fromMs`.
func counted(fromMs int64, seconds float64) {
	from := time.UnixMilli(fromMs)
	mu.Lock()
	start, end := doneBy(from), doneBy(from.Add(time.Duration(seconds*float64(time.Second))))
	mu.Unlock()
	fmt.Printf("{\"lookups\":%f,\"assigns\":%f,\"iterations\":%f}\n",
		float64(end.looked-start.looked)/seconds, float64(end.assigned-start.assigned)/seconds,
		float64(end.iterated-start.iterated)/seconds)
}

// useMaps reads every map and rewrites existing keys of grown, 200 rounds a second: the maps'
// only activity once built, so only their use reveals them.
//
//go:noinline
func useMaps() {
	mu.Lock()
	grown := maps["grown"].(map[int]int)
	presized := maps["presized"].(map[int]int)
	shrunk := maps["shrunk"].(map[int][3]uint64)
	strs := maps["strings"].(labelSet)
	mu.Unlock()
	go func() {
		sink := 0
		for i := 0; ; i++ {
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			sink += grown[(i%grownN)*7919] + presized[(i%presizedN)*31+7] + int(shrunk[i%keptN][0])
			sink += len(strs[fmt.Sprintf("key-%d", i%stringsN)])
			grown[(i%grownN)*7919] = i
			mu.Unlock()
		}
	}()
}

func main() {
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		words := strings.Fields(in.Text())
		if len(words) == 0 {
			continue
		}
		switch words[0] {
		case "build":
			buildGrown()
			buildPresized()
			buildShrunk()
			buildStrings()
			report()
		case "inspect":
			report()
		case "free":
			fmt.Println(free(words[1]))
		case "churn":
			churn(words[1])
			fmt.Println("ok")
		case "load":
			var lookups, assigns, iterations int
			fmt.Sscan(words[2], &lookups)
			fmt.Sscan(words[3], &assigns)
			fmt.Sscan(words[4], &iterations)
			load(words[1], lookups, assigns, iterations)
			fmt.Println("ok")
		case "counted":
			var fromMs int64
			var seconds float64
			fmt.Sscan(words[1], &fromMs)
			fmt.Sscan(words[2], &seconds)
			counted(fromMs, seconds)
		case "use":
			useMaps()
			fmt.Println("ok")
		case "exit":
			return
		}
	}
}
