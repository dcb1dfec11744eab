//go:build crashpoints

package store_test

// Crash tests: for each step of the protocol, a child process (this test
// binary) runs one operation with that crash point armed and is SIGKILLed
// there; the parent first checks the layout as the kill left it against the
// invariant for foreign readers (testutil.ForeignReadable: skopeo and umoci
// run no recovery), then opens the layout (running recovery), checks every
// invariant of the store (the check of internal/fsck, and a recount) and that the operation is all there or all gone,
// then checks that a second recovery does nothing. Each test prints a
// summary line, "crashpoints: test=NAME kills=N foreign=N violations=V"
// (make crash collects them).
//
// Built only with the tag crashpoints (go test -tags crashpoints: make test
// and make crash pass it): a test binary without it has no crash points,
// its children would never be killed. repair_crash_test.go carries the tag
// too; tests that stop the protocol in the test process use errorfs hooks
// instead (conflict_test.go, pidns_test.go, rapid_group_test.go).

import (
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

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

const (
	envChildOp  = "OCISTORE_TEST_CHILD_OP"
	envChildDir = "OCISTORE_TEST_CHILD_DIR"
	envChildArg = "OCISTORE_TEST_CHILD_ARG"
	// envChildTrash makes the child's transactions of two blobs or more
	// go through the trash (protocol.Env.TrashMin).
	envChildTrash = "OCISTORE_TEST_CHILD_TRASH"
)

// TestCrashChild is the child side: it does nothing unless started by runChild.
func TestCrashChild(t *testing.T) {
	op := os.Getenv(envChildOp)
	if op == "" {
		return
	}
	ctx := context.Background()
	dir := os.Getenv(envChildDir)
	args := strings.Fields(os.Getenv(envChildArg))
	o := &store.Options{}
	if os.Getenv(envChildTrash) != "" {
		store.SetTestTrashMin(o, 2)
	}
	s, err := store.Open(ctx, dir, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(10)
	}
	switch op {
	case "open":
	case "delete":
		_, err = s.Delete(ctx, args...)
	case "untag":
		err = s.Untag(ctx, args...)
	case "tag": // tag SRC DST...
		var d v1.Descriptor
		if d, err = s.Resolve(ctx, args[0]); err == nil {
			err = s.Tag(ctx, d, args[1:]...)
		}
	case "import": // import SRC REF...
		_, err = s.Import(ctx, args[0], args[1:]...)
	case "put": // put one new image, tagged args[0]
		b := testutil.NewBuilder(t, s, 99)
		m := b.Manifest(nil, 2)
		err = s.Tag(ctx, m, args[0])
	case "recover":
		_, err = s.Recover(ctx)
	case "gc":
		_, err = s.GC(ctx, store.GCOptions{})
	case "prune": // keep the newest image of each repository among the tags matching args
		_, err = s.Prune(ctx, store.Policy{KeepLast: 1, Refs: args})
	default:
		err = fmt.Errorf("unknown child op %q", op)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(11)
	}
	s.Close()
	os.Exit(0)
}

// cpTally counts a crash-point test's kills, the foreign-reader checks of
// the layouts they left and the cases that failed, for its summary line.
type cpTally struct {
	name                       string
	kills, foreign, violations int
}

// newTally starts the tally of the test t; its summary line is printed when
// t ends.
func newTally(t *testing.T) *cpTally {
	c := &cpTally{name: t.Name()}
	t.Cleanup(func() {
		fmt.Printf("crashpoints: test=%s kills=%d foreign=%d violations=%d\n", c.name, c.kills, c.foreign, c.violations)
	})
	return c
}

// run is t.Run, counting a failed case as a violation.
func (c *cpTally) run(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		c.violations++
	}
}

// killed counts a kill and checks the layout in dir (its blobs in
// sharedBlobDir when not empty) as the kill left it, before any recovery,
// against the invariant for foreign readers.
func (c *cpTally) killed(t *testing.T, dir, sharedBlobDir string) {
	t.Helper()
	c.kills++
	c.foreign++
	if err := testutil.ForeignReadableDir(dir, sharedBlobDir); err != nil {
		t.Errorf("foreign reader, after the kill and before recovery: %v", err)
	}
}

// runChild runs op in a child process with point armed ("" for none). It
// reports whether the child was killed at the point.
func runChild(t *testing.T, dir, op, point string, args ...string) (killed bool) {
	t.Helper()
	return runChildEnv(t, dir, op, point, nil, args...)
}

