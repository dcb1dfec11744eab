package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// TestCrashPointsOffByDefault: crash points exist only in builds with the
// tag crashpoints. This program, which embeds package store, and the CLI
// (cmd/ocistore, as make build builds it), built the default way, delete
// an image normally when run with OCISTORE_CRASHPOINT naming a point the
// delete reaches (killing, and pausing): exit 0, the image and the blobs
// only it used gone, no pending record, fsck clean. The same programs
// built with the tag are killed there (or pause there): the test can fail.
// It runs in every build of the tests (it builds the programs itself).
func TestCrashPointsOffByDefault(t *testing.T) {
	root := moduleRoot(t)
	gold, gone, kept := fixture(t)
	for _, prog := range []struct {
		name, pkg string
		args      func(dir string) []string
	}{
		{"embedder", "./internal/testing/embedder", func(dir string) []string { return []string{dir, "a"} }},
		{"cli", "./cmd/ocistore", func(dir string) []string { return []string{"-l", dir, "rm", "a"} }},
	} {
		t.Run(prog.name, func(t *testing.T) {
			bins := t.TempDir()
			plain := build(t, root, prog.pkg, filepath.Join(bins, "default"), false)
			tagged := build(t, root, prog.pkg, filepath.Join(bins, "crashpoints"), true)
			for _, point := range []string{crash.TxnJournaled, crash.TxnJournaled + ":pause", crash.BlobUnlinked + "@1", crash.TxnCleared + ":pause"} {
				t.Run("default/"+point, func(t *testing.T) {
					dir := layoutCopy(t, gold)
					code, stderr := run(t, plain, point, prog.args(dir), pausedMessage(point))
					if code != 0 {
						t.Fatalf("exit %d, want 0: the default build must not know the crash point %s\n%s", code, point, stderr)
					}
					assertDeleted(t, dir, gone, kept)
				})
			}
			t.Run("crashpoints/"+crash.TxnJournaled, func(t *testing.T) {
				dir := layoutCopy(t, gold)
				if code, stderr := run(t, tagged, crash.TxnJournaled, prog.args(dir), ""); code != -1 {
					t.Fatalf("exit %d, want killed at %s\n%s", code, crash.TxnJournaled, stderr)
				}
				assertPending(t, dir)
			})
			t.Run("crashpoints/"+crash.TxnJournaled+":pause", func(t *testing.T) {
				dir := layoutCopy(t, gold)
				point := crash.TxnJournaled + ":pause"
				if code, stderr := run(t, tagged, point, prog.args(dir), pausedMessage(point)); code != -1 {
					t.Fatalf("exit %d, want paused at %s (then killed by the test)\n%s", code, crash.TxnJournaled, stderr)
				}
				assertPending(t, dir)
			})
		})
	}
}

// pausedMessage is the line a build with crash points writes to stderr
// when it pauses at point ("NAME[@K]:pause"), "" when point does not pause.
func pausedMessage(point string) string {
	p, ok := strings.CutSuffix(point, ":pause")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(p, "@")
	return fmt.Sprintf(crash.PausedMessage, name)
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		t.Fatalf("go env GOMOD: %q, %v", gomod, err)
	}
	return filepath.Dir(gomod)
}

// build builds pkg (a path relative to the module root) as out, with the
// tag crashpoints or with no tag at all (an explicit empty -tags: a
// -tags=crashpoints in GOFLAGS does not apply).
func build(t *testing.T, root, pkg, out string, crashpoints bool) string {
	t.Helper()
	tags := "-tags="
	if crashpoints {
		tags = "-tags=crashpoints"
	}
	cmd := exec.Command("go", "build", tags, "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("(cd %s && go build %s -o %s %s): %v\n%s", root, tags, out, pkg, err, b)
	}
	return out
}

// fixture writes a layout with two images sharing a base layer, a and b,
// and returns it with the blobs only a uses and the blobs b uses.
func fixture(t *testing.T) (dir string, gone, kept []digest.Digest) {
	t.Helper()
	dir = t.TempDir()
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.NewBuilder(t, s, 1)
	base := []v1.Descriptor{b.Random(300)}
	ma, mb := b.Manifest(base, 3), b.Manifest(base, 1)
	b.Tag(ma, "a")
	b.Tag(mb, "b")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	kept = testutil.Graph(t, dir, mb)
	for _, d := range testutil.Graph(t, dir, ma) {
		if !slices.Contains(kept, d) {
			gone = append(gone, d)
		}
	}
	if len(gone) < 3 {
		t.Fatalf("fixture: image a has %d blobs of its own, want more than 2", len(gone))
	}
	return dir, gone, kept
}

func layoutCopy(t *testing.T, gold string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	testutil.CopyTree(t, gold, dir)
	return dir
}

// run runs bin with args and OCISTORE_CRASHPOINT=point, and returns its
// exit status (-1 when killed by SIGKILL) and stderr. With pausedMsg set,
// it kills bin once bin wrote that line to stderr (a paused crash point;
// not a test failure in itself: the caller checks the status).
func run(t *testing.T, bin, point string, args []string, pausedMsg string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != crash.EnvVar && k != "OCISTORE_LAYOUT" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, crash.EnvVar+"="+point)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		stderr.WriteString(sc.Text() + "\n")
		if pausedMsg != "" && sc.Text()+"\n" == pausedMsg {
			_ = cmd.Process.Kill()
		}
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("%s %s (%s=%s): still running after %v\n%s", bin, strings.Join(args, " "), crash.EnvVar, point, 2*time.Minute, stderr.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), stderr.String()
	case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
		return -1, stderr.String()
	}
	t.Fatalf("%s: %v\n%s", bin, err, stderr.String())
	return 0, ""
}

// refNames are the names of index.json's entries, read as a foreign tool
// would (no recovery).
func refNames(t *testing.T, dir string) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, layout.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ix.Manifests {
		out = append(out, m.Annotations[v1.AnnotationRefName])
	}
	return out
}

// assertDeleted checks, before anything opens the layout again, that the
// delete of a is complete: a gone from index.json, its own blobs unlinked,
// b whole, nothing pending, fsck clean.
func assertDeleted(t *testing.T, dir string, gone, kept []digest.Digest) {
	t.Helper()
	if names := refNames(t, dir); !slices.Equal(names, []string{"b"}) {
		t.Errorf("index.json names %v, want [b]", names)
	}
	for _, d := range gone {
		if testutil.HasBlob(t, dir, d) {
			t.Errorf("blob %s of a still there", d)
		}
	}
	for _, d := range kept {
		if !testutil.HasBlob(t, dir, d) {
			t.Errorf("blob %s of b gone", d)
		}
	}
	rep, err := store.CheckDir(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		t.Errorf("fsck: %s", p)
	}
}

// assertPending checks that the process died after its journal commit:
// fsck (which runs no recovery) reports the pending record.
func assertPending(t *testing.T, dir string) {
	t.Helper()
	rep, err := store.CheckDir(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		if p.Kind == recovery.KindPending {
			return
		}
	}
	t.Fatalf("no pending record after a kill at %s: fsck reports %v", crash.TxnJournaled, rep.Problems)
}
