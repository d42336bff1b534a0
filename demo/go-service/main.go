// mapscope-demo is a small stand-in for a Go service, for `cargo xtask run`: workers handle
// fake requests that build maps and JSON, a bounded cache keeps some of the results alive, and
// a health reporter reads MemStats now and then (a non-GC stop-the-world). It runs until
// interrupted and prints one line a few seconds apart so you can see it is alive.
package main

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"
)

type order struct {
	ID    int               `json:"id"`
	Items map[string]int    `json:"items"`
	Tags  []string          `json:"tags"`
	Meta  map[string]string `json:"meta"`
}

type cache struct {
	mu      sync.Mutex
	entries map[int][]byte
	order   []int
	limit   int
}

func (c *cache) put(id int, blob []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.order) >= c.limit {
		delete(c.entries, c.order[0])
		c.order = c.order[1:]
	}
	c.entries[id] = blob
	c.order = append(c.order, id)
}

func handle(id int, r *rand.Rand) []byte {
	o := order{ID: id, Items: map[string]int{}, Meta: map[string]string{}}
	for i := 0; i < 5+r.Intn(20); i++ {
		o.Items[fmt.Sprintf("sku-%d", r.Intn(1000))] = 1 + r.Intn(5)
		o.Tags = append(o.Tags, fmt.Sprintf("tag-%d", i))
	}
	o.Meta["region"] = "eu-west"
	blob, _ := json.Marshal(o)
	return blob
}

func main() {
	c := &cache{entries: map[int][]byte{}, limit: 20000}
	var served sync.Map
	for w := 0; w < 4; w++ {
		go func(w int) {
			r := rand.New(rand.NewSource(int64(w)))
			n := 0
			for id := w; ; id += 4 {
				c.put(id, handle(id, r))
				n++
				if n%1000 == 0 {
					served.Store(w, n)
					time.Sleep(time.Millisecond) // leave the CPU some slack
				}
			}
		}(w)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	tick := time.NewTicker(5 * time.Second)
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			total := 0
			served.Range(func(_, v any) bool { total += v.(int); return true })
			fmt.Printf("demo: %d requests, %d GC cycles, heap %d MiB\n", total, m.NumGC, m.HeapAlloc>>20)
		}
	}
}