// runChildEnv is runChild with more environment for the child.
func runChildEnv(t *testing.T, dir, op, point string, env []string, args ...string) (killed bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChildOp+"="+op, envChildDir+"="+dir, envChildArg+"="+strings.Join(args, " "))
	cmd.Env = append(cmd.Env, env...)
	if point != "" {
		cmd.Env = append(cmd.Env, crash.EnvVar+"="+point)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
		t.Fatalf("child %s at %s: %v\n%s", op, point, err, out)
	}
	if err != nil {
		t.Fatalf("child %s: %v\n%s", op, err, out)
	}
	return false
}

type crashCase struct {
	op     string
	args   []string
	points []string // each "NAME" or "NAME@K"
	// after computes the expected tags once the operation took effect.
	after        func(before map[string]string) map[string]string
	allowOrphans bool // the operation writes blobs before its transaction
	// durableFrom is the first point from which the operation must survive.
	durableFrom string
}

var txnPoints = []string{
	crash.IndexTempWritten, crash.TxnJournaled, crash.IndexRenamed, crash.IndexSynced,
	crash.BlobUnlinked + "@1", crash.BlobUnlinked + "@3", crash.BlobDirSynced, crash.TxnCleared,
}

func TestCrashPoints(t *testing.T) {
	gold := t.TempDir()
	before := fixture(t, gold)
	src := t.TempDir() // a layout to import from
	func() {
		s, err := store.Open(context.Background(), src, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		b := testutil.NewBuilder(t, s, 7)
		b.Tag(b.Manifest([]v1.Descriptor{b.Random(300)}, 2), "imported")
	}()
	importedDigest := tags(t, src)["imported"]

	cases := []crashCase{
		{op: "delete", args: []string{"img1", "img2", "multi"}, points: txnPoints, durableFrom: crash.TxnJournaled,
			after: func(b map[string]string) map[string]string { return without(b, "img1", "img2", "multi") }},
		{op: "delete", args: []string{"twin-a"}, points: txnPoints[:4], durableFrom: crash.TxnJournaled,
			after: func(b map[string]string) map[string]string { return without(b, "twin-a") }},
		{op: "untag", args: []string{"img3"}, points: txnPoints[:4], durableFrom: crash.TxnJournaled,
			after: func(b map[string]string) map[string]string {
				out := without(b, "img3")
				out["<none>"+b["img3"]] = b["img3"]
				return out
			}},
		{op: "tag", args: []string{"img4", "img4-copy", "img5"}, points: slices.Concat(txnPoints[:4], []string{crash.TxnCleared}), durableFrom: crash.TxnJournaled,
			after: func(b map[string]string) map[string]string {
				out := map[string]string{}
				for k, v := range b {
					out[k] = v
				}
				out["img4-copy"], out["img5"] = b["img4"], b["img4"]
				out["<none>"+b["img5"]] = b["img5"]
				return out
			}},
		{op: "import", args: []string{src, "imported"}, allowOrphans: true, durableFrom: crash.TxnJournaled,
			points: []string{crash.IngestWritten, crash.IngestRenamed + "@2", crash.IngestSynced + "@4", crash.TxnJournaled, crash.IndexRenamed, crash.IndexSynced, crash.TxnCleared},
			after: func(b map[string]string) map[string]string {
				out := without(b)
				out["imported"] = importedDigest
				return out
			}},
		{op: "put", args: []string{"fresh"}, allowOrphans: true, durableFrom: crash.TxnJournaled,
			points: []string{crash.IngestWritten, crash.IngestRenamed, crash.IngestSynced + "@3", crash.TxnJournaled, crash.IndexSynced},
			after:  nil},
	}
	tally := newTally(t)
	for _, c := range cases {
		for _, point := range c.points {
			name := c.op + "/" + strings.Join(c.args[min(len(c.args)-1, 1):], ",") + "/" + point
			if c.op == "import" {
				name = "import/" + point
			}
			tally.run(t, name, func(t *testing.T) {
				dir := t.TempDir()
				copyDir(t, gold, dir)
				killed := runChild(t, dir, c.op, point, c.args...)
				if !killed {
					t.Fatalf("crash point %s was never reached", point)
				}
				tally.killed(t, dir, "")
				assertRecovered(t, dir, c, point, before)
			})
		}
	}
}

// TestCrashPointsTrash kills a delete that takes its blobs out of the
// layout through the trash at each step, and the handle's background
// unlinking of the trash after the delete returned: recovery completes the
// delete, and the trash the dead process left is unlinked by the next open
// (fsck reports a leftover otherwise).
func TestCrashPointsTrash(t *testing.T) {
	gold := t.TempDir()
	before := fixture(t, gold)
	c := crashCase{op: "delete", args: []string{"img1", "img2", "multi"}, durableFrom: crash.TxnJournaled,
		after: func(b map[string]string) map[string]string { return without(b, "img1", "img2", "multi") }}
	tally := newTally(t)
	for _, point := range append(txnPoints, crash.TrashUnlinked+"@1", crash.TrashUnlinked+"@4") {
		tally.run(t, point, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, gold, dir)
			if !runChildEnv(t, dir, c.op, point, []string{envChildTrash + "=1"}, c.args...) {
				t.Fatalf("crash point %s was never reached", point)
			}
			tally.killed(t, dir, "")
			if pointName(point) == crash.BlobUnlinked {
				// Before the reclaimer is given anything to unlink.
				if ents, _ := os.ReadDir(filepath.Join(dir, protocol.TrashDir)); len(ents) == 0 {
					t.Fatalf("killed at %s with nothing in the trash: the delete did not go through it", point)
				}
			}
			assertRecovered(t, dir, c, point, before)
			if ents, _ := os.ReadDir(filepath.Join(dir, protocol.TrashDir)); len(ents) != 0 {
				t.Fatalf("%d files left in the trash after recovery, e.g. %s", len(ents), ents[0].Name())
			}
		})
	}
}

