package fsio

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestRemoveFilesParallel: a batch large enough for the parallel path
// removes every file, reports each name once with whether a file was
// there, and stops at an error that is not "does not exist".
func TestRemoveFilesParallel(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	var names []string
	want := map[string]bool{}
	for i := range 3 * parallelRemoveMin {
		n := fmt.Sprintf("blobs/sha256/%064x", i)
		names = append(names, n)
		want[n] = i%5 != 0 // every fifth is already gone
		if want[n] {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	fsys, err := OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	var mu sync.Mutex
	got := map[string]bool{}
	err = RemoveFiles(fsys, SyncBlobDir, names, func(n string, existed bool) {
		mu.Lock()
		defer mu.Unlock()
		if _, dup := got[n]; dup {
			t.Errorf("%s reported twice", n)
		}
		got[n] = existed
	})
	if err != nil {
		t.Fatal(err)
	}
	for n, w := range want {
		if g, ok := got[n]; !ok || g != w {
			t.Errorf("%s: reported %v (ok=%v), want existed=%v", n, g, ok, w)
		}
		if _, err := os.Lstat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s still there: %v", n, err)
		}
	}

	// A name that cannot be removed (a non-empty directory) is an error.
	bad := filepath.Join(dir, "blobs", "sha256", "dir")
	if err := os.MkdirAll(filepath.Join(bad, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	names = append(names[:2*parallelRemoveMin], "blobs/sha256/dir")
	if err := RemoveFiles(fsys, SyncBlobDir, names, nil); err == nil {
		t.Error("removing a non-empty directory reported no error")
	}
}
