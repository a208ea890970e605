// Command flotctl is Flotilla's command-line client.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "flotctl:", err)
		os.Exit(1)
	}
}