func pointName(p string) string { n, _, _ := strings.Cut(p, "@"); return n }

// order of the crash points along one transaction.
var pointOrder = map[string]int{
	crash.IngestWritten: 1, crash.IngestRenamed: 2, crash.IngestSynced: 3,
	crash.IndexTempWritten: 9, crash.TxnJournaled: 10, crash.IndexRenamed: 12, crash.IndexSynced: 13,
	crash.BlobUnlinked: 14, crash.BlobDirSynced: 15, crash.TxnCleared: 16, crash.TrashUnlinked: 17,
}

func assertRecovered(t *testing.T, dir string, c crashCase, point string, before map[string]string) {
	t.Helper()
	got := tags(t, dir) // opens: runs recovery
	durable := pointOrder[pointName(point)] >= pointOrder[c.durableFrom]
	switch {
	case c.after == nil: // put: the new tag is there iff durable
		_, has := got["fresh"]
		if has != durable {
			t.Fatalf("after crash at %s: tag fresh present=%v, want %v", point, has, durable)
		}
		if !equalMaps(without(got, "fresh"), before) {
			t.Fatalf("after crash at %s: other tags changed:\n got %v\nwant %v", point, got, before)
		}
	case durable:
		if want := c.after(before); !equalMaps(got, want) {
			t.Fatalf("after crash at %s: the journaled transaction was not completed:\n got %v\nwant %v", point, got, want)
		}
	default:
		if !equalMaps(got, before) {
			t.Fatalf("after crash at %s (before the journal commit): tags changed:\n got %v\nwant %v", point, got, before)
		}
	}
	checkClean(t, dir, c.allowOrphans && !durable)
	// Idempotence: a second recovery does nothing and changes no file.
	filesBefore := files(t, dir)
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	acts, err := s.Recover(context.Background())
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(acts) != 0 {
		t.Fatalf("second recovery did something: %+v", acts)
	}
	if fa := files(t, dir); strings.Join(fa, "\n") != strings.Join(filesBefore, "\n") {
		t.Fatalf("second recovery changed files")
	}
}

// TestCrashDuringRecovery interrupts a delete after its journal commit, then
// interrupts the recovery itself at each of its steps, then recovers for good.
func TestCrashDuringRecovery(t *testing.T) {
	gold := t.TempDir()
	before := fixture(t, gold)
	want := without(before, "img0", "img1")
	tally := newTally(t)
	for _, first := range []string{crash.TxnJournaled, crash.IndexSynced, crash.BlobUnlinked + "@2"} {
		for _, second := range []string{crash.IndexTempWritten, crash.RecoverReplayed, crash.RecoverUnlinked + "@1", crash.RecoverUnlinked + "@2", crash.BlobDirSynced, crash.TxnCleared} {
			tally.run(t, first+"/"+second, func(t *testing.T) {
				dir := t.TempDir()
				copyDir(t, gold, dir)
				if !runChild(t, dir, "delete", first, "img0", "img1") {
					t.Fatalf("first crash point %s not reached", first)
				}
				tally.killed(t, dir, "")
				// The child's Open runs recovery; a point it never reaches
				// (no replay needed once index.json is new) is fine.
				if runChild(t, dir, "open", second) {
					tally.killed(t, dir, "") // the recovery, killed
				}
				got := tags(t, dir)
				if !equalMaps(got, want) {
					t.Fatalf("got %v\nwant %v", got, want)
				}
				checkClean(t, dir, false)
			})
		}
	}
}

