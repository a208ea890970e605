package imagekit

import (
	"fmt"
	"os"
)

// BusyboxApplets are the commands the busybox image links to /bin/busybox, in /bin.
var BusyboxApplets = []string{
	"ash", "awk", "basename", "cat", "chmod", "chown", "cp", "cut", "date", "dd", "df", "diff",
	"dirname", "du", "echo", "env", "expr", "false", "find", "free", "grep", "gunzip", "gzip",
	"head", "hexdump", "hostname", "id", "kill", "less", "ln", "ls", "md5sum", "mkdir", "more",
	"mount", "mv", "od", "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed", "seq",
	"sha256sum", "sh", "sleep", "sort", "stat", "sync", "tail", "tar", "tee", "test", "top",
	"touch", "tr", "true", "umount", "uname", "uptime", "vi", "wc", "which", "whoami", "xargs",
	"yes",
}

// BusyboxPath is the PATH in the busybox image's config.
const BusyboxPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// busyboxEntries is the root filesystem of the busybox image around the given binary.
func busyboxEntries(binary []byte) []entry {
	entries := []entry{
		dir("bin", 0o755),
		file("bin/busybox", 0o755, string(binary)),
	}
	for _, a := range BusyboxApplets {
		entries = append(entries, symlink("bin/"+a, "busybox"))
	}
	entries = append(entries,
		dir("dev", 0o755),
		dir("etc", 0o755),
		file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n"),
		file("etc/hostname", 0o644, "busybox\n"),
		file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
		dir("home", 0o755),
		dir("proc", 0o555),
		dir("root", 0o700),
		dir("sys", 0o555),
		dir("tmp", 0o1777),
		dir("usr", 0o755),
		dir("usr/bin", 0o755),
		dir("var", 0o755),
	)
	return entries
}

// BuildBusybox builds a runnable one-layer image from the busybox binary ([WithBusybox],
// default Debian's busybox-static): /bin/busybox with [BusyboxApplets] as symlinks to it,
// /etc/passwd and /etc/group for root and nobody, and empty /dev, /proc, /sys, /tmp (1777),
// /root, /home, /usr/bin, /var. Its config runs "sh" with [BusyboxPath]. Image.Expected is
// its root filesystem.
func BuildBusybox(opts ...Option) (*Image, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	binary, err := os.ReadFile(cfg.busybox)
	if err != nil {
		return nil, fmt.Errorf("busybox image: %w", err)
	}
	return busyboxImage(cfg, binary)
}

func busyboxImage(cfg *config, binary []byte) (*Image, error) {
	entries := busyboxEntries(binary)
	layer, err := layerOf(entries, cfg)
	if err != nil {
		return nil, fmt.Errorf("busybox image: %w", err)
	}
	img, err := singleImage(cfg, []Layer{layer}, busyboxRun(), "busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox image: %w", err)
	}
	img.Expected = treeOf(entries)
	return img, nil
}

func busyboxRun() runConfig {
	return runConfig{Cmd: []string{"sh"}, Env: []string{BusyboxPath}}
}

// layerOf tars entries and compresses them into a layer.
func layerOf(entries []entry, cfg *config) (Layer, error) {
	data, err := tarEntries(entries)
	if err != nil {
		return Layer{}, err
	}
	return newLayer(data, cfg)
}
