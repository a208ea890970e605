// Command taskd-shim supervises one container for taskd (or containerd),
// speaking containerd's runtime v2 shim protocol. See package shim.
package main

import (
	"os"

	"github.com/flotilla/flotilla/taskd/shim"
)

func main() {
	os.Exit(shim.Main(os.Args[1:]))
}
