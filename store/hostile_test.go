package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// hostileCopy materializes the clean case of the damaged corpus (a canary
// file next to it) and returns the layout and a directory outside it that
// holds a journal with a pending record: a journal no check may read.
func hostileCopy(t *testing.T) (dir, outsideDir string, outside func()) {
	t.Helper()
	var clean testutil.DamagedCase
	for _, c := range testutil.DamagedCases(t, damagedRoot) {
		if c.Name == "pending-replay" {
			clean = c
		}
	}
	dir, outside = clean.Materialize(t)
	outsideDir = filepath.Join(t.TempDir(), "elsewhere")
	testutil.CopyTree(t, filepath.Join(dir, ".ocistore"), outsideDir)
	return dir, outsideDir, outside
}

// TestHostileStateDir: .ocistore, or the journal in it, is a symlink to a
// directory or file outside the layout (holding a journal with a pending
// record). fsck reports it (not-directory, journal-corrupt) and never opens
// what it points at; repair moves the link aside as it is; nothing outside
// the layout changes.
func TestHostileStateDir(t *testing.T) {
	for _, which := range []string{".ocistore", ".ocistore/journal.db"} {
		t.Run(which, func(t *testing.T) {
			ctx := context.Background()
			dir, elsewhere, outside := hostileCopy(t)
			target := elsewhere
			if which != ".ocistore" {
				target = filepath.Join(elsewhere, "journal.db")
			}
			if err := os.RemoveAll(filepath.Join(dir, which)); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(dir, which)); err != nil {
				t.Fatal(err)
			}
			before := testutil.Snapshot(t, elsewhere)
			watch := testutil.WatchFiles(t, elsewhere, filepath.Join(elsewhere, "journal.db"))
			rep, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: time.Second, Deep: true})
			if err != nil {
				t.Fatal(err)
			}
			var found bool
			for _, p := range rep.Problems {
				if p.Kind == recovery.KindPending {
					t.Errorf("fsck read the journal outside the layout: %v", p)
				}
				want := recovery.KindJournalCorrupt
				if which == ".ocistore" {
					want = recovery.KindNotDirectory
				}
				if p.Kind == want && p.Path == which && strings.Contains(p.Detail, "symlink") {
					found = true
				}
			}
			if !found {
				t.Errorf("the symlink is not reported: %v", rep.Problems)
			}
			if _, err := store.PendingRecords(dir, time.Second); !errors.Is(err, store.ErrCorrupt) {
				t.Errorf("PendingRecords = %v", err)
			}
			res, err := store.Repair(ctx, dir, nil)
			if err != nil || !strings.Contains(res.Actions[0].Detail, "symlink") {
				t.Errorf("repair with %s a symlink = %+v, %v", which, res, err)
			}
			watch.Check(t) // nothing outside was opened, read or written
			testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, elsewhere))
			if after := testutil.Snapshot(t, elsewhere); len(after) != len(before) {
				t.Errorf("files appeared outside the layout: %v", after)
			}
			outside()
		})
	}
}

// TestHostileBlobsDir: blobs/ or blobs/sha256 is a symlink out of the
// layout: fsck reports it (not-directory); repair with DropBroken refuses
// (every image is broken without it), naming it; repair moves it to the
// quarantine folder; nothing outside changes.
func TestHostileBlobsDir(t *testing.T) {
	for _, which := range []string{"blobs", "blobs/sha256"} {
		t.Run(which, func(t *testing.T) {
			ctx := context.Background()
			dir, _, outside := hostileCopy(t)
			elsewhere := filepath.Join(t.TempDir(), "blobs")
			testutil.CopyTree(t, filepath.Join(dir, which), elsewhere)
			before := testutil.Snapshot(t, elsewhere)
			if err := os.RemoveAll(filepath.Join(dir, which)); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(elsewhere, filepath.Join(dir, which)); err != nil {
				t.Fatal(err)
			}
			watch := testutil.WatchFiles(t, elsewhere)
			rep, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: time.Second, Deep: true})
			if err != nil || !strings.Contains(fmt.Sprint(rep.Problems), recovery.KindNotDirectory+" ("+which+"): is a symlink") {
				t.Errorf("fsck = %v, %v, want a not-directory problem naming %s", rep, err, which)
			}
			if _, err := store.Repair(ctx, dir, &store.RepairOptions{DropBroken: true}); !errors.Is(err, store.ErrRefused) || !strings.Contains(err.Error(), "blobs") {
				t.Errorf("repair = %v, want a refusal naming blobs", err)
			}
			res, err := store.Repair(ctx, dir, nil)
			if err != nil || len(res.Actions) == 0 || !strings.Contains(res.Actions[0].Detail, which+" is a symlink") || res.OK() {
				t.Errorf("repair = %+v, %v, want the link moved aside, and the images broken", res, err)
			}
			watch.Check(t) // nothing outside was opened, read or written
			after := testutil.Snapshot(t, elsewhere)
			testutil.AssertNothingRemoved(t, before, after)
			if len(after) != len(before) {
				t.Errorf("files appeared outside the layout")
			}
			outside()
		})
	}
}

// TestHostileQuarantineDir: the quarantine folder is a symlink to a
// directory out of the layout, and a layer is damaged. fsck reports the
// link and does not look into it; repair moves the link aside (never
// following it), quarantines the layer in a new folder inside the layout,
// and nothing outside is opened or written.
func TestHostileQuarantineDir(t *testing.T) {
	ctx := context.Background()
	c := testutil.DamagedCaseNamed(t, damagedRoot, "digest-mismatch-layer")
	dir, outside := c.Materialize(t)
	elsewhere := t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(dir, protocol.QuarantineDir)); err != nil {
		t.Fatal(err)
	}
	watch := testutil.WatchFiles(t, elsewhere)
	rep, err := store.CheckDir(ctx, dir, &recovery.CheckOptions{LockTimeout: time.Second, Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.ProblemLines(rep.Problems); !strings.Contains(got, "not-directory (.ocistore/quarantine): is a symlink") || !strings.Contains(got, "digest-mismatch") {
		t.Errorf("fsck:\n%s", got)
	}
	res, err := store.Repair(ctx, dir, &store.RepairOptions{Check: recovery.CheckOptions{Deep: true}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Actions) < 2 || res.Actions[0].Kind != recovery.ActionMovedAside || res.Actions[1].Kind != recovery.ActionQuarantined {
		t.Errorf("actions %v", res.Actions)
	}
	fi, err := os.Lstat(filepath.Join(dir, protocol.QuarantineDir))
	if err != nil || !fi.IsDir() {
		t.Errorf("quarantine folder: %v, %v", fi, err)
	}
	if links, _ := filepath.Glob(filepath.Join(dir, protocol.QuarantineDir+".corrupt-*")); len(links) != 1 {
		t.Errorf("the link was not moved aside: %v", links)
	} else if target, _ := os.Readlink(links[0]); target != elsewhere {
		t.Errorf("moved aside: %s -> %s", links[0], target)
	}
	watch.Check(t)
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("repair wrote outside the layout: %v", ents)
	}
	outside()
}
