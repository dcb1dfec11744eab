package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

var versionCmd = &command{
	name:    "version",
	summary: "print the version and the VCS commit of this build",
	help: `Prints the module version, the VCS commit the binary was built from (and
whether the work tree had changes not committed: "modified"), its time, and
the Go version and platform. ocistore --version prints the first line of it.

They come from the build information the go command records
(debug.ReadBuildInfo: -buildvcs, as make build uses in a git checkout); a
build where it cannot record the VCS (a git worktree, a source tarball) may
give them with -ldflags "-X main.version=V -X main.commit=SHA -X
main.modified=true|false" (make build does so in a git worktree).

JSON output: {version, module, commit, commitTime, modified, go, platform};
commit and commitTime are absent when unknown.`,
	maxArgs: 0,
	format:  true,
	layout:  layoutNone,
	run:     runVersion,
}

// Set at build time with -ldflags "-X main.version=... -X main.commit=...
// -X main.modified=true" when the go command records no VCS information.
// The build information wins over commit and modified; version wins over
// the module version.
var version, commit, modified string

// versionInfo is what ocistore version prints.
type versionInfo struct {
	Version    string `json:"version"`
	Module     string `json:"module"`
	Commit     string `json:"commit,omitempty"`
	CommitTime string `json:"commitTime,omitempty"`
	Modified   bool   `json:"modified"`
	Go         string `json:"go"`
	Platform   string `json:"platform"`
}

// buildVersion reads the version of this build from bi (nil: none) and the
// values given with -X.
func buildVersion(bi *debug.BuildInfo) versionInfo {
	v := versionInfo{Version: version, Commit: commit, Modified: modified == "true",
		Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH, Module: "github.com/ocistore/ocistore"}
	if bi != nil {
		if bi.Main.Path != "" {
			v.Module = bi.Main.Path
		}
		if v.Version == "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			v.Go = bi.GoVersion
		}
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if rev := settings["vcs.revision"]; rev != "" {
			v.Commit, v.CommitTime, v.Modified = rev, settings["vcs.time"], settings["vcs.modified"] == "true"
		}
	}
	if v.Version == "" {
		v.Version = "devel"
	}
	return v
}

func currentVersion() versionInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return buildVersion(bi)
}

// line is the one-line form: "ocistore v1.2.3 (commit 0123456789ab+modified, go1.26.8 linux/amd64)".
func (v versionInfo) line() string {
	c := "commit unknown"
	if v.Commit != "" {
		c = "commit " + short(v.Commit)
		if v.Modified {
			c += "+modified"
		}
	}
	return fmt.Sprintf("ocistore %s (%s, %s %s)", v.Version, c, v.Go, v.Platform)
}

func short(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// printVersionLine writes the one-line version (ocistore --version).
func printVersionLine(w io.Writer) error {
	_, err := fmt.Fprintln(w, currentVersion().line())
	return err
}

func runVersion(_ context.Context, a *app, _ []string) error {
	v := currentVersion()
	if a.json() {
		return a.printJSON(v)
	}
	tw := a.table()
	fmt.Fprintf(tw, "ocistore %s\n", v.Version)
	fmt.Fprintf(tw, "  module\t%s\n", v.Module)
	switch {
	case v.Commit == "":
		fmt.Fprintf(tw, "  commit\tunknown (built without VCS information)\n")
	case v.Modified:
		fmt.Fprintf(tw, "  commit\t%s (modified: built with changes not committed)\n", v.Commit)
	default:
		fmt.Fprintf(tw, "  commit\t%s\n", v.Commit)
	}
	if v.CommitTime != "" {
		fmt.Fprintf(tw, "  commit time\t%s\n", v.CommitTime)
	}
	fmt.Fprintf(tw, "  go\t%s %s\n", v.Go, v.Platform)
	return tw.Flush()
}
