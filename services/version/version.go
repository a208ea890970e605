// Package version holds the build's version and git revision, set at link
// time by the Makefile with -ldflags "-X ...".
package version

var (
	// Version is the release of Flotilla this binary was built from.
	Version = "0.1.0-dev"
	// Revision is the git commit this binary was built from.
	Revision = "unknown"
)
