//go:build mapscope_cgo

// Built with -tags mapscope_cgo, gcload links libc through cgo: the dynamically linked, externally
// linked kind of Go binary, whose C start-up code sits before Go's text.
package main

// #include <stdlib.h>
// #include <unistd.h>
import "C"

import "fmt"

func init() {
	_ = C.getpid()
	cMalloc = func() string {
		// 10,000 malloc and free pairs of 100 to 149 bytes, through C's allocator.
		var bytes uint64
		for i := 0; i < 10000; i++ {
			n := 100 + i%50
			p := C.malloc(C.size_t(n))
			C.free(p)
			bytes += uint64(n)
		}
		return fmt.Sprintf(`{"objects":10000,"bytes":%d,"frees":10000,"reallocs":0}`, bytes)
	}
}
