// symtest prints, for stacks captured at known places (inside inlined calls, a method, a
// closure, generic functions), what the Go runtime itself says they are: one JSON line per
// stack, with runtime.Callers' PCs and the frame runtime.CallersFrames gives for each PC.
//
// runtime.Callers already splits inlined calls into extra PCs, one per inlined frame; the first
// PC of each physical frame is its real return address. mapscope, walking frame pointers, sees
// only return addresses and expands inlining itself: the frames it gives for one return address
// must equal the runtime's frames for that PC and the extra PCs that follow it.
package main

import (
	"encoding/json"
	"fmt"
	"runtime"
)

type frame struct {
	Function string `json:"function"`
	File     string `json:"file"`
	Line     int    `json:"line"`
}

type stack struct {
	PCs    []uint64 `json:"pcs"`
	Frames []frame  `json:"frames"`
}

//go:noinline
func capture() []uintptr {
	pcs := make([]uintptr, 64)
	return pcs[:runtime.Callers(2, pcs)]
}

// Small enough to be inlined into their callers.
func inlinedLeaf() []uintptr   { return capture() }
func inlinedMiddle() []uintptr { return inlinedLeaf() }

//go:noinline
func outer() []uintptr { return inlinedMiddle() }

type store struct{ n int }

//go:noinline
func (s *store) method() []uintptr { s.n++; return inlinedLeaf() }

//go:noinline
func generic[T any](value T) []uintptr { _ = value; return capture() }

func main() {
	var all [][]uintptr
	all = append(all, outer())
	all = append(all, (&store{}).method())
	all = append(all, generic[int](1), generic[string]("x"))
	closure := func() []uintptr { return capture() }
	all = append(all, closure())
	for _, pcs := range all {
		var s stack
		for _, pc := range pcs {
			// One PC at a time gives exactly that PC's own frame.
			f, _ := runtime.CallersFrames([]uintptr{pc}).Next()
			s.PCs = append(s.PCs, uint64(pc))
			s.Frames = append(s.Frames, frame{f.Function, f.File, f.Line})
		}
		out, _ := json.Marshal(s)
		fmt.Println(string(out))
	}
}
