package store_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/store"
)

// TestJournalRebuild: the journal is derived state plus intents. Missing,
// empty or corrupt, it is rebuilt from the layout, the store says so, and
// nothing in the layout changes.
func TestJournalRebuild(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
		aside  bool // the damaged file is kept aside
	}{
		{"missing", func(t *testing.T, p string) { must(t, os.Remove(p)) }, false},
		{"empty", func(t *testing.T, p string) { must(t, os.Truncate(p, 0)) }, false},
		{"garbage", func(t *testing.T, p string) {
			must(t, os.WriteFile(p, bytes.Repeat([]byte("not a bbolt database "), 1000), 0o644))
		}, true},
		{"bad-meta-pages", func(t *testing.T, p string) {
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			must(t, err)
			defer f.Close()
			// Both meta pages (page 0 and 1, 4 KiB each) get scribbled on.
			for _, off := range []int64{16, 4096 + 16} {
				_, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, 64), off)
				must(t, err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			before := fixture(t, dir)
			filesBefore := files(t, dir)
			tc.damage(t, filepath.Join(dir, protocol.JournalFile))
			var logs bytes.Buffer
			s, err := store.Open(context.Background(), dir, &store.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatalf("open with a %s journal: %v", tc.name, err)
			}
			s.Close()
			if !strings.Contains(logs.String(), "journal") {
				t.Errorf("rebuilding the journal was not logged:\n%s", logs.String())
			}
			if got := tags(t, dir); !equalMaps(got, before) {
				t.Fatalf("tags changed: %v", got)
			}
			if got := files(t, dir); strings.Join(got, "\n") != strings.Join(filesBefore, "\n") {
				t.Fatalf("layout files changed")
			}
			checkClean(t, dir, false)
			asides, _ := filepath.Glob(filepath.Join(dir, protocol.JournalFile+".corrupt-*"))
			if tc.aside != (len(asides) == 1) {
				t.Fatalf("damaged journal kept aside: %v, want %v", asides, tc.aside)
			}
		})
	}
}

// TestIndexMissingIsNeverReplaced: with the journal intact but index.json
// gone, Open refuses (naming index.json) rather than creating an empty index
// over a layout full of blobs, and deletes nothing.
func TestIndexMissingIsNeverReplaced(t *testing.T) {
	dir := t.TempDir()
	fixture(t, dir)
	must(t, os.Remove(filepath.Join(dir, "index.json")))
	filesBefore := files(t, dir)
	_, err := store.Open(context.Background(), dir, nil)
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "index.json") {
		t.Fatalf("open without index.json: %v", err)
	}
	if got := files(t, dir); strings.Join(got, "\n") != strings.Join(filesBefore, "\n") {
		t.Fatalf("files changed")
	}
	if _, err := os.Stat(filepath.Join(dir, "index.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an index.json was created")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestJournalHeldIsNeverRebuilt: a journal that looks damaged while
// another writer holds it (truncated under it here; a reader without the
// lock could see a commit in progress that way) is neither rebuilt nor
// moved aside by an open: the open waits for the lock, and once the
// writer is done the journal is the same file and the layout's tags are
// all there.
func TestJournalHeldIsNeverRebuilt(t *testing.T) {
	dir := t.TempDir()
	before := fixture(t, dir)
	p := filepath.Join(dir, protocol.JournalFile)
	held, err := journal.Open(p, journal.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(p)
	must(t, err)
	fi, err := os.Stat(p)
	must(t, err)
	must(t, os.Truncate(p, 8192))
	for _, o := range []*store.Options{{LockTimeout: 200 * time.Millisecond}, {LockTimeout: -1}} {
		if s, err := store.Open(context.Background(), dir, o); !errors.Is(err, store.ErrLocked) {
			if s != nil {
				s.Close()
			}
			t.Errorf("open (lock timeout %v) while another writer holds the journal: %v, want ErrLocked", o.LockTimeout, err)
		}
	}
	ents, err := os.ReadDir(filepath.Join(dir, ".ocistore"))
	must(t, err)
	for _, e := range ents {
		if strings.Contains(e.Name(), "corrupt") || strings.Contains(e.Name(), "rebuild") {
			t.Errorf("%s: the held journal was judged damaged", e.Name())
		}
	}
	must(t, os.WriteFile(p, whole, 0o644))
	must(t, held.Close())
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatalf("open once the writer is done: %v", err)
	}
	s.Close()
	if now, err := os.Stat(p); err != nil || !os.SameFile(fi, now) {
		t.Errorf("the journal was replaced: %v", err)
	}
	if got := tags(t, dir); !equalMaps(got, before) {
		t.Fatalf("tags changed: %v, want %v", got, before)
	}
}
