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
	names, want := blobLayout(t, dir, 3*parallelRemoveMin)
	fsys, err := OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	got, after := reportedOnce(t)
	err = RemoveFiles(fsys, SyncBlobDir, names, after)
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

// blobLayout makes n blob files under dir, every fifth one missing, and
// returns their names and whether each exists.
func blobLayout(t *testing.T, dir string, n int) ([]string, map[string]bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, ".ocistore"), 0o755); err != nil {
		t.Fatal(err)
	}
	var names []string
	want := map[string]bool{}
	for i := range n {
		name := fmt.Sprintf("blobs/sha256/%064x", i)
		names = append(names, name)
		want[name] = i%5 != 0
		if want[name] {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return names, want
}

// reportedOnce returns an after callback for RemoveFiles and TrashFiles
// (safe for their workers) and what it recorded: whether each name
// existed. A name reported twice fails the test.
func reportedOnce(t *testing.T) (map[string]bool, func(name string, existed bool)) {
	var mu sync.Mutex
	got := map[string]bool{}
	return got, func(name string, existed bool) {
		mu.Lock()
		defer mu.Unlock()
		if _, dup := got[name]; dup {
			t.Errorf("%s reported twice", name)
		}
		got[name] = existed
	}
}
