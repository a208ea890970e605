package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/flotilla/flotilla/snapshotd/sdk"
)

// stateFile, under snapshotd's root, lists the backends and how to reach
// their running processes again.
const stateFile = "snapshotters.json"

type savedBackend struct {
	Name     string        `json:"name"`
	Path     string        `json:"path"`
	Reattach *sdk.Reattach `json:"reattach,omitempty"`
	// Empty: it held no snapshots when its process was stopped (or it
	// never had one), so it need not start until it is used.
	Empty bool `json:"empty,omitempty"`
}

type savedState struct {
	Snapshotters []savedBackend `json:"snapshotters"`
}

// loadState reads the saved backends; ok is false on first start.
func loadState(root string) (st savedState, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(root, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return savedState{}, false, nil
	}
	if err != nil {
		return savedState{}, false, fmt.Errorf("read snapshotters state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return savedState{}, false, fmt.Errorf("parse %s: %w", filepath.Join(root, stateFile), err)
	}
	return st, true, nil
}

// saveState writes the backends atomically.
func saveState(root string, st savedState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(root, stateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save snapshotters state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save snapshotters state: %w", err)
	}
	return nil
}
