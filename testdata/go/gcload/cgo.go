//go:build mapscope_cgo

// Built with -tags mapscope_cgo, gcload links libc through cgo: the dynamically linked, externally
// linked kind of Go binary, whose C start-up code sits before Go's text.
package main

// #include <unistd.h>
import "C"

func init() {
	_ = C.getpid()
}
