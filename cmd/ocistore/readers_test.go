package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/testing/testutil"
)

// pausedWriter starts `ocistore rm ref` on dir, paused at the crash point
// txn-journaled (its record committed, the lock held), and returns once it
// is there; the cleanup kills it.
func pausedWriter(t *testing.T, dir, ref string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-l", dir, "rm", ref)
	cmd.Env = append(os.Environ(), "OCISTORE_CRASHPOINT=txn-journaled:pause")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "crashpoint txn-journaled reached") {
			go func() {
				for sc.Scan() {
				}
			}()
			return
		}
	}
	t.Fatalf("the writer did not reach its crash point: %v", sc.Err())
}

// Every read-only command answers while another process's transaction
// holds the journal, with a lock timeout of an hour: none waits for it.
// fsck reports the transaction as in flight, not as damage; journal says
// a transaction is in flight. Nothing changes.
func TestReadersNeverWait(t *testing.T) {
	f := newFixture(t)
	pausedWriter(t, f.dir, "b")
	before := testutil.Snapshot(t, f.dir)
	for _, args := range [][]string{
		{"ls"}, {"inspect", "a"}, {"du"}, {"journal"}, {"journal", "--format", "json"}, {"fsck"}, {"fsck", "--format", "json"},
		{"prune", "--keep-last", "1", "--dry-run"}, {"gc", "--dry-run"},
	} {
		// A reader that waited would be killed after 90 s (exit -1).
		r := cliWith(t, runOpts{timeout: 90 * time.Second}, append([]string{"-l", f.dir, "--lock-timeout", "1h"}, args...)...)
		if r.code != 0 {
			t.Errorf("behind a writer: %s", r)
			continue
		}
		switch args[0] {
		case "fsck":
			wantContains(t, "fsck behind a writer", r.stdout, "in-flight")
			wantNotContains(t, "fsck behind a writer", r.stdout, "pending ")
		case "journal":
			if len(args) > 1 {
				wantContains(t, "journal --format json behind a writer", r.stdout, `"inFlight": true`, `"op": "delete b"`)
			} else {
				wantContains(t, "journal behind a writer", r.stdout, "in flight", "delete b")
			}
		}
	}
	testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, f.dir))
}

// roMount bind-mounts dir read-only on a new directory and returns it; the
// cleanup unmounts it. The tests run as root (make test, CI).
func roMount(t *testing.T, dir string) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "--bind", dir, mnt).CombinedOutput(); err != nil {
		t.Fatalf("bind mount (the read-only tests need root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v: %s", err, out)
	}
	return mnt
}

// Every read-only command, and prune and gc with --dry-run, work on a
// layout on a read-only mount (adopted or not); a write fails naming the
// file system as read-only. A dry run says what it would recount.
func TestReadOnlyMount(t *testing.T) {
	f := newFixture(t)
	reads := [][]string{
		{"ls"}, {"inspect", "a"}, {"du"}, {"journal"}, {"fsck"},
		{"prune", "--keep-last", "1", "--dry-run"}, {"gc", "--dry-run"},
	}
	// Another tool's write, which the journal does not know: a real
	// prune recounts first; a dry run says it would.
	idx := filepath.Join(f.dir, "index.json")
	b := readFile(t, idx)
	if err := os.WriteFile(idx, append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := roMount(t, f.dir)
	before := testutil.Snapshot(t, f.dir)
	for _, args := range reads {
		r := cli(t, append([]string{"-l", mnt}, args...)...)
		if r.code != 0 && !(args[0] == "fsck" && r.code == 3) {
			t.Errorf("on a read-only mount: %s", r)
		}
		if args[0] == "prune" {
			wantContains(t, "prune --dry-run after another tool's write", r.stdout, "would first recount")
		}
	}
	r := cli(t, "-l", mnt, "rm", "a")
	if r.code == 0 {
		t.Errorf("rm on a read-only mount succeeded:\n%s", r)
	}
	wantContains(t, "rm on a read-only mount", r.stderr, "read-only file system")
	testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, f.dir))
}