// TestCrashAdoptInitRecount covers the crash points outside transactions:
// creating the journal of an adopted layout, initializing a new layout, and
// recounting after another tool changed index.json.
func TestCrashAdoptInitRecount(t *testing.T) {
	t.Run("adopt/"+crash.JournalCreated, func(t *testing.T) {
		gold := t.TempDir()
		before := fixture(t, gold)
		if err := os.RemoveAll(filepath.Join(gold, ".ocistore")); err != nil {
			t.Fatal(err)
		}
		if !runChild(t, gold, "open", crash.JournalCreated) {
			t.Fatal("not reached")
		}
		if got := tags(t, gold); !equalMaps(got, before) {
			t.Fatalf("got %v want %v", got, before)
		}
		checkClean(t, gold, false)
	})
	t.Run("init/"+crash.LayoutInitialized, func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "new")
		if !runChild(t, dir, "open", crash.LayoutInitialized) {
			t.Fatal("not reached")
		}
		if got := tags(t, dir); len(got) != 0 {
			t.Fatalf("new layout has %v", got)
		}
		checkClean(t, dir, false)
	})
	t.Run("external/"+crash.RecoverRecounted, func(t *testing.T) {
		dir := t.TempDir()
		before := fixture(t, dir)
		// Another tool adds a tag for img0's manifest by rewriting index.json.
		ixPath := filepath.Join(dir, "index.json")
		raw, err := os.ReadFile(ixPath)
		if err != nil {
			t.Fatal(err)
		}
		d := before["img0"]
		entry := fmt.Sprintf(`,{"mediaType":%q,"digest":%q,"size":%d,"annotations":{"org.opencontainers.image.ref.name":"by-skopeo"}}]`, v1.MediaTypeImageManifest, d, blobSize(t, dir, d))
		edited := strings.Replace(string(raw), "]", entry, 1)
		if err := os.WriteFile(ixPath, []byte(edited), 0o644); err != nil {
			t.Fatal(err)
		}
		if !runChild(t, dir, "delete", crash.RecoverRecounted, "img0") {
			t.Fatal("not reached")
		}
		runChild(t, dir, "delete", "", "img0")
		got := tags(t, dir)
		if got["by-skopeo"] != d {
			t.Fatalf("tag written by another tool lost: %v", got)
		}
		checkClean(t, dir, false)
	})
}

