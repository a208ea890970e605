package imagekit

import (
	"fmt"
	"io/fs"
)

// The three layers of BuildLayers, lowest first. The comments in the upper ones say what each
// entry does to the lower ones.
func whiteoutLayers() [][]entry {
	base := []entry{
		dir("bin", 0o755),
		file("bin/tool", 0o4755, "tool v1\n"),
		dir("data", 0o755),
		file("data/a.txt", 0o644, "a v1\n"),
		file("data/b.txt", 0o644, "b v1\n"),
		file("data/keep.txt", 0o644, "keep\n"),
		symlink("data/link-to-a", "a.txt"),
		dir("etc", 0o755),
		file("etc/hostname", 0o644, "base\n"),
		file("etc/shadow", 0o600, "root:*:19000:0:99999:7:::\n"),
		dir("gone", 0o755),
		file("gone/inside", 0o644, "inside\n"),
		dir("gone/deeper", 0o755),
		file("gone/deeper/file", 0o644, "deep\n"),
		dir("hard", 0o755),
		file("hard/orig", 0o644, "one inode, two names\n"),
		hardlink("hard/link", "hard/orig"),
		dir("home", 0o755),
		owned(dir("home/user", 0o700), 1000, 1000),
		owned(file("home/user/notes", 0o640, "notes\n"), 1000, 1000),
		dir("opaque", 0o755),
		file("opaque/old1", 0o644, "old1\n"),
		dir("opaque/sub", 0o755),
		file("opaque/sub/old2", 0o644, "old2\n"),
		dir("replaced", 0o755),
		file("replaced/child", 0o644, "child\n"),
	}
	middle := []entry{
		dir("data", 0o755),
		file("data/b.txt", 0o644, "b v2\n"), // modifies a base file
		file("data/c.txt", 0o644, "c v1\n"), // adds a file
		dir("etc", 0o755),
		file("etc/motd", 0o644, "motd\n"),
		dir("var", 0o755),
		dir("var/log", 0o755),
		file("var/log/app.log", 0o644, "log\n"),
	}
	upper := []entry{
		file(".wh.gone", 0o644, ""), // removes a directory with its subtree
		dir("bin", 0o755),
		file("bin/sgid-tool", 0o2755, "sgid\n"),
		file("bin/tool", 0o4755, "tool v2\n"), // replaces a setuid file, keeps it setuid
		dir("data", 0o755),
		file("data/.wh.a.txt", 0o644, ""),   // removes a base file: data/link-to-a dangles
		file("data/b.txt", 0o444, "b v3\n"), // replaces a middle file, with a new mode
		symlink("data/latest", "c.txt"),
		dir("etc", 0o755),
		file("etc/.wh.motd", 0o644, ""),        // removes the middle layer's file
		file("etc/hostname", 0o644, "upper\n"), // replaces a base file
		dir("opaque", 0o755),
		file("opaque/.wh..wh..opq", 0o644, ""), // hides everything the lower layers had in opaque/
		file("opaque/new", 0o644, "new\n"),
		file("replaced", 0o644, "now a file\n"), // a file replaces a directory with children
		file("secret", 0o600, "secret\n"),
		dir("tmp", 0o1777),
		dir("usr", 0o755),
		dir("usr/bin", 0o755),
		file("usr/bin/app", 0o755, "#!/bin/sh\necho app\n"),
		hardlink("usr/bin/app-alias", "usr/bin/app"),
	}
	return [][]entry{base, middle, upper}
}

// LayersExpected is the root filesystem that applying the three layers of [BuildLayers] in
// order must give: deleted files gone, the opaque directory holding only the upper layer's
// file, replaced files with the upper content and mode, hardlinks sharing an inode. Every
// entry is owned by root except home/user and its file (1000:1000).
func LayersExpected() Tree {
	d := func(p string, m fs.FileMode) Entry { return Entry{Path: p, Type: TypeDir, Mode: m} }
	f := func(p string, m fs.FileMode, c string) Entry {
		return Entry{Path: p, Type: TypeFile, Mode: m, Content: c}
	}
	l := func(p, target string) Entry { return Entry{Path: p, Type: TypeSymlink, Target: target} }
	h := func(e Entry, group string) Entry { e.LinkGroup = group; return e }
	u := func(e Entry) Entry { e.UID, e.GID = 1000, 1000; return e }
	return Tree{
		d("bin", 0o755),
		f("bin/sgid-tool", 0o755|fs.ModeSetgid, "sgid\n"),
		f("bin/tool", 0o755|fs.ModeSetuid, "tool v2\n"),
		d("data", 0o755),
		f("data/b.txt", 0o444, "b v3\n"),
		f("data/c.txt", 0o644, "c v1\n"),
		f("data/keep.txt", 0o644, "keep\n"),
		l("data/latest", "c.txt"),
		l("data/link-to-a", "a.txt"),
		d("etc", 0o755),
		f("etc/hostname", 0o644, "upper\n"),
		f("etc/shadow", 0o600, "root:*:19000:0:99999:7:::\n"),
		d("hard", 0o755),
		h(f("hard/link", 0o644, "one inode, two names\n"), "hard"),
		h(f("hard/orig", 0o644, "one inode, two names\n"), "hard"),
		d("home", 0o755),
		u(d("home/user", 0o700)),
		u(f("home/user/notes", 0o640, "notes\n")),
		d("opaque", 0o755),
		f("opaque/new", 0o644, "new\n"),
		f("replaced", 0o644, "now a file\n"),
		f("secret", 0o600, "secret\n"),
		d("tmp", 0o777|fs.ModeSticky),
		d("usr", 0o755),
		d("usr/bin", 0o755),
		h(f("usr/bin/app", 0o755, "#!/bin/sh\necho app\n"), "app"),
		h(f("usr/bin/app-alias", 0o755, "#!/bin/sh\necho app\n"), "app"),
		d("var", 0o755),
		d("var/log", 0o755),
		f("var/log/app.log", 0o644, "log\n"),
	}
}

// BuildLayers builds a three-layer image whose upper layers change the lower ones: OCI
// whiteouts of a file, of a file from the middle layer and of a whole directory, an opaque
// directory (.wh..wh..opq), a file replacing a directory, replaced files with new modes,
// a hardlink in the lowest and in the upper layer, symlinks (one left dangling by a
// whiteout), setuid, setgid, sticky and 0600 modes, and a directory owned by 1000:1000.
// Image.Expected is [LayersExpected]. The image has no shell: it is for unpacking, not for
// running.
func BuildLayers(opts ...Option) (*Image, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	var layers []Layer
	for i, entries := range whiteoutLayers() {
		l, err := layerOf(entries, cfg)
		if err != nil {
			return nil, fmt.Errorf("layers image, layer %d: %w", i+1, err)
		}
		layers = append(layers, l)
	}
	img, err := singleImage(cfg, layers, runConfig{Cmd: []string{"/usr/bin/app"}}, "whiteouts")
	if err != nil {
		return nil, fmt.Errorf("layers image: %w", err)
	}
	img.Expected = LayersExpected()
	return img, nil
}
