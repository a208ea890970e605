// Command flotctl is Flotilla's command-line client.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/flotilla/flotilla/flotctl/client"
)

func main() {
	root, g := newRootCommand()
	if err := root.Execute(); err != nil {
		var exit *exitError
		if errors.As(err, &exit) {
			os.Exit(exit.code)
		}
		fmt.Fprintln(os.Stderr, "flotctl:", oneLine(client.Explain(err, g.address, g.namespace).Error()))
		os.Exit(1)
	}
}

// exitError ends flotctl with a container's exit status, printing nothing.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// oneLine joins a multi-line error message (a server's wrapped errors) on
// one line, dropping lines that repeat the one before.
func oneLine(msg string) string {
	var parts []string
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || (len(parts) > 0 && (parts[len(parts)-1] == l || strings.HasSuffix(parts[len(parts)-1], ": "+l))) {
			continue
		}
		parts = append(parts, l)
	}
	return strings.Join(parts, "; ")
}
