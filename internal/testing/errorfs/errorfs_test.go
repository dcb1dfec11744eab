package errorfs_test

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/testing/errorfs"
	"github.com/ocistore/ocistore/internal/testing/memfs"
)

func newFS(t *testing.T) (*memfs.FS, *errorfs.FS) {
	t.Helper()
	mem := memfs.New(t.TempDir())
	for _, d := range []string{"blobs", "blobs/sha256"} {
		if err := mem.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"blobs/sha256/a", "blobs/sha256/b", "blobs/sha256/c", "index.json"} {
		if err := mem.WriteFile(n, []byte("old "+n)); err != nil {
			t.Fatal(err)
		}
	}
	return mem, errorfs.New(mem)
}

func exists(t *testing.T, f fsio.FS, name string) bool {
	t.Helper()
	_, err := f.Lstat(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// TestNthAndAfter: a rule fires at the Nth operation it matches only;
// before the operation (which is then not done) or after it.
func TestNthAndAfter(t *testing.T) {
	mem, efs := newFS(t)
	var hooked []bool // whether the file was there when the hook ran
	before := efs.Add(errorfs.Rule{Op: errorfs.OpRemove, Path: "blobs/...", Nth: 2, Err: syscall.EIO,
		Hook: func(ev errorfs.Event) { hooked = append(hooked, exists(t, mem, ev.Path)) }})
	if err := efs.Remove("blobs/sha256/a"); err != nil {
		t.Fatal(err)
	}
	err := efs.Remove("blobs/sha256/b")
	var pe *fs.PathError
	if !errors.Is(err, syscall.EIO) || !errors.As(err, &pe) || pe.Op != "remove" || pe.Path != "blobs/sha256/b" {
		t.Fatalf("second remove: %v", err)
	}
	if !exists(t, mem, "blobs/sha256/b") {
		t.Fatal("a remove that failed before it ran removed the file")
	}
	if err := efs.Remove("blobs/sha256/b"); err != nil {
		t.Fatalf("third remove (the rule fired at the second only): %v", err)
	}
	if before.Matched() != 3 || before.Fired() != 1 || len(hooked) != 1 || !hooked[0] {
		t.Fatalf("matched %d, fired %d, hooked %v", before.Matched(), before.Fired(), hooked)
	}
	before.Remove()

	efs.Add(errorfs.Rule{Op: errorfs.OpRemove, Path: "blobs/sha256/*", After: true, Err: syscall.EIO,
		Hook: func(ev errorfs.Event) { hooked = append(hooked, exists(t, mem, ev.Path)) }})
	if err := efs.Remove("blobs/sha256/c"); !errors.Is(err, syscall.EIO) {
		t.Fatalf("remove with an error after it: %v", err)
	}
	if exists(t, mem, "blobs/sha256/c") || hooked[1] {
		t.Fatal("an error after the remove: the file must be gone, and gone when the hook ran")
	}
	efs.Clear()
	if err := efs.Remove("index.json"); err != nil {
		t.Fatalf("after Clear: %v", err)
	}
}

// TestPatterns: Path, From and If.
func TestPatterns(t *testing.T) {
	_, efs := newFS(t)
	under := efs.Add(errorfs.Rule{Op: errorfs.OpRename, Path: "blobs/..."})
	from := efs.Add(errorfs.Rule{Op: errorfs.OpRename, From: "blobs/sha256/?"})
	cond := efs.Add(errorfs.Rule{Op: errorfs.OpRename, If: func(ev errorfs.Event) bool { return ev.Path == "moved" }})
	if err := efs.Rename("blobs/sha256/a", "blobs/sha256/d"); err != nil {
		t.Fatal(err)
	}
	if err := efs.Rename("blobs/sha256/d", "moved"); err != nil {
		t.Fatal(err)
	}
	if err := efs.Rename("index.json", "blobsx"); err != nil {
		t.Fatal(err)
	}
	if under.Matched() != 1 || from.Matched() != 2 || cond.Matched() != 1 {
		t.Fatalf("matched: under %d, from %d, if %d", under.Matched(), from.Matched(), cond.Matched())
	}
}

// TestShortWrite: a write rule with an error writes part of the buffer.
func TestShortWrite(t *testing.T) {
	mem, efs := newFS(t)
	efs.Add(errorfs.Rule{Op: errorfs.OpWrite, Path: "blobs/tmp-*", Short: 3, Err: syscall.ENOSPC})
	f, err := efs.CreateTemp("blobs", "tmp-")
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.Write([]byte("0123456789"))
	if n != 3 || !errors.Is(err, syscall.ENOSPC) || !fsio.NoSpaceOnWrite(err) {
		t.Fatalf("short write: %d, %v", n, err)
	}
	b, err := fsio.ReadFile(mem, f.Name(), 100)
	if err != nil || string(b) != "012" {
		t.Fatalf("written: %q, %v", b, err)
	}
}

// TestReplaceFile: ReplaceFile is made of the wrapper's operations, with
// fsio.OS's errors: a failed write changes nothing and is no durability
// failure; a failed fsync is one; a replace rule with After replaces.
func TestReplaceFile(t *testing.T) {
	mem, efs := newFS(t)
	read := func() string {
		b, err := fsio.ReadFile(mem, "index.json", 100)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	noTemps := func() {
		ents, err := mem.ReadDir(".")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Name() != "index.json" && e.Name() != "blobs" {
				t.Fatalf("left in the root: %s", e.Name())
			}
		}
	}
	h := efs.Add(errorfs.Rule{Op: errorfs.OpWrite, Path: ".index.json-*", Nth: 1, Err: syscall.EIO})
	err := efs.ReplaceFile("index.json", ".", []byte("new"), 0o644)
	if !errors.Is(err, syscall.EIO) || errors.Is(err, errdef.ErrDurability) || h.Fired() != 1 || read() != "old index.json" {
		t.Fatalf("replace whose write fails: %v (fired %d)", err, h.Fired())
	}
	noTemps()
	h = efs.Add(errorfs.Rule{Op: errorfs.OpSync, Path: ".index.json-*", Nth: 1, Err: syscall.EIO})
	err = efs.ReplaceFile("index.json", ".", []byte("new"), 0o644)
	if !errors.Is(err, syscall.EIO) || !errors.Is(err, errdef.ErrDurability) || h.Fired() != 1 || read() != "old index.json" {
		t.Fatalf("replace whose fsync fails: %v (fired %d)", err, h.Fired())
	}
	noTemps()
	h = efs.Add(errorfs.Rule{Op: errorfs.OpReplace, Path: "index.json", After: true, Err: syscall.EIO})
	err = efs.ReplaceFile("index.json", ".", []byte("new"), 0o644)
	if !errors.Is(err, errdef.ErrDurability) || h.Fired() != 1 || read() != "new" {
		t.Fatalf("replace with an error after it: %v (fired %d), index.json %q", err, h.Fired(), read())
	}
	noTemps()
}

// TestOmitSync: the fsyncs of an omitted purpose are not made (the
// helpers of fsio ask the FS); the others are.
func TestOmitSync(t *testing.T) {
	_, efs := newFS(t)
	syncs := efs.Add(errorfs.Rule{Op: errorfs.OpSyncDir})
	fileSyncs := efs.Add(errorfs.Rule{Op: errorfs.OpSync})
	efs.OmitSync(fsio.SyncBlobDir, fsio.SyncIngestFile)
	if err := fsio.SyncDirFor(efs, fsio.SyncBlobDir, "blobs/sha256"); err != nil {
		t.Fatal(err)
	}
	if err := fsio.SyncDirFor(efs, fsio.SyncLayoutDir, "."); err != nil {
		t.Fatal(err)
	}
	f, err := efs.CreateTemp("blobs", "tmp-")
	if err != nil {
		t.Fatal(err)
	}
	if err := fsio.SyncFileFor(efs, fsio.SyncIngestFile, f); err != nil {
		t.Fatal(err)
	}
	if _, err := fsio.PrepareFile(efs, "index.json", []byte("x"), fsio.SyncIndexFile); err != nil {
		t.Fatal(err)
	}
	if syncs.Matched() != 1 || fileSyncs.Matched() != 1 {
		t.Fatalf("directory fsyncs %d (want the layout's only), file fsyncs %d (want the index's only)", syncs.Matched(), fileSyncs.Matched())
	}
	sh := &fsio.Shared{Layout: efs, Blobs: efs}
	if !sh.SkipSync(fsio.SyncBlobDir) || sh.SkipSync(fsio.SyncIndexFile) {
		t.Fatal("a shared file system must leave out what its parts leave out")
	}
}

// TestLinkUnsupported: Link on a file system without hard links fails as
// the trash expects (it then unlinks in place).
func TestLinkUnsupported(t *testing.T) {
	efs := errorfs.New(noLink{memfs.New(t.TempDir())})
	err := efs.Link("a", "b")
	var le *os.LinkError
	if !errors.As(err, &le) || !errors.Is(err, syscall.ENOTSUP) {
		t.Fatalf("link without hard links: %v", err)
	}
}

type noLink struct{ fsio.FS }
