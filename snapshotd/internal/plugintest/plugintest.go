// Package plugintest builds the snapshotter plugins for tests that run them
// through the real go-plugin boundary.
package plugintest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
)

// Names are the backends this module ships, by the name snapshotd gives them.
var Names = []string{"overlayfs", "native"}

var (
	once  sync.Once
	dir   string
	built error
)

// Binaries returns the directory holding snapshotter-<name> for every
// backend: $FLOTILLA_BIN when it holds them (make test builds them there),
// otherwise a temporary directory they are built into once per test binary.
// Call Cleanup from TestMain to remove it.
func Binaries() (string, error) {
	once.Do(func() {
		if bin := os.Getenv("FLOTILLA_BIN"); bin != "" {
			if _, err := os.Stat(filepath.Join(bin, "snapshotter-native")); err == nil {
				dir = bin
				return
			}
		}
		dir, built = os.MkdirTemp("", "snapshotter-plugins-")
		if built != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		module := filepath.Join(filepath.Dir(file), "..", "..")
		args := []string{"build", "-o", dir + "/"}
		for _, n := range Names {
			args = append(args, fmt.Sprintf("./plugins/%s/cmd/snapshotter-%s", n, n))
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = module
		if out, err := cmd.CombinedOutput(); err != nil {
			built = fmt.Errorf("build plugins: %v\n%s", err, out)
		}
	})
	return dir, built
}

// Path returns the executable of backend name.
func Path(name string) (string, error) {
	d, err := Binaries()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "snapshotter-"+name), nil
}

// Cleanup removes the plugins built by Binaries.
func Cleanup() {
	if dir != "" && dir != os.Getenv("FLOTILLA_BIN") {
		os.RemoveAll(dir)
	}
}
