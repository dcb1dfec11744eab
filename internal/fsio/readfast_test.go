package fsio_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
)

// TestReadFileConfined: ReadFile (which keeps the directories it reads
// from open) reads what Open reads and refuses what Open refuses: a final
// symlink, a named pipe, a directory, a path out of the root; a file over
// the limit is ErrTooLarge.
func TestReadFileConfined(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "dir"), 0o755))
	must(os.WriteFile(filepath.Join(parent, "outside"), []byte("outside"), 0o644))
	must(os.WriteFile(filepath.Join(root, "file"), []byte("file"), 0o644))
	must(os.WriteFile(filepath.Join(root, "dir", "inner"), []byte("inner"), 0o644))
	must(os.WriteFile(filepath.Join(root, "dir", "empty"), nil, 0o644))
	must(os.Symlink("file", filepath.Join(root, "link-inside")))
	must(os.Symlink("../outside", filepath.Join(root, "link-outside")))
	must(os.Symlink("dir", filepath.Join(root, "dirlink")))
	must(syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644))
	fsys, err := fsio.OpenOS(root)
	must(err)
	defer fsys.Close()

	for name, want := range map[string]string{"file": "file", "dir/inner": "inner", "dirlink/inner": "inner", "dir/empty": ""} {
		for range 2 { // the second read goes through the kept directory
			b, err := fsio.ReadFile(fsys, name, 100)
			if err != nil || string(b) != want {
				t.Errorf("ReadFile(%s) = %q, %v; want %q", name, b, err, want)
			}
		}
	}
	for _, name := range []string{"link-inside", "link-outside", "fifo", "dir", "dirlink"} {
		if _, err := fsio.ReadFile(fsys, name, 100); !errors.Is(err, fsio.ErrNotRegular) {
			t.Errorf("ReadFile(%s) = %v, want ErrNotRegular", name, err)
		}
	}
	for _, name := range []string{"missing", "dir/missing", "nodir/file"} {
		if _, err := fsio.ReadFile(fsys, name, 100); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ReadFile(%s) = %v, want ErrNotExist", name, err)
		}
	}
	for _, name := range []string{"../outside", "dir/../../outside", ".", "dir/"} {
		if b, err := fsio.ReadFile(fsys, name, 100); err == nil {
			t.Errorf("ReadFile(%s) read %q", name, b)
		}
	}
	if _, err := fsio.ReadFile(fsys, "dir/inner", 4); !errors.Is(err, errdef.ErrTooLarge) {
		t.Errorf("ReadFile over the limit = %v, want ErrTooLarge", err)
	}
}

// TestReadFileDirectoryReplaced: a directory that another tool replaces
// after a read (renamed away, made anew) is not answered for by the
// handle kept from before: a file of the new directory is found.
func TestReadFileDirectoryReplaced(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "blobs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsys, err := fsio.OpenOS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	if b, err := fsio.ReadFile(fsys, "blobs/a", 10); err != nil || string(b) != "a" {
		t.Fatalf("ReadFile = %q, %v", b, err)
	}
	if err := os.Rename(dir, filepath.Join(root, "old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b"), []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := fsio.ReadFile(fsys, "blobs/b", 10); err != nil || string(b) != "b" {
		t.Fatalf("ReadFile of a file of the new directory = %q, %v", b, err)
	}
	if _, err := fsio.ReadFile(fsys, "blobs/a", 10); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadFile of a file of the old directory = %v, want ErrNotExist", err)
	}
}

// TestReadDirTypesAndInfo: ReadDir gives each entry's type from the
// listing and its Info through the root (the size of the entry itself,
// never what a symlink points to).
func TestReadDirTypesAndInfo(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "d", "f"), []byte("12345"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "d", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", filepath.Join(root, "d", "l")); err != nil {
		t.Fatal(err)
	}
	fsys, err := fsio.OpenOS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ents, err := fsys.ReadDir("d")
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name string
		typ  fs.FileMode
	}{{"f", 0}, {"l", fs.ModeSymlink}, {"sub", fs.ModeDir}}
	if len(ents) != len(want) {
		t.Fatalf("ReadDir = %v", ents)
	}
	for i, w := range want {
		e := ents[i]
		if e.Name() != w.name || e.Type() != w.typ {
			t.Errorf("entry %d = %s %v, want %s %v", i, e.Name(), e.Type(), w.name, w.typ)
		}
		fi, err := e.Info()
		if err != nil {
			t.Errorf("%s: Info = %v", e.Name(), err)
			continue
		}
		if fi.Mode().Type() != w.typ || fi.Name() != w.name {
			t.Errorf("%s: Info = %s %v", e.Name(), fi.Name(), fi.Mode())
		}
		if w.name == "f" && fi.Size() != 5 {
			t.Errorf("f: Info size %d, want 5", fi.Size())
		}
	}
}

// TestDirHandleLstat: a DirHandle's Lstat (one fstatat on its descriptor
// for a name in it) says what os.Lstat says: a symlink is not followed, a
// missing name is ErrNotExist, and a path below goes through the root and
// stays in it.
func TestDirHandleLstat(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "d")
	must(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "f"), []byte("12345"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "sub", "g"), []byte("1"), 0o644))
	must(t, os.Symlink("f", filepath.Join(dir, "link")))
	must(t, os.Symlink("../../outside", filepath.Join(dir, "escape")))
	o, err := fsio.OpenOS(root)
	must(t, err)
	defer o.Close()
	h, err := o.OpenDir("d")
	must(t, err)
	defer h.Close()
	for _, name := range []string{"f", "link", "escape", "sub", "sub/g"} {
		got, err := h.Lstat(name)
		if err != nil {
			t.Errorf("lstat %s: %v", name, err)
			continue
		}
		want, err := os.Lstat(filepath.Join(dir, name))
		must(t, err)
		if got.Mode() != want.Mode() || got.Size() != want.Size() || got.Name() != want.Name() || !got.ModTime().Equal(want.ModTime()) {
			t.Errorf("lstat %s = %v %d %q %v, want %v %d %q %v", name, got.Mode(), got.Size(), got.Name(), got.ModTime(), want.Mode(), want.Size(), want.Name(), want.ModTime())
		}
	}
	if _, err := h.Lstat("missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lstat of a missing name: %v, want ErrNotExist", err)
	}
	if _, err := h.Lstat("../d/f"); err == nil {
		t.Errorf("lstat out of the directory succeeded")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
