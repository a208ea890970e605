package host

import (
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"
)

// removeStaleSockets removes the sockets in dir nobody listens on: those of
// plugins that were killed (a plugin that stops cleanly removes its own).
// A socket a running plugin serves answers the dial and stays, so plugins
// snapshotd adopts again keep theirs.
func removeStaleSockets(dir string, log *slog.Logger) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.Type()&fs.ModeSocket == 0 {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if c, err := net.DialTimeout("unix", path, 500*time.Millisecond); err == nil {
			c.Close()
			continue
		}
		if err := os.Remove(path); err == nil {
			log.Info("removed the socket of a plugin that is gone", "socket", path)
		}
	}
}