// TestCrashThenExternalChange: a delete is journaled, the process dies, and
// before ocistore runs again another tool rewrites index.json so that it
// still uses the image being deleted. Recovery must roll back: drop the
// record and unlink nothing (the last row of the recovery table, DESIGN.md §5.2).
func TestCrashThenExternalChange(t *testing.T) {
	dir := t.TempDir()
	before := fixture(t, dir)
	if !runChild(t, dir, "delete", crash.TxnJournaled, "img1") {
		t.Fatal("not reached")
	}
	ixPath := filepath.Join(dir, "index.json")
	raw, err := os.ReadFile(ixPath)
	if err != nil {
		t.Fatal(err)
	}
	d := before["img1"]
	entry := fmt.Sprintf(`,{"mediaType":%q,"digest":%q,"size":%d,"annotations":{"org.opencontainers.image.ref.name":"kept-by-other-tool"}}]`, v1.MediaTypeImageManifest, d, blobSize(t, dir, d))
	if err := os.WriteFile(ixPath, []byte(strings.Replace(string(raw), "]", entry, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	got := tags(t, dir)
	want := without(before)
	want["kept-by-other-tool"] = d
	if !equalMaps(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	checkClean(t, dir, false)
}

// TestRecoveryTable walks the rows of the recovery table (DESIGN.md §5.2) for a journaled delete
// whose process died: index.json on disk is the new one, the old one,
// missing, empty, torn, or written by another tool.
func TestRecoveryTable(t *testing.T) {
	gold := t.TempDir()
	before := fixture(t, gold)
	after := without(before, "img0", "img4")
	for _, tc := range []struct {
		name   string
		point  string
		damage func(t *testing.T, ix string)
		want   map[string]string
	}{
		{"new-on-disk", crash.IndexSynced, nil, after},
		{"old-on-disk", crash.TxnJournaled, nil, after},
		{"missing", crash.TxnJournaled, func(t *testing.T, ix string) { must(t, os.Remove(ix)) }, after},
		{"empty", crash.TxnJournaled, func(t *testing.T, ix string) { must(t, os.Truncate(ix, 0)) }, after},
		{"torn", crash.TxnJournaled, func(t *testing.T, ix string) {
			raw, err := os.ReadFile(ix)
			must(t, err)
			must(t, os.WriteFile(ix, raw[:len(raw)/2], 0o644))
		}, after},
		{"other-tool", crash.TxnJournaled, func(t *testing.T, ix string) {
			// Another tool removed img1 (and so wrote a different index).
			raw, err := os.ReadFile(ix)
			must(t, err)
			var doc map[string]any
			must(t, json.Unmarshal(raw, &doc))
			var kept []any
			for _, m := range doc["manifests"].([]any) {
				if m.(map[string]any)["annotations"].(map[string]any)["org.opencontainers.image.ref.name"] != "img1" {
					kept = append(kept, m)
				}
			}
			doc["manifests"] = kept
			out, _ := json.Marshal(doc)
			must(t, os.WriteFile(ix, out, 0o644))
		}, without(before, "img1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, gold, dir)
			if !runChild(t, dir, "delete", tc.point, "img0", "img4") {
				t.Fatal("not reached")
			}
			if tc.damage != nil {
				tc.damage(t, filepath.Join(dir, "index.json"))
			}
			if got := tags(t, dir); !equalMaps(got, tc.want) {
				t.Fatalf("got %v\nwant %v", got, tc.want)
			}
			// img1's blobs are orphans after the other tool's removal (that
			// tool does not collect them); everything else must be clean.
			checkClean(t, dir, tc.name == "other-tool")
		})
	}
}

// The crash points of GC, prune and a layout sharing its blob directory.

// TestCrashGC kills a GC at each step of its transaction; recovery removes
// all of the garbage (once journaled) or none, and never anything else.
func TestCrashGC(t *testing.T) {
	gold := t.TempDir()
	before := fixture(t, gold)
	func() {
		s, err := store.Open(context.Background(), gold, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		b := testutil.NewBuilder(t, s, 5)
		for i := 0; i < 4; i++ {
			b.Random(100 + i)
		}
		if _, err := s.Delete(context.Background(), "img0"); err != nil {
			t.Fatal(err)
		}
		before = without(before, "img0")
		// Drop another tool's blobs in the sha512 directory too.
		for i := 0; i < 2; i++ {
			c := []byte(fmt.Sprintf("sha512 garbage %d", i))
			p := filepath.Join(gold, filepath.FromSlash(layout.BlobPath(digest.SHA512.FromBytes(c))))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, c, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}()
	all := files(t, gold)
	points := []string{crash.TxnJournaled, crash.BlobUnlinked + "@1", crash.BlobUnlinked + "@5", crash.BlobDirSynced, crash.TxnCleared}
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, gold, dir)
			if !runChild(t, dir, "gc", point) {
				t.Fatalf("crash point %s not reached", point)
			}
			if got := tags(t, dir); !equalMaps(got, before) {
				t.Fatalf("gc changed tags: %v", got)
			}
			checkClean(t, dir, false)
			left := files(t, dir)
			if len(left) != len(all)-6 {
				t.Errorf("%d files left of %d, want 6 removed", len(left), len(all))
			}
		})
	}
}

// TestCrashPrune kills a prune (many images and a referrer, one
// transaction) at each step; recovery leaves all of it done or none.
func TestCrashPrune(t *testing.T) {
	gold := t.TempDir()
	func() {
		l := libOpen(t, gold, 4)
		base := l.b.Random(500)
		for i := 0; i < 6; i++ {
			l.tag(l.imageWith(day(i+1), nil, []v1.Descriptor{base}, 2), fmt.Sprintf("app:%d", i))
		}
		for i := 0; i < 3; i++ {
			l.tag(l.imageWith(day(i+1), nil, []v1.Descriptor{base}, 1), fmt.Sprintf("keep:%d", i))
		}
		first, err := l.s.Resolve(l.ctx, "app:0")
		if err != nil {
			t.Fatal(err)
		}
		l.tag(l.b.Artifact("sig", &first, "sig"), "sigs:app-0")
		l.s.Close()
	}()
	before := tags(t, gold)
	after := without(before, "app:0", "app:1", "app:2", "app:3", "app:4", "sigs:app-0")
	for _, point := range txnPoints {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, gold, dir)
			if !runChild(t, dir, "prune", point, "app:*") {
				t.Fatalf("crash point %s not reached", point)
			}
			got := tags(t, dir)
			durable := pointOrder[pointName(point)] >= pointOrder[crash.TxnJournaled]
			want := before
			if durable {
				want = after
			}
			if !equalMaps(got, want) {
				t.Fatalf("after a crash at %s:\n got %v\nwant %v", point, got, want)
			}
			checkClean(t, dir, false)
		})
	}
}

