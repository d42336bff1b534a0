//go:build go1.24

// Swiss-table maps, Go 1.24 and later (src/internal/runtime/maps). The structs mirror the
// runtime's (the fields read here are the same in 1.24 through 1.27), so the compiler, not this
// file, computes their offsets.
package main

import (
	"fmt"
	"unsafe"
)

type swissMap struct {
	used        uint64
	seed        uintptr
	dirPtr      unsafe.Pointer
	dirLen      int
	globalDepth uint8
	globalShift uint8
	writing     uint8
	_           uint8
	clearSeq    uint64
}

type table struct {
	used       uint16
	capacity   uint16
	growthLeft uint16
	localDepth uint8
	index      int
	groups     unsafe.Pointer
	lengthMask uint64
}

// The prefix shared by abi.SwissMapType (1.24, 1.25) and abi.MapType (1.26+).
type maptype struct {
	typ       rtype
	key       *rtype
	elem      *rtype
	group     *rtype
	hasher    unsafe.Pointer
	groupSize uintptr
}

const (
	groupSlots  = 8
	ctrlDeleted = 0xfe
	mapSize     = unsafe.Sizeof(swissMap{})
	tableSize   = unsafe.Sizeof(table{})
)

// tables is the directory's distinct tables, in directory order.
func tables(m *swissMap) []*table {
	var out []*table
	for i := 0; i < m.dirLen; i++ {
		t := *(**table)(unsafe.Pointer(uintptr(m.dirPtr) + uintptr(i)*8))
		if len(out) == 0 || out[len(out)-1] != t {
			out = append(out, t)
		}
	}
	return out
}

// capacity is the slots the map has: 8 for a small map's group, else its tables' capacities.
func capacity(m *swissMap) uint64 {
	if m.dirLen == 0 {
		if m.dirPtr == nil {
			return 0
		}
		return groupSlots
	}
	var total uint64
	for _, t := range tables(m) {
		total += uint64(t.capacity)
	}
	return total
}

// watch counts growths: every grow, split or small-to-table conversion adds capacity (a grown
// table doubles, a split one becomes two), as mapscope counts them: only events of maps holding
// at least minTrackedEntries entries before the insert that caused them (so never the
// small-to-table conversion, at 8).
type watch struct {
	m                  *swissMap
	capacity           uint64
	count              uint64
	growths, overflows int
}

func newWatch(m any) *watch {
	h := (*swissMap)(header(m))
	return &watch{m: h, capacity: capacity(h), count: h.used}
}

//go:noinline
func (w *watch) step() {
	now := capacity(w.m)
	if now > w.capacity && w.count >= minTrackedEntries {
		w.growths++
	}
	w.capacity = now
	w.count = w.m.used
}

func control(group unsafe.Pointer) [groupSlots]uint8 {
	return *(*[groupSlots]uint8)(group)
}

func inspect(m any) shape {
	h := (*swissMap)(header(m))
	t := (*maptype)(typeOf(m))
	groupSize := uint64(t.groupSize)
	s := shape{
		Layout:        "swiss",
		BucketEntries: map[int]int{},
		Tombstones:    map[int]int{},
		DirLen:        h.dirLen,
		Bytes:         uint64(mapSize),
	}
	group := func(g unsafe.Pointer) int {
		full, deleted := 0, 0
		for _, c := range control(g) {
			if c&0x80 == 0 {
				full++
			} else if c == ctrlDeleted {
				deleted++
			}
		}
		s.BucketEntries[full]++
		s.Tombstones[deleted]++
		s.Entries += full
		return full
	}
	if h.dirLen == 0 {
		if h.dirPtr != nil {
			group(h.dirPtr)
			s.CapacitySlots = groupSlots
			s.Bytes += groupSize
		}
	} else {
		s.Bytes += uint64(h.dirLen) * 8
		for _, tb := range tables(h) {
			s.Tables++
			groups := tb.lengthMask + 1
			s.Bytes += uint64(tableSize) + groups*groupSize
			s.CapacitySlots += uint64(tb.capacity)
			full := 0
			for i := uint64(0); i < groups; i++ {
				full += group(unsafe.Pointer(uintptr(tb.groups) + uintptr(i*groupSize)))
			}
			if full != int(tb.used) {
				panic(fmt.Sprintf("table counted %d, says %d", full, tb.used))
			}
		}
	}
	if uint64(s.Entries) != h.used {
		panic(fmt.Sprintf("walked %d entries, header says %d", s.Entries, h.used))
	}
	return s
}
