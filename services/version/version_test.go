package version

import (
	"regexp"
	"testing"
)

// semverWithBuild is SemVer 2.0.0's grammar for a release with build
// metadata: a core without leading zeros, an optional pre-release, and
// dot-separated non-empty identifiers of [0-9A-Za-z-] after the "+". It is
// what nerdctl's parser (Masterminds/semver) and x/mod/semver accept.
var semverWithBuild = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)` +
	`(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?` +
	`\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*$`)

func TestContainerdIsSemverWithFlotillaInBuildMetadata(t *testing.T) {
	defer func(v, r string) { Version, Revision = v, r }(Version, Revision)
	for _, tc := range []struct {
		name, version, revision, want string
	}{
		{"a development build", "0.1.0-dev", "6097317c0fbadf4803eafc7fc8a60e93be21a4e4",
			"2.0.0+flotilla.0.1.0-dev.6097317c0fba"},
		{"a tagged release with a v", "v1.2.3", "abcdef0",
			"2.0.0+flotilla.v1.2.3.abcdef0"},
		{"git describe of a dirty tree", "v1.2.3-4-gabcdef0-dirty", "unknown",
			"2.0.0+flotilla.v1.2.3-4-gabcdef0-dirty.unknown"},
		{"characters semver forbids become hyphens", "1.0+local/build_7", "rev:1",
			"2.0.0+flotilla.1.0-local-build-7.rev-1"},
		{"empty identifiers are dropped", "..1..", "", "2.0.0+flotilla.1"},
		{"a long revision that is not hex is kept whole", "1", "not-a-hex-revision-at-all",
			"2.0.0+flotilla.1.not-a-hex-revision-at-all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			Version, Revision = tc.version, tc.revision
			got := Containerd()
			if got != tc.want {
				t.Errorf("Containerd() = %q, want %q", got, tc.want)
			}
			if !semverWithBuild.MatchString(got) {
				t.Errorf("%q is not a valid semver with build metadata", got)
			}
		})
	}
}
