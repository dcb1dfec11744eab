package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// TestBuildVersion: the version, commit and modified flag come from the
// build information (-buildvcs); without it, from the values given with
// -ldflags -X; the module version is "devel" when neither gives one.
func TestBuildVersion(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	bi := &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Path: "github.com/ocistore/ocistore", Version: "v0.0.0-20260101000000-0123456789ab+dirty"},
		Settings: []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: "2026-01-01T00:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	v := buildVersion(bi)
	want := versionInfo{Version: "v0.0.0-20260101000000-0123456789ab+dirty", Module: "github.com/ocistore/ocistore", Commit: rev,
		CommitTime: "2026-01-01T00:00:00Z", Modified: true, Go: "go1.99.1", Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if v != want {
		t.Errorf("from the build info: %+v, want %+v", v, want)
	}
	if got, want := v.line(), "ocistore v0.0.0-20260101000000-0123456789ab+dirty (commit 0123456789ab+modified, go1.99.1 "+want.Platform+")"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}

	// No VCS information recorded: the -X values.
	version, commit, modified = "v1.2.3", "fedcba9876543210fedcba9876543210fedcba98", "false"
	defer func() { version, commit, modified = "", "", "" }()
	v = buildVersion(&debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Path: "github.com/ocistore/ocistore", Version: "(devel)"}})
	if v.Version != "v1.2.3" || v.Commit != commit || v.Modified || v.CommitTime != "" {
		t.Errorf("from -X: %+v", v)
	}
	version, commit = "", ""
	if v = buildVersion(nil); v.Version != "devel" || v.Commit != "" || !strings.Contains(v.line(), "commit unknown") {
		t.Errorf("no build info: %+v %q", v, v.line())
	}
}

// TestVersionOutput: --version (before or after a command) prints the one
// line; version prints the module, the commit, the Go version, and their
// JSON. A binary built with -ldflags -X says what it was given.
func TestVersionOutput(t *testing.T) {
	t.Parallel()
	line := must(t, 0, "--version").stdout
	if !strings.HasPrefix(line, "ocistore ") || !strings.Contains(line, "(commit ") || !strings.Contains(line, runtime.Version()) || strings.Count(line, "\n") != 1 {
		t.Errorf("--version: %q", line)
	}
	if r := must(t, 0, "ls", "--version"); r.stdout != line {
		t.Errorf("ls --version: %q, want %q", r.stdout, line)
	}
	r := must(t, 0, "version")
	wantContains(t, "stdout", r.stdout, "module", "github.com/ocistore/ocistore", "commit", "go", runtime.Version())
	v := decodeJSON[versionInfo](t, must(t, 0, "version", "--json"))
	if v.Module != "github.com/ocistore/ocistore" || v.Go != runtime.Version() || v.Version == "" || v.line()+"\n" != line {
		t.Errorf("version --json: %+v, line %q", v, line)
	}

	stamped := filepath.Join(t.TempDir(), "ocistore")
	rev := "0123456789abcdef0123456789abcdef01234567"
	build := exec.Command("go", "build", "-buildvcs=false", "-o", stamped,
		"-ldflags", "-X main.version=v9.8.7 -X main.commit="+rev+" -X main.modified=true", ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(stamped, "--version").Output()
	if want := "ocistore v9.8.7 (commit 0123456789ab+modified, " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")\n"; err != nil || string(out) != want {
		t.Errorf("--version of a build with -X: %q (%v), want %q", out, err, want)
	}
}

// TestMakeBuildStampsVersion: make build stamps the commit of the checkout
// it runs in (a git worktree included, where the go command records no VCS
// information), or says it is unknown outside git.
func TestMakeBuildStampsVersion(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "ocistore")
	mk := exec.Command("make", "-s", "-C", root, "build", "BIN="+out)
	if b, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make build: %v\n%s", err, b)
	}
	got, err := exec.Command(out, "version", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var v versionInfo
	if err := json.Unmarshal(got, &v); err != nil {
		t.Fatalf("%v: %s", err, got)
	}
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	want := strings.TrimSpace(string(head))
	if err != nil {
		want = "" // not a git checkout: no commit
	}
	if v.Commit != want {
		t.Errorf("make build stamped commit %q, want %q (git rev-parse HEAD)", v.Commit, want)
	}
}
