package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// gatedFS holds every unlink of a trash file until gate is closed, or
// fails it with fail when set.
type gatedFS struct {
	fsio.FS
	gate chan struct{}
	fail error
}

func (g *gatedFS) Remove(name string) error {
	if strings.HasPrefix(name, protocol.TrashDir+"/") {
		<-g.gate
		if g.fail != nil {
			return g.fail
		}
	}
	return g.FS.Remove(name)
}

// trashFixture makes a layout of n images of 3 own layers each (5 blobs
// of their own with the config and the manifest) tagged img0..img(n-1),
// and reopens it on a gatedFS.
func trashFixture(t *testing.T, n int) (dir string, s *store.Store, g *gatedFS, imgs []v1.Descriptor) {
	t.Helper()
	l := newLib(t)
	for i := range n {
		d := l.image(nil, 3)
		l.tag(d, fmt.Sprintf("img%d", i))
		imgs = append(imgs, d)
	}
	l.s.Close()
	osfs, err := fsio.OpenOS(l.dir)
	if err != nil {
		t.Fatal(err)
	}
	g = &gatedFS{FS: osfs, gate: make(chan struct{})}
	o := &store.Options{}
	store.SetTestFS(o, g)
	s, err = store.Open(context.Background(), l.dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return l.dir, s, g, imgs
}

// TestDeleteThroughTrash: a delete that frees protocol.DefaultTrashMin
// blobs or more returns once they are out of the layout (in the trash),
// reports them freed, and leaves their unlinking to the handle's reclaimer:
// WaitReclaimed waits for it, fsck finds nothing wrong meanwhile, and a
// blob put again while its old copy waits in the trash is not lost.
func TestDeleteThroughTrash(t *testing.T) {
	const n = 20 // 100 blobs of their own
	dir, s, g, imgs := trashFixture(t, n)
	ctx := context.Background()
	var refs []string
	var want []digest.Digest
	for i := range n {
		refs = append(refs, fmt.Sprintf("img%d", i))
		want = append(want, testutil.Graph(t, dir, imgs[i])...)
	}
	raw, err := os.ReadFile(testutil.BlobFile(dir, imgs[0].Digest))
	if err != nil {
		t.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	layer := m.Layers[0]
	if len(want) < protocol.DefaultTrashMin {
		t.Fatalf("fixture frees %d blobs, fewer than TrashMin %d", len(want), protocol.DefaultTrashMin)
	}
	res, err := s.Delete(ctx, refs...)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Freed) != len(want) {
		t.Fatalf("freed %d blobs, want %d", len(res.Freed), len(want))
	}
	for _, d := range want {
		if testutil.HasBlob(t, dir, d) {
			t.Errorf("blob %s still in the layout after the delete returned", d)
		}
	}
	if got := filesIn(t, dir, protocol.TrashDir); len(got) != len(want) {
		t.Fatalf("%d files in the trash while its unlinking is held, want %d", len(got), len(want))
	}
	testutil.MustCheck(t, s) // the trash of a live handle is no problem

	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := s.WaitReclaimed(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitReclaimed while the unlinks are held: %v, want the deadline", err)
	}

	// A layer of a deleted image put again, and tagged in a new image,
	// while its old copy is in the trash.
	// The trash files are named after the handle's owner, whose owner
	// file is there, locked.
	var oldName string
	for _, n := range filesIn(t, dir, protocol.TrashDir) {
		tok, rest, _ := strings.Cut(n, "-")
		if got := filesIn(t, dir, protocol.OwnersDir); len(got) != 1 || got[0] != tok {
			t.Fatalf("trash file %s, owner files %v: want the one of its token", n, got)
		}
		if rest == "blobs-sha256-"+layer.Digest.Encoded() {
			oldName = n
		}
	}
	old, err := os.ReadFile(filepath.Join(dir, protocol.TrashDir, oldName))
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.NewBuilder(t, s, 9)
	if again := b.Put(old, layer.MediaType); again.Digest != layer.Digest {
		t.Fatalf("put again as %s, want %s", again.Digest, layer.Digest)
	}
	b.Tag(b.Manifest([]v1.Descriptor{layer}, 0), "again")

	close(g.gate)
	if err := s.WaitReclaimed(ctx); err != nil {
		t.Fatal(err)
	}
	if got := filesIn(t, dir, protocol.TrashDir); len(got) != 0 {
		t.Fatalf("%d files left in the trash after WaitReclaimed", len(got))
	}
	if !testutil.HasBlob(t, dir, layer.Digest) {
		t.Fatalf("layer %s put again while its old copy was in the trash is gone", layer.Digest)
	}
	testutil.MustCheck(t, s)
}

// TestCloseWaitsForTrash: Close returns once the trash is unlinked.
func TestCloseWaitsForTrash(t *testing.T) {
	const n = 20
	dir, s, g, _ := trashFixture(t, n)
	var refs []string
	for i := range n {
		refs = append(refs, fmt.Sprintf("img%d", i))
	}
	if _, err := s.Delete(context.Background(), refs...); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(30 * time.Millisecond)
		close(g.gate)
	}()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := filesIn(t, dir, protocol.TrashDir); len(got) != 0 {
		t.Fatalf("%d files left in the trash after Close", len(got))
	}
}

