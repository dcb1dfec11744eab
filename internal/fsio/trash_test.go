package fsio

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestTrashFiles: every name leaves its directory, those that existed into
// the trash under the prefix (with their contents), each reported once with
// whether it existed, with one worker and with several (linkat between
// directory handles, then unlinkat; the path links of a file system
// without handles are taken by the crash tests, on memfs).
func TestTrashFiles(t *testing.T) {
	for _, n := range []int{3, 3 * parallelRemoveMin} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			dir := t.TempDir()
			names, want := blobLayout(t, dir, n)
			fsys, err := OpenOS(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer fsys.Close()
			got, after := reportedOnce(t)
			trashed, err := TrashFiles(fsys, SyncBlobDir, names, ".ocistore/trash", "42-", after)
			if err != nil {
				t.Fatal(err)
			}
			var wantTrash []string
			for _, name := range names {
				if g, ok := got[name]; !ok || g != want[name] {
					t.Errorf("%s: reported %v (ok=%v), want existed=%v", name, g, ok, want[name])
				}
				if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
					t.Errorf("%s still in the layout: %v", name, err)
				}
				if want[name] {
					to := ".ocistore/trash/42-blobs-sha256-" + filepath.Base(name)
					wantTrash = append(wantTrash, to)
					b, err := os.ReadFile(filepath.Join(dir, to))
					if err != nil || string(b) != name {
						t.Errorf("%s in the trash: %q, %v", name, b, err)
					}
				}
			}
			slices.Sort(trashed)
			if !slices.Equal(trashed, wantTrash) {
				t.Errorf("trashed %d files, want %d", len(trashed), len(wantTrash))
			}
		})
	}
}

// TestTrashFilesNoTrash: when the trash directory cannot be made (its name
// is a file), the files are unlinked in place and nothing is returned to
// unlink later.
func TestTrashFilesNoTrash(t *testing.T) {
	dir := t.TempDir()
	names, _ := blobLayout(t, dir, 2*parallelRemoveMin)
	if err := os.WriteFile(filepath.Join(dir, ".ocistore", "trash"), []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsys, err := OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	trashed, err := TrashFiles(fsys, SyncBlobDir, names, ".ocistore/trash", "42-", nil)
	if err != nil || len(trashed) != 0 {
		t.Fatalf("trashed %d, err %v; want 0, nil", len(trashed), err)
	}
	for _, name := range names {
		if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s still in the layout: %v", name, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, ".ocistore", "trash")); err != nil || string(b) != "not a directory" {
		t.Errorf("the file named like the trash was changed: %q, %v", b, err)
	}
}

// TestTrashFilesStops: a name that can be neither linked nor unlinked (a
// directory that is not empty) is an error, and the files before it are
// still out of the layout.
func TestTrashFilesStops(t *testing.T) {
	dir := t.TempDir()
	names, _ := blobLayout(t, dir, 4)
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256", "dir", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	fsys, err := OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	trashed, err := TrashFiles(fsys, SyncBlobDir, append(names, "blobs/sha256/dir"), ".ocistore/trash", "42-", nil)
	if err == nil {
		t.Fatal("a directory that is not empty reported no error")
	}
	if len(trashed) != 3 {
		t.Errorf("trashed %d files before the error, want 3", len(trashed))
	}
}

// TestTrashFilesNameTaken: a blob whose name the trash holds already (the
// same blob taken out before and not yet unlinked) is unlinked in place;
// the trash's file is left as it is, and the others go to the trash.
func TestTrashFilesNameTaken(t *testing.T) {
	dir := t.TempDir()
	names, _ := blobLayout(t, dir, 3) // names[0] missing, names[1] and [2] there
	taken := filepath.Join(dir, ".ocistore", "trash", "42-blobs-sha256-"+filepath.Base(names[1]))
	if err := os.MkdirAll(filepath.Dir(taken), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(taken, []byte("older copy"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsys, err := OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	existed, after := reportedOnce(t)
	trashed, err := TrashFiles(fsys, SyncBlobDir, names, ".ocistore/trash", "42-", after)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{".ocistore/trash/42-blobs-sha256-" + filepath.Base(names[2])}; !slices.Equal(trashed, want) {
		t.Errorf("trashed %v, want %v", trashed, want)
	}
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s still in the layout: %v", n, err)
		}
	}
	if !existed[names[1]] || !existed[names[2]] || existed[names[0]] {
		t.Errorf("reported %v", existed)
	}
	if b, err := os.ReadFile(taken); err != nil || string(b) != "older copy" {
		t.Errorf("the trash's own file: %q, %v", b, err)
	}
}
