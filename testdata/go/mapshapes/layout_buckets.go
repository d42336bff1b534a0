//go:build !go1.24

// Bucket hash maps, Go 1.19 through 1.23 (src/runtime/map.go). The structs mirror the
// runtime's, so the compiler, not this file, computes their offsets.
package main

import (
	"fmt"
	"unsafe"
)

type hmap struct {
	count      int
	flags      uint8
	B          uint8
	noverflow  uint16
	hash0      uint32
	buckets    unsafe.Pointer
	oldbuckets unsafe.Pointer
	nevacuate  uintptr
	extra      unsafe.Pointer
}

type maptype struct {
	typ        rtype
	key        *rtype
	elem       *rtype
	bucket     *rtype
	hasher     unsafe.Pointer
	keysize    uint8
	elemsize   uint8
	bucketsize uint16
	flags      uint32
}

const (
	bucketCnt  = 8
	minTopHash = 5 // tophash values below are empty or evacuated markers
	hmapSize   = unsafe.Sizeof(hmap{})
)

// watch counts growths (a new bucket array replacing one that existed: hashGrow) and
// overflow-bucket allocations (noverflow is exact below B=16 and resets at each growth), as
// mapscope counts them: only events of maps holding at least minTrackedEntries entries before
// the insert or delete that caused them.
type watch struct {
	h                  *hmap
	buckets            unsafe.Pointer
	noverflow          uint16
	count              int
	growths, overflows int
}

func newWatch(m any) *watch {
	h := (*hmap)(header(m))
	return &watch{h: h, buckets: h.buckets, noverflow: h.noverflow, count: h.count}
}

//go:noinline
func (w *watch) step() {
	h := w.h
	if h.B >= 16 {
		panic("noverflow is approximate from B=16: keep the test maps smaller")
	}
	counted := w.count >= minTrackedEntries
	overflows := int(h.noverflow) - int(w.noverflow)
	if h.buckets != w.buckets && w.buckets != nil {
		if counted {
			w.growths++
		}
		overflows = int(h.noverflow) // noverflow restarted at the growth
	}
	if counted {
		w.overflows += overflows
	}
	w.buckets = h.buckets
	w.noverflow = h.noverflow
	w.count = h.count
}

func bucketAt(array unsafe.Pointer, i uintptr, size uintptr) unsafe.Pointer {
	return unsafe.Pointer(uintptr(array) + i*size)
}

func overflowOf(b unsafe.Pointer, size uintptr) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(uintptr(b) + size - 8))
}

// chain walks one bucket and its overflow chain: entries, overflow buckets, and how many of
// those were allocated on their own rather than taken from the array's preallocated spares.
func chain(b unsafe.Pointer, size uintptr, arrayStart, arrayEnd uintptr) (entries, length, separate int) {
	for first := true; b != nil; first = false {
		if !first {
			length++
			if uintptr(b) < arrayStart || uintptr(b) >= arrayEnd {
				separate++
			}
		}
		tophash := (*[bucketCnt]uint8)(b)
		for _, top := range tophash {
			if top >= minTopHash {
				entries++
			}
		}
		b = overflowOf(b, size)
	}
	return
}

// arrayBuckets is how many buckets makeBucketArray allocates for 2^b: from b=4 on, 1/16 more as
// preallocated overflow buckets.
func arrayBuckets(b uint8) uintptr {
	n := uintptr(1) << b
	if b >= 4 {
		n += uintptr(1) << (b - 4)
	}
	return n
}

func inspect(m any) shape {
	h := (*hmap)(header(m))
	t := (*maptype)(typeOf(m))
	size := uintptr(t.bucketsize)
	s := shape{
		Layout:        "buckets",
		B:             int(h.B),
		Growing:       h.oldbuckets != nil,
		BucketEntries: map[int]int{},
		ChainLengths:  map[int]int{},
	}
	s.Bytes = uint64(hmapSize)
	walk := func(array unsafe.Pointer, b uint8, evacuatedOnly bool, oldB uint8) {
		n := uintptr(1) << b
		start := uintptr(array)
		end := start + arrayBuckets(b)*size
		s.Bytes += uint64(arrayBuckets(b) * size)
		for i := uintptr(0); i < n; i++ {
			bucket := bucketAt(array, i, size)
			if evacuatedOnly && (*[bucketCnt]uint8)(bucket)[0] > 1 && (*[bucketCnt]uint8)(bucket)[0] < minTopHash {
				continue // an old bucket already moved to the new array
			}
			entries, length, separate := chain(bucket, size, start, end)
			s.Entries += entries
			s.BucketEntries[entries]++
			s.ChainLengths[length]++
			s.CapacitySlots += uint64(bucketCnt * (1 + length))
			s.Bytes += uint64(separate) * uint64(size)
		}
	}
	if h.buckets != nil {
		walk(h.buckets, h.B, false, 0)
	}
	if h.oldbuckets != nil {
		oldB := h.B
		if !sameSizeGrow(h) {
			oldB--
		}
		walk(h.oldbuckets, oldB, true, oldB)
	}
	if s.Entries != h.count {
		panic(fmt.Sprintf("walked %d entries, header says %d", s.Entries, h.count))
	}
	return s
}

func sameSizeGrow(h *hmap) bool { return h.flags&8 != 0 }