// TestTrashUnlinkFailure: a trash file that cannot be unlinked is reported
// by WaitReclaimed, naming the trash, the handle still writes (the layout
// is whole; it is not a failed fsync), and the next open unlinks it.
func TestTrashUnlinkFailure(t *testing.T) {
	const n = 20
	dir, s, g, _ := trashFixture(t, n)
	ctx := context.Background()
	g.fail = syscall.EIO
	close(g.gate)
	var refs []string
	for i := 1; i < n; i++ {
		refs = append(refs, fmt.Sprintf("img%d", i))
	}
	if _, err := s.Delete(ctx, refs...); err != nil {
		t.Fatal(err)
	}
	err := s.WaitReclaimed(ctx)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), protocol.TrashDir) {
		t.Fatalf("WaitReclaimed: %v, want EIO naming %s", err, protocol.TrashDir)
	}
	if err := s.WaitReclaimed(ctx); err != nil {
		t.Fatalf("the failure was reported twice: %v", err)
	}
	if len(filesIn(t, dir, protocol.TrashDir)) == 0 {
		t.Fatal("the trash is empty although its unlinks failed")
	}
	if err := s.Untag(ctx, "img0"); err != nil {
		t.Fatalf("write after a failed unlink of the trash: %v", err)
	}
	s.Close()

	s2, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.WaitReclaimed(ctx); err != nil {
		t.Fatal(err)
	}
	if got := filesIn(t, dir, protocol.TrashDir); len(got) != 0 {
		t.Fatalf("%d files left in the trash after the next open", len(got))
	}
	testutil.MustCheck(t, s2)
	s2.Close()
}

// TestTrashOfOtherProcesses: fsck reports the trash of an owner that is
// gone (no owner file; an owner file whose lock is free, and that file
// too) and of an older version's process when it has not changed for
// protocol.LegacyAge, and the next open unlinks them; the trash of a live
// owner (its owner file locked, here by the test) is its own to unlink,
// and a young file of an older version (named after a process ID, which
// cannot be checked from another PID namespace) may be a live process's:
// neither is reported nor touched.
func TestTrashOfOtherProcesses(t *testing.T) {
	l := newLib(t)
	l.tag(l.image(nil, 1), "a")
	l.s.Close()
	trash := filepath.Join(l.dir, protocol.TrashDir)
	owners := filepath.Join(l.dir, protocol.OwnersDir)
	for _, d := range []string{trash, owners} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	blob := func(c string) string { return "blobs-sha256-" + strings.Repeat(c, 64) }
	noOwnerFile, unlocked, locked := strings.Repeat("a1", 16), strings.Repeat("b2", 16), strings.Repeat("c3", 16)
	gone := []string{protocol.TempPrefix(noOwnerFile) + blob("a"), protocol.TempPrefix(unlocked) + blob("b"), "12345-" + blob("d")}
	live := []string{protocol.TempPrefix(locked) + blob("c"), "999999999-" + blob("e")}
	for _, name := range append(append([]string{}, gone...), live...) {
		if err := os.WriteFile(filepath.Join(trash, name), []byte("old layer"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-protocol.LegacyAge - time.Minute)
	if err := os.Chtimes(filepath.Join(trash, gone[2]), old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(owners, unlocked), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	osfs, err := fsio.OpenOS(l.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer osfs.Close()
	lock, err := osfs.Lock(protocol.OwnersDir+"/"+locked, true)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()

	rep, err := store.CheckDir(l.ctx, l.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, p := range rep.Problems {
		if p.Kind == recovery.KindTempFile {
			found = append(found, p.Path)
		} else {
			t.Errorf("fsck: %s", p)
		}
	}
	want := []string{protocol.OwnersDir + "/" + unlocked}
	for _, g := range gone {
		want = append(want, protocol.TrashDir+"/"+g)
	}
	slices.Sort(found)
	slices.Sort(want)
	if !slices.Equal(found, want) {
		t.Fatalf("fsck reported temp files %v, want %v", found, want)
	}
	s, err := store.Open(l.ctx, l.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got := filesIn(t, l.dir, protocol.TrashDir)
	slices.Sort(live)
	if !slices.Equal(got, live) {
		t.Fatalf("trash after an open: %v, want only %v", got, live)
	}
	if got := filesIn(t, l.dir, protocol.OwnersDir); len(got) != 1 || got[0] != locked {
		t.Fatalf("owner files after an open: %v, want only the live one, %s", got, locked)
	}
}