// TestSharedBlobDirCrash kills a process deleting images of one layout at
// every crash point of the protocol; then another layout sharing the blob
// directory runs a GC and a delete first. Its lock recovers the crashed
// layout's record before anything else, so no blob either layout's
// index.json reaches is freed, the crashed delete is all or nothing, and
// both layouts end consistent with no orphan.
func TestSharedBlobDirCrash(t *testing.T) {
	points := []string{crash.TxnJournaled, crash.IndexTempWritten, crash.IndexRenamed, crash.IndexSynced,
		crash.BlobUnlinked + "@1", crash.BlobUnlinked + "@3", crash.BlobDirSynced, crash.TxnCleared}
	tally := newTally(t)
	for _, point := range points {
		tally.run(t, point, func(t *testing.T) {
			ss := newSharedSet(t, 2)
			a, b := ss.s[0], ss.s[1]
			base := []v1.Descriptor{ss.b[0].Random(300), ss.b[0].Random(200)}
			ma, ma2 := ss.b[0].Manifest(base, 2), ss.b[0].Manifest(base, 1)
			mb := ss.b[1].Manifest(base, 1)
			for _, tg := range []struct {
				s    *store.Store
				d    v1.Descriptor
				name string
			}{{a, ma, "a1"}, {a, ma2, "a2"}, {b, mb, "b1"}, {b, ma2, "from-a"}} {
				if err := tg.s.Tag(ss.ctx, tg.d, tg.name); err != nil {
					t.Fatal(err)
				}
			}
			beforeA := sharedTags(t, ss.dirs[0])
			for i := range ss.s {
				ss.s[i].Close()
				ss.s[i] = nil
			}
			if !runChild(t, ss.dirs[0], "delete", point, "a1", "a2") {
				t.Fatalf("the child was not killed at %s", point)
			}
			// Both layouts, as a foreign reader sees them before recovery.
			tally.killed(t, ss.dirs[0], ss.shared)
			tally.foreign++
			if err := testutil.ForeignReadableDir(ss.dirs[1], ss.shared); err != nil {
				t.Errorf("foreign reader, layout b, after a's kill and before recovery: %v", err)
			}
			// b works first: its lock recovers a's record.
			ss.open(1)
			if _, err := ss.s[1].GC(ss.ctx, store.GCOptions{}); err != nil {
				t.Fatal(err)
			}
			for _, dir := range ss.dirs {
				for name, d := range sharedTags(t, dir) {
					var m v1.Descriptor
					for _, c := range []v1.Descriptor{ma, ma2, mb} {
						if c.Digest.String() == d {
							m = c
						}
					}
					for _, bd := range ss.graph(m) {
						if !ss.blob(bd) {
							t.Errorf("after %s and a gc from b: %s:%s reaches %s, which is gone", point, dir, name, bd)
						}
					}
				}
			}
			if _, err := ss.s[1].Delete(ss.ctx, "b1"); err != nil {
				t.Fatal(err)
			}
			ss.open(0)
			gotA := sharedTags(t, ss.dirs[0])
			if len(gotA) != 0 && !mapsEqual(gotA, beforeA) {
				t.Errorf("after %s layout a has %v: neither before %v nor after (none)", point, gotA, beforeA)
			}
			ss.want(true, ss.graph(ma2)...) // b's from-a tag keeps it
			ss.clean()
		})
	}
}
