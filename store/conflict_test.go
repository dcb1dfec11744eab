package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/testing/errorfs"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// TestConcurrentExternalWrite: another tool (which takes no lock) rewrites
// index.json while a delete is between its commit point and its unlinks, and
// its new index still uses the image being deleted. The delete must unlink
// nothing and say so (ErrConflict); the next open rolls the record back.
func TestConcurrentExternalWrite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	before := fixture(t, dir)
	victim := before["img2"]
	filesBefore := files(t, dir)

	s, efs := openOnErrorFS(t, dir, nil)
	afterIndexSynced(efs, func() { writeMeanwhile(t, dir, victim) })
	_, err := s.Delete(ctx, "img2")
	s.Close()
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete during an external write: %v, want ErrConflict", err)
	}
	// Every blob is still there (the external index needs the victim's).
	if got := files(t, dir); len(got) != len(filesBefore) {
		t.Fatalf("blobs were unlinked: %d files, had %d", len(got), len(filesBefore))
	}
	got := tags(t, dir) // recovery: roll back, recount
	if got["written-meanwhile"] != victim {
		t.Fatalf("external tag lost: %v", got)
	}
	checkClean(t, dir, false)
}

// TestExternalWriteDuringUnlinks: another tool writes index.json while a
// prune is taking its blobs out (as skopeo does at the end of a copy it
// started before the prune: the index it read then, plus its image, in
// place). The unlinks stop at the next check of index.json's stamp, every
// blob taken into the trash that the rewritten index uses is put back, the
// record is dropped and the counts taken from index.json as it is now, and
// the prune says so (ErrConflict): every image the other tool's index.json
// names is whole, even when it wrote the very bytes the prune replaced.
func TestExternalWriteDuringUnlinks(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	l := libOpen(t, dir, 3)
	base := l.b.Random(300)
	for i := range 40 {
		l.tag(l.image([]v1.Descriptor{base}, 2), fmt.Sprintf("app:%02d", i))
	}
	stale := l.indexFile() // what the other tool read before the prune
	l.s.Close()
	ps, efs := openOnErrorFS(t, dir, nil)
	// After the 40th blob taken out of the layout.
	unlinks := efs.Add(errorfs.Rule{Op: errorfs.OpRemove, Path: "blobs/...", Nth: 40, After: true, Hook: func(errorfs.Event) {
		f, err := os.OpenFile(filepath.Join(dir, "index.json"), os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if _, err := f.Write(stale); err != nil {
			t.Error(err)
		}
	}})
	_, err := ps.Prune(ctx, store.Policy{KeepLast: 1})
	if !errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrIncomplete) {
		t.Fatalf("prune during an external write: %v", err)
	}
	if unlinks.Fired() != 1 {
		t.Fatalf("the prune took %d blobs out, not 40 or more", unlinks.Matched())
	}
	if err := ps.WaitReclaimed(ctx); err != nil {
		t.Fatal(err)
	}
	ps.Close()
	s, err := store.Open(ctx, dir, nil) // recovery: the record dropped, a recount
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	imgs, err := s.List(ctx)
	if err != nil || len(imgs) != 40 {
		t.Fatalf("after recovery: %d images, %v", len(imgs), err)
	}
	testutil.MustCheck(t, s)
}

// TestExternalWriteBeforeRename: another tool writes index.json after a
// delete read it and before the delete replaces it. The delete does not
// write over it (that would lose the other tool's entry): it fails with
// ErrConflict, changes nothing, and the counts follow the file.
func TestExternalWriteBeforeRename(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	before := fixture(t, dir)
	victim := before["img2"]
	var journaled atomic.Pointer[func()]
	o := &store.Options{}
	store.SetTestCommitHook(o, func(tx *journal.Tx) (func() error, error) {
		return afterTxnCommit(tx, &journaled), nil
	})
	s, err := store.Open(ctx, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	write := func() { writeMeanwhile(t, dir, victim) }
	journaled.Store(&write)
	_, err = s.Delete(ctx, "img2")
	if !errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrIncomplete) {
		t.Fatalf("delete with index.json rewritten before its rename: %v", err)
	}
	if recs, err := store.PendingRecords(dir, 0); err != nil || len(recs) != 0 {
		t.Fatalf("pending %v, %v", recs, err)
	}
	s.Close()
	got := tags(t, dir)
	if got["img2"] != victim || got["written-meanwhile"] != victim {
		t.Fatalf("after the conflict: %v", got)
	}
	checkClean(t, dir, false)
}

// writeMeanwhile does what skopeo does while a transaction runs: read
// index.json, add an entry (tag written-meanwhile, manifest victim), and
// write it back in place.
func writeMeanwhile(t *testing.T, dir, victim string) {
	p := filepath.Join(dir, "index.json")
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Error(err)
		return
	}
	entry := fmt.Sprintf(`,{"mediaType":%q,"digest":%q,"size":%d,"annotations":{"org.opencontainers.image.ref.name":"written-meanwhile"}}]`,
		v1.MediaTypeImageManifest, victim, blobSize(t, dir, victim))
	if err := os.WriteFile(p, []byte(strings.Replace(string(raw), "]", entry, 1)), 0o644); err != nil {
		t.Error(err)
	}
}
