// Package version holds the build's version and revision, set by the Makefile with
// -ldflags "-X github.com/podsnapshot/podsnapshot/version.Version=... -X ...Revision=...".
package version

var (
	// Version is `git describe` of the build, "dev" for a plain go build.
	Version = "dev"
	// Revision is the git commit of the build.
	Revision = "unknown"
)
