// Package conformance runs the OCI distribution-spec conformance suite
// (github.com/opencontainers/distribution-spec/conformance) against a
// registry and reads its results.
//
// Build compiles the suite, pinned to Version, from the Go module proxy
// into a cache shared by every test run of the machine; Run runs it with a
// Config (Everything turns on every workflow) and returns the counts of
// its checks and the failed ones. A registry under test must listen on
// 127.0.0.1.
//
// A test of a registry (ocistore serve listening on 127.0.0.1:PORT):
//
//	bin := conformance.Build(t)
//	s := conformance.Run(t, bin, conformance.Everything("127.0.0.1:PORT"))
//	if s.Fail+s.Error > 0 {
//		t.Errorf("%s", s.Details()) // the failed tests, by category
//	}
//
// Set OCISTORE_CONFORMANCE_OUT=DIR to keep each run's reports
// (report.html has every request and response).
//
// Like the other rigs under internal/testing, nothing here skips: without
// a go command, or without the module proxy the first time, the test
// fails and says what is missing.
package conformance

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Module is the suite's Go module; its main package is the suite.
const Module = "github.com/opencontainers/distribution-spec/conformance"

// Version is the suite's version, a pseudo-version of the
// distribution-spec repository (commit 97274622c111, 2026-08-31). The
// baseline numbers in the README were measured with it: change it and
// measure them again.
const Version = "v0.0.0-20260831232431-97274622c111"

// buildTimeout bounds a build of the suite: a first build downloads its
// modules from the proxy (github.com/goccy/go-yaml and the OCI specs).
const buildTimeout = 10 * time.Minute

// Build returns the path of the suite's binary, built at Version. The
// binary is cached under the user's cache directory
// (os.UserCacheDir()/ocistore/conformance/VERSION/GOOS_GOARCH/conformance),
// so only the first test of a machine builds it; it is checked on every
// use (its embedded build information must name Module at Version) and
// built again if it is not that.
//
// The build is `go install -trimpath Module@Version`, with the go command
// found on PATH (go test puts the go command's own GOROOT/bin first on the
// PATH of the tests it runs, so it is the go that runs the test), into a
// fresh temporary directory that is renamed into place: test processes
// that build at the same time each rename a complete binary, none sees a
// half-written one. go install with @version ignores the surrounding
// module (ocistore's go.mod is untouched) and resolves the suite's
// dependencies from its own go.mod, checked against go.sum and the
// checksum database.
//
// It fails the test, with the go command's output, when the suite cannot
// be built.
func Build(t testing.TB) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("conformance: building the suite needs the go command on PATH: %v", err)
	}
	dir, err := cacheDir()
	if err != nil {
		t.Fatalf("conformance: %v", err)
	}
	bin := filepath.Join(dir, "conformance"+exeSuffix())
	if err := checkBinary(bin); err == nil {
		return bin
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Logf("conformance: cached suite %s is unusable (%v): building it again", bin, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("conformance: cache directory for the suite: %v", err)
	}
	removeStaleBuilds(dir)
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		t.Fatalf("conformance: temporary build directory: %v", err)
	}
	defer os.RemoveAll(tmp)

	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	pkg := Module + "@" + Version
	// -X main.Version: the suite reports it as its "Conformance Commit"
	// (a build from the module proxy has no VCS information to read it
	// from).
	cmd := exec.CommandContext(ctx, goCmd, "install", "-trimpath",
		"-ldflags=-X=main.Version="+Version, pkg)
	cmd.Dir = tmp
	cmd.Env = buildEnv(tmp)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%v (gave up after %s)", err, buildTimeout)
		}
		t.Fatalf("conformance: %s install %s: %v\n%s\n(the first build downloads the suite's modules from the Go module proxy, GOPROXY=%s)",
			goCmd, pkg, err, out.Bytes(), goEnv(goCmd, "GOPROXY"))
	}
	built := filepath.Join(tmp, "conformance"+exeSuffix())
	if err := checkBinary(built); err != nil {
		t.Fatalf("conformance: %s install %s built an unexpected binary: %v\n%s", goCmd, pkg, err, out.Bytes())
	}
	if err := os.Rename(built, bin); err != nil {
		t.Fatalf("conformance: install the suite's binary into the cache: %v", err)
	}
	t.Logf("conformance: built %s in %s: %s", pkg, time.Since(start).Round(time.Millisecond), bin)
	return bin
}

// cacheDir is the directory of the suite's cached binary for Version and
// this platform.
func cacheDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory for the suite's binary: %v", err)
	}
	return filepath.Join(base, "ocistore", "conformance", Version, runtime.GOOS+"_"+runtime.GOARCH), nil
}

// removeStaleBuilds removes the temporary directories of builds that
// were killed (a build that takes an hour is long gone); best effort.
func removeStaleBuilds(dir string) {
	stale, _ := filepath.Glob(filepath.Join(dir, "build-*"))
	for _, d := range stale {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > time.Hour {
			_ = os.RemoveAll(d)
		}
	}
}

// checkBinary reports whether path is the suite at Version, by the build
// information the go command embeds in it.
func checkBinary(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o100 == 0 {
		return fmt.Errorf("%s: not an executable file (%s)", path, fi.Mode())
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: no Go build information: %v", path, err)
	}
	if bi.Main.Path != Module || bi.Main.Version != Version {
		return fmt.Errorf("%s: is %s@%s, want %s@%s", path, bi.Main.Path, bi.Main.Version, Module, Version)
	}
	return nil
}

// buildEnv is the go command's environment for the build: the test's,
// with the binary going to gobin, and neither a workspace nor GOFLAGS of
// the caller applying (a -mod or -tags meant for ocistore has no business
// in the suite's build). CGO_ENABLED=0: the suite needs no C, and a static
// binary does not depend on the machine's libc. GOOS and GOARCH are the
// test's own, the platform the cache is keyed by.
func buildEnv(gobin string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "GOBIN", "GOFLAGS", "GOWORK", "CGO_ENABLED", "GOOS", "GOARCH":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "GOBIN="+gobin, "GOFLAGS=", "GOWORK=off", "CGO_ENABLED=0",
		"GOOS="+runtime.GOOS, "GOARCH="+runtime.GOARCH)
}

// goEnv returns `go env NAME`, or a note that it could not be read, for
// failure messages.
func goEnv(goCmd, name string) string {
	out, err := exec.Command(goCmd, "env", name).Output()
	if err != nil {
		return fmt.Sprintf("(go env %s: %v)", name, err)
	}
	return strings.TrimSpace(string(out))
}

func exeSuffix() string {
	if runtime.GOOS == "windows" {
		return ".exe"
	}
	return ""
}
