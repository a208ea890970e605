// Package version holds the build's version and git revision, set at link
// time by the Makefile with -ldflags "-X ...", and the version Flotilla
// answers to containerd's clients.
package version

import (
	"strings"
)

var (
	// Version is the release of Flotilla this binary was built from.
	Version = "0.1.0-dev"
	// Revision is the git commit this binary was built from.
	Revision = "unknown"
)

// ContainerdAPI is the containerd release whose API Flotilla serves end to
// end. Clients read containerd's Version answer as semver and pick what
// they call by it (nerdctl wants 1.6 or later, and pulls through the
// Transfer service from 2.0 on), so raise it only once every service of
// that release works. 2.0: contentd serves the Transfer and Streaming APIs,
// proven with ctr 2.x pull/push/import/export/tag and the 2.x Go client's
// client.Transfer (integration/transfer_*_test.go).
const ContainerdAPI = "2.0.0"

// shortRevision is how many characters of a git revision the build
// metadata keeps: enough to name a commit, short enough to read.
const shortRevision = 12

// Containerd is what Flotilla answers to containerd's Version call: a valid
// semver whose core is ContainerdAPI and whose build metadata names
// Flotilla's own version and revision, e.g.
// 1.7.0+flotilla.0.1.0-dev.6097317c0fba. Build metadata never changes how
// the version compares, so clients see the API level alone.
func Containerd() string {
	rev := Revision
	if len(rev) > shortRevision && isHex(rev) {
		rev = rev[:shortRevision]
	}
	meta := []string{"flotilla"}
	meta = append(meta, identifiers(Version)...)
	meta = append(meta, identifiers(rev)...)
	return ContainerdAPI + "+" + strings.Join(meta, ".")
}

// identifiers splits s into semver build-metadata identifiers: non-empty
// runs of [0-9A-Za-z-], anything else becoming a hyphen and a dot being a
// separator.
func identifiers(s string) []string {
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '-', r == '.':
			return r
		}
		return '-'
	}, s)
	var out []string
	for _, id := range strings.Split(clean, ".") {
		if id != "" {
			out = append(out, id)
		}
	}
	return out
}

func isHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}
