package imagekit

import (
	"archive/tar"
	"bytes"
	"fmt"
	"path"
	"strings"

	"github.com/containerd/errdefs"
)

// Attack names a hostile layer. Each one aims at a host path (the target) outside the
// directory the layer is applied to. A safe applier refuses the layer (Flotilla's diff answers
// InvalidArgument) or, for the first four, keeps what it writes inside the root; in every case
// the target is unchanged and no file in the root shares the target's inode.
type Attack string

// The attacks [HostileLayer] builds.
const (
	// AttackTraversal is a regular file named "../../…/<target>": an applier that joins
	// names to the root without cleaning them writes the target.
	AttackTraversal Attack = "traversal"
	// AttackAbsolute is a regular file named by the target's absolute path: an applier that
	// uses header names as paths writes the target.
	AttackAbsolute Attack = "absolute"
	// AttackSymlinkEscape is a symlink "escape" pointing at the target's directory (absolute),
	// then a regular file "escape/<base of target>": an applier that follows symlinks while
	// resolving later entries writes the target through the link.
	AttackSymlinkEscape Attack = "symlink-escape"
	// AttackHardlinkOutside is a hardlink "passwd" whose link name climbs out of the root
	// ("../../…/<target>", by default etc/passwd), then a regular file "passwd" written over
	// it: an applier that links to the host file exposes it in the image and, if it opens
	// the existing name without unlinking it, overwrites the host file.
	AttackHardlinkOutside Attack = "hardlink-outside"
	// AttackHardlinkAbsolute is AttackHardlinkOutside with the absolute target as link name.
	// Tar link names are relative to the root, so a safe applier resolves it inside the root
	// (where it usually does not exist) or refuses it.
	AttackHardlinkAbsolute Attack = "hardlink-absolute"
	// AttackHugeSize is a regular file "huge" whose header claims [HugeSize] bytes while the
	// stream ends after a few KiB: an applier that trusts the header (preallocates, or reads
	// it into memory) exhausts disk or memory; a safe one fails on the short body and leaves
	// no partial file. The target is not used.
	AttackHugeSize Attack = "huge-size"
)

// Attacks lists every attack.
var Attacks = []Attack{AttackTraversal, AttackAbsolute, AttackSymlinkEscape, AttackHardlinkOutside, AttackHardlinkAbsolute, AttackHugeSize}

// HostilePayload is the content hostile layers try to write to their target.
const HostilePayload = "flotilla hostile layer was here\n"

// HugeSize is the size the AttackHugeSize header claims: 1 PiB.
const HugeSize = 1 << 50

// DefaultHostileTarget is the target of the hardlink attacks when none is given.
const DefaultHostileTarget = "/etc/passwd"

// climb is enough "../" to reach / from any root a test uses.
var climb = strings.Repeat("../", 32)

// HostileLayer builds the layer of attack a aimed at target, an absolute host path (empty
// means [DefaultHostileTarget]), compressed and typed as the options say. Its DiffID is the
// digest of the uncompressed bytes, even where they are not a valid tar (AttackHugeSize).
func HostileLayer(a Attack, target string, opts ...Option) (Layer, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return Layer{}, err
	}
	data, err := hostileTar(a, target)
	if err != nil {
		return Layer{}, err
	}
	return newLayer(data, cfg)
}

// BuildHostile builds a one-layer image whose layer is HostileLayer(a, target, opts...), so
// that pulling and unpacking it exercises the attack end to end.
func BuildHostile(a Attack, target string, opts ...Option) (*Image, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	layer, err := HostileLayer(a, target, opts...)
	if err != nil {
		return nil, err
	}
	img, err := singleImage(cfg, []Layer{layer}, runConfig{}, "hostile "+string(a))
	if err != nil {
		return nil, fmt.Errorf("hostile image %s: %w", a, err)
	}
	return img, nil
}

func hostileTar(a Attack, target string) ([]byte, error) {
	if target == "" {
		target = DefaultHostileTarget
	}
	if !path.IsAbs(target) {
		return nil, fmt.Errorf("hostile target %q must be absolute: %w", target, errdefs.ErrInvalidArgument)
	}
	target = path.Clean(target)
	rel := strings.TrimPrefix(target, "/")
	switch a {
	case AttackTraversal:
		return tarEntries([]entry{file(climb+rel, 0o644, HostilePayload)})
	case AttackAbsolute:
		return tarEntries([]entry{file(target, 0o644, HostilePayload)})
	case AttackSymlinkEscape:
		return tarEntries([]entry{
			symlink("escape", path.Dir(target)),
			file("escape/"+path.Base(target), 0o644, HostilePayload),
		})
	case AttackHardlinkOutside:
		return tarEntries([]entry{hardlink("passwd", climb+rel), file("passwd", 0o644, HostilePayload)})
	case AttackHardlinkAbsolute:
		return tarEntries([]entry{hardlink("passwd", target), file("passwd", 0o644, HostilePayload)})
	case AttackHugeSize:
		return hugeTar()
	}
	return nil, fmt.Errorf("attack %q (want one of %v): %w", a, Attacks, errdefs.ErrInvalidArgument)
}

// hugeTar is a tar header claiming HugeSize bytes followed by 4 KiB of body and the two zero
// blocks that end an archive, which a reader takes as part of the body before it hits EOF.
func hugeTar() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: "huge", Mode: 0o644, Size: HugeSize, ModTime: created, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("huge tar header: %w", err)
	}
	// The writer is abandoned on purpose: closing it would fail on the missing body.
	buf.Write(bytes.Repeat([]byte(HostilePayload), 4096/len(HostilePayload)+1)[:4096])
	buf.Write(make([]byte, 1024))
	return buf.Bytes(), nil
}
