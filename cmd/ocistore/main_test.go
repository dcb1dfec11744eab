package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// bin is the ocistore binary built by TestMain; the tests run it as a
// subprocess, as a user would. It is built with the tag crashpoints, in
// every build of the tests, so that a test can kill it at a crash point
// (OCISTORE_CRASHPOINT). internal/testing/embedder runs the binary of a
// default build with it (TestCrashPointsOffByDefault).
var bin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "ocistore-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	bin = filepath.Join(tmp, "ocistore")
	args := []string{"build", "-tags", "crashpoints", "-o", bin}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building ocistore: %v\n", err)
		return 1
	}
	return m.Run()
}

// result is what one run of the binary did.
type result struct {
	args           []string
	stdout, stderr string
	code           int // -1 when killed by a signal
}

func (r result) String() string {
	return fmt.Sprintf("ocistore %s: exit %d\n--- stdout:\n%s--- stderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// runOpts tune one run: extra environment, the working directory, what
// stdin holds, and how long the run may take (default 2 minutes; a run
// still going then is killed, and its result says so).
type runOpts struct {
	env     []string
	dir     string
	stdin   string
	timeout time.Duration
}

// cli runs the binary with args and returns what it did.
func cli(t *testing.T, args ...string) result {
	t.Helper()
	return cliWith(t, runOpts{}, args...)
}

func cliWith(t *testing.T, o runOpts, args ...string) result {
	t.Helper()
	timeout := o.timeout
	if timeout == 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = o.dir
	cmd.Env = childEnv(o.env)
	cmd.Stdin = strings.NewReader(o.stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run ocistore %v: %v", args, err)
	}
	if ctx.Err() != nil {
		r.stderr += fmt.Sprintf("\n(killed after %s: it was still running)", timeout)
	}
	return r
}

// childEnv is the environment of a run of the binary: this process's, but
// for the variables ocistore reads, and then extra.
func childEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "OCISTORE_") || strings.HasPrefix(kv, "NO_COLOR=") {
			continue
		}
		env = append(env, kv)
	}
	if raceBuild {
		// The race runtime sleeps a second at exit by default; a race it
		// finds still fails the run (exit code 66).
		env = append(env, strings.TrimSpace("GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	}
	return append(env, extra...)
}

// must runs the binary and fails the test unless it exits with code.
func must(t *testing.T, code int, args ...string) result {
	t.Helper()
	r := cli(t, args...)
	if r.code != code {
		t.Fatalf("want exit %d, got:\n%s", code, r)
	}
	return r
}

func wantContains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}

func wantNotContains(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			t.Errorf("%s contains %q:\n%s", what, sub, s)
		}
	}
}

func decodeJSON[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("stdout is not the JSON expected: %v\n%s", err, r)
	}
	return v
}

// fixture is a layout built through the store API:
//
//	a, a2   one image manifest (shared base layer + own layer)
//	b       an image manifest (shared base layer + two own layers)
//	multi   an image index over two platform manifests (both use base)
//	<none>  an untagged image manifest
type fixture struct {
	dir                   string
	a, b, multi, untagged v1.Descriptor
	amd64, arm64          v1.Descriptor
	base                  v1.Descriptor
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	f := &fixture{dir: t.TempDir()}
	s, err := store.Open(ctx, f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	bld := testutil.NewBuilder(t, s, 7)
	f.base = bld.Random(2000)
	f.a = bld.Manifest([]v1.Descriptor{f.base}, 1)
	bld.Tag(f.a, "a", "a2")
	f.b = bld.Manifest([]v1.Descriptor{f.base}, 2)
	bld.Tag(f.b, "b")
	f.amd64 = bld.Manifest([]v1.Descriptor{f.base}, 1)
	f.amd64.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	f.arm64 = bld.Manifest([]v1.Descriptor{f.base}, 1)
	f.arm64.Platform = &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	f.multi = bld.Index(f.amd64, f.arm64)
	bld.Tag(f.multi, "multi")
	f.untagged = bld.Manifest(nil, 1)
	bld.Tag(f.untagged, "tmp")
	if err := s.Untag(ctx, "tmp"); err != nil {
		t.Fatal(err)
	}
	testutil.MustCheck(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) blobPath(d digest.Digest) string {
	return filepath.Join(f.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// graphOf returns the blobs of d's graph, read from the files directly
// (independently of the code under test): digest -> size.
func graphOf(t *testing.T, dir string, d v1.Descriptor) map[digest.Digest]int64 {
	t.Helper()
	out := map[digest.Digest]int64{}
	var walk func(d v1.Descriptor)
	walk = func(d v1.Descriptor) {
		out[d.Digest] = d.Size
		if d.MediaType != v1.MediaTypeImageManifest && d.MediaType != v1.MediaTypeImageIndex {
			return
		}
		raw, err := os.ReadFile(filepath.Join(dir, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded()))
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Config    *v1.Descriptor  `json:"config"`
			Layers    []v1.Descriptor `json:"layers"`
			Manifests []v1.Descriptor `json:"manifests"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		if m.Config != nil {
			walk(*m.Config)
		}
		for _, k := range append(m.Layers, m.Manifests...) {
			walk(k)
		}
	}
	walk(d)
	return out
}

func total(g map[digest.Digest]int64) int64 {
	var n int64
	for _, s := range g {
		n += s
	}
	return n
}

// blobFiles lists every file under dir/blobs.
func blobFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(dir, "blobs"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
