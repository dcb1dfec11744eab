package fsio_test

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/fsio"
)

// TestOpenRegularOnly: Open opens regular files only, and never through a
// symlink as the last element, even one that stays inside the root (os.Root
// alone follows those, whatever the flags say); a named pipe is refused at
// once instead of blocking until a writer comes; nothing outside the root
// is opened. Directories on the way may be symlinks inside the root.
func TestOpenRegularOnly(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "root")
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		t.Helper()
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(parent, "outside"), "outside")
	write(filepath.Join(root, "file"), "file")
	write(filepath.Join(root, "dir", "inner"), "inner")
	link("file", filepath.Join(root, "link-inside"))
	link("../outside", filepath.Join(root, "link-outside"))
	link("dir", filepath.Join(root, "dirlink"))
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsys, err := fsio.OpenOS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()

	for name, want := range map[string]string{"file": "file", "dir/inner": "inner", "dirlink/inner": "inner"} {
		f, err := fsys.Open(name)
		if err != nil {
			t.Errorf("Open(%s) = %v", name, err)
			continue
		}
		b, err := io.ReadAll(f)
		f.Close()
		if err != nil || string(b) != want {
			t.Errorf("Open(%s) read %q, %v", name, b, err)
		}
	}
	for _, name := range []string{"link-inside", "link-outside", "fifo", "dir", "dirlink"} {
		done := make(chan error, 1)
		go func() {
			f, err := fsys.Open(name)
			if err == nil {
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, fsio.ErrNotRegular) {
				t.Errorf("Open(%s) = %v, want ErrNotRegular", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("Open(%s) blocks", name)
		}
	}
	for _, name := range []string{"missing", "dir/missing"} {
		if _, err := fsys.Open(name); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open(%s) = %v, want ErrNotExist", name, err)
		}
	}
	for _, name := range []string{"../outside", "dir/../../outside", "."} {
		if f, err := fsys.Open(name); err == nil {
			f.Close()
			t.Errorf("Open(%s) opened it", name)
		}
	}
}
