// mapvars holds maps in package-level variables and reports where they are, computed
// in-process: the oracle for mapscope's finder of map variables in the binary (gobin/variables).
//
// On start it prints one JSON line, a list with one entry per map variable (see variable), then
// "ready", then waits for stdin to close and exits 0.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"unsafe"
)

// labelSet is a named map type: the variable's type name is "main.labelSet".
type labelSet map[string]string

var (
	// Initialized by its declaration, filled in main.
	cache = map[string]int{}
	// A named map type.
	labels = labelSet{"region": "eu"}
	// Assigned in init.
	grid map[int][3]uint64
	// Left nil.
	unused map[string]bool
	// Not maps: they must not be found.
	counter   = 7
	greetings = []string{"hello"}
	lookup    = struct{ inner map[string]int }{inner: map[string]int{}}
)

func init() {
	grid = make(map[int][3]uint64, 16)
}

// variable is what mapscope must find about one map variable.
type variable struct {
	Name string `json:"name"`
	// Where the variable is: it holds the map header pointer.
	Address uint64 `json:"address"`
	// The map header pointer it holds (0 for a nil map).
	Header uint64 `json:"header"`
	// The map's type descriptor: the first word of the interface holding the map.
	TypeDescriptor uint64 `json:"type_descriptor"`
	// reflect's name for the type.
	Type string `json:"type"`
	// len(m).
	Entries int `json:"entries"`
}

func describe(name string, address unsafe.Pointer, m any) variable {
	words := (*[2]unsafe.Pointer)(unsafe.Pointer(&m))
	return variable{
		Name:           name,
		Address:        uint64(uintptr(address)),
		Header:         uint64(uintptr(*(*unsafe.Pointer)(address))),
		TypeDescriptor: uint64(uintptr(words[0])),
		Type:           reflect.TypeOf(m).String(),
		Entries:        reflect.ValueOf(m).Len(),
	}
}

func main() {
	for i := 0; i < 200; i++ {
		cache[fmt.Sprint("key", i)] = i
		grid[i] = [3]uint64{uint64(i), 1, 2}
	}
	lookup.inner["x"] = counter + len(greetings)
	report := []variable{
		describe("main.cache", unsafe.Pointer(&cache), cache),
		describe("main.labels", unsafe.Pointer(&labels), labels),
		describe("main.grid", unsafe.Pointer(&grid), grid),
		describe("main.unused", unsafe.Pointer(&unused), unused),
	}
	line, err := json.Marshal(report)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(line))
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}
