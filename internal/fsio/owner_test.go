package fsio_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/testing/memfs"
)

// TestOwnerLock: an owner's file is locked for as long as it lives: a
// cleaner's Lock of it fails with ErrHeld (through another open, in the
// same process too), and after Release the file is gone (a cleaner's Lock
// says it does not exist). An owner file whose lock is free (its process
// is gone) is locked by the cleaner, and by it only, until Unlock. Both on
// the OS and on memfs.
func TestOwnerLock(t *testing.T) {
	for _, kind := range []string{"os", "memfs"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			var fsys fsio.FS = memfs.New(dir)
			if kind == "os" {
				o, err := fsio.OpenOS(dir)
				if err != nil {
					t.Fatal(err)
				}
				defer o.Close()
				fsys = o
			}
			if err := fsys.Mkdir("state", 0o755); err != nil {
				t.Fatal(err)
			}
			own, err := fsio.NewOwner(fsys, "state/owners")
			if err != nil {
				t.Fatal(err)
			}
			tok := own.Token()
			if !fsio.IsToken(tok) {
				t.Fatalf("token %q", tok)
			}
			name := "state/owners/" + tok
			if _, err := fsys.Lock(name, false); !errors.Is(err, fsio.ErrHeld) {
				t.Fatalf("Lock of a live owner's file: %v, want ErrHeld", err)
			}
			if _, err := fsys.Lock(name, true); !errors.Is(err, fs.ErrExist) {
				t.Fatalf("Lock creating an existing file: %v, want ErrExist", err)
			}
			if err := own.Release(); err != nil {
				t.Fatal(err)
			}
			if _, err := fsys.Lock(name, false); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Lock of a released owner's file: %v, want ErrNotExist", err)
			}

			// An owner file left by a process that is gone: no lock.
			gone := "state/owners/" + "0123456789abcdef0123456789abcdef"
			l, err := fsys.Lock(gone, true)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
			l, err = fsys.Lock(gone, false)
			if err != nil {
				t.Fatalf("Lock of a free owner file: %v", err)
			}
			if _, err := fsys.Lock(gone, false); !errors.Is(err, fsio.ErrHeld) {
				t.Fatalf("second Lock while the cleaner holds it: %v, want ErrHeld", err)
			}
			if err := l.Unlock(); err != nil {
				t.Fatal(err)
			}
			if err := fsys.Mkdir("state/dir", 0o755); err != nil {
				t.Fatal(err)
			}
			if _, err := fsys.Lock("state/dir", false); !errors.Is(err, fsio.ErrNotRegular) {
				t.Fatalf("Lock of a directory: %v, want ErrNotRegular", err)
			}
		})
	}
}

// TestLockNotThroughSymlink: Lock opens no symlink as its last element
// (nor what it points to), even one inside the root.
func TestLockNotThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "target"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	o, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if _, err := o.Lock("link", false); !errors.Is(err, fsio.ErrNotRegular) {
		t.Fatalf("Lock of a symlink: %v, want ErrNotRegular", err)
	}
	l, err := o.Lock("target", false)
	if err != nil {
		t.Fatalf("the symlink's target was locked: %v", err)
	}
	l.Unlock()
}

// TestOwnerTokensDiffer: two owners never share a token.
func TestOwnerTokensDiffer(t *testing.T) {
	fsys := memfs.New(t.TempDir())
	seen := map[string]bool{}
	for range 64 {
		o, err := fsio.NewOwner(fsys, "owners")
		if err != nil {
			t.Fatal(err)
		}
		if seen[o.Token()] {
			t.Fatalf("token %s twice", o.Token())
		}
		seen[o.Token()] = true
	}
}
