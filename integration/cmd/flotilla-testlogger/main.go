// Command flotilla-testlogger is a logging binary for binary:// log URIs, as
// containerd's shims run them: the container's stdout comes on fd 3, its
// stderr on fd 4, and closing fd 5 says the logger is ready. It appends
// each stream to <dir>/<namespace>-<id>.stdout and .stderr, where dir is
// the value of its "dir" argument (the URI binary:///path/flotilla-testlogger?dir=/some/dir
// gives the arguments "dir /some/dir"), and exits once both streams end.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "flotilla-testlogger:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	dir := ""
	for i := 0; i+1 < len(args); i += 2 {
		if args[i] == "dir" {
			dir = args[i+1]
		}
	}
	if dir == "" {
		return fmt.Errorf("no dir argument in %q", args)
	}
	// The shim sends SIGTERM once the output is closed; drain to the end
	// of both streams before exiting.
	signal.Ignore(syscall.SIGTERM)
	name := os.Getenv("CONTAINER_NAMESPACE") + "-" + os.Getenv("CONTAINER_ID")
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for fd, ext := range map[uintptr]string{3: ".stdout", 4: ".stderr"} {
		in := os.NewFile(fd, ext)
		out, err := os.OpenFile(filepath.Join(dir, name+ext), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer out.Close()
			if _, err := io.Copy(out, in); err != nil {
				errs <- err
			}
		}()
	}
	os.NewFile(5, "ready").Close()
	wg.Wait()
	close(errs)
	return <-errs
}
