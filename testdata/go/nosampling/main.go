// nosampling allocates but never references runtime.MemProfile (no runtime/pprof, no
// net/http/pprof), so the Go linker turns the runtime's allocation sampling off:
// runtime.MemProfileRate is 0. Prints "ready", allocates until "exit" arrives on stdin.
package main

import (
	"bufio"
	"fmt"
	"os"
)

var sink []byte

func main() {
	go func() {
		for i := 0; ; i++ {
			sink = make([]byte, 1024+i%1024)
		}
	}()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "exit" {
			return
		}
	}
}
