package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// shimPid finds the shim process serving container id.
func shimPid(t testing.TB, s *stack, id string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		cl, err := os.ReadFile(p)
		if err == nil && bytes.Contains(cl, []byte("-namespace\x00"+s.ns+"\x00")) && bytes.Contains(cl, []byte("-id\x00"+id+"\x00")) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no shim for %s", id)
	return 0
}
