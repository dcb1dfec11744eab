package store_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

func TestImport(t *testing.T) {
	src := newLib(t)
	shared := src.b.Random(100)
	a, b := src.image([]v1.Descriptor{shared}, 1), src.image([]v1.Descriptor{shared}, 2)
	src.tag(a, "a")
	src.tag(b, "b")
	src.tag(src.b.Index(a, b), "multi")

	dst := libOpen(t, filepath.Join(t.TempDir(), "dst"), 2)
	keep := dst.image(nil, 1)
	dst.tag(keep, "a") // imported a takes the name; keep stays untagged

	before := dst.indexFile()
	if _, err := dst.s.Import(dst.ctx, src.dir, "b", "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Import with a missing ref = %v", err)
	}
	if !bytes.Equal(before, dst.indexFile()) {
		t.Fatal("a failed Import changed index.json")
	}

	res, err := dst.s.Import(dst.ctx, src.dir, "a", "multi")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Images) != 2 || res.BlobsCopied == 0 {
		t.Errorf("result %+v", res)
	}
	for ref, want := range map[string]v1.Descriptor{"a": a, "multi": {Digest: src.graph(a)[0]}} {
		d, err := dst.s.Resolve(dst.ctx, ref)
		if err != nil || (ref == "a" && d.Digest != want.Digest) {
			t.Errorf("Resolve(%s) = %v, %v", ref, d.Digest, err)
		}
	}
	if _, err := dst.s.Resolve(dst.ctx, keep.Digest.String()); err != nil {
		t.Errorf("the manifest that lost its name was dropped: %v", err)
	}
	dst.wantBlobs(true, src.graph(b)...)
	dst.clean()
	// The source is unchanged.
	src.clean()
	// Importing again copies nothing.
	res, err = dst.s.Import(dst.ctx, src.dir, "a", "multi")
	if err != nil || res.BlobsCopied != 0 {
		t.Errorf("second import: %+v, %v", res, err)
	}
	dst.clean()
}

func TestRecoverAndPendingWhenHealthy(t *testing.T) {
	l0 := newLib(t)
	l0.tag(l0.image(nil, 1), "x")
	l0.s.Close()
	l := libOpen(t, l0.dir, 2) // Recover reports what Open's recovery did too
	acts, err := l.s.Recover(l.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(acts) != 0 {
		t.Errorf("recovery of a healthy store did %v", acts)
	}
	if pend, err := store.PendingRecords(l.s.Dir(), 0); err != nil || len(pend) != 0 {
		t.Errorf("Pending = %v, %v", pend, err)
	}
	if pend, err := store.PendingRecords(l.dir, 0); err != nil || len(pend) != 0 {
		t.Errorf("PendingRecords = %v, %v", pend, err)
	}
	rep, err := store.CheckDir(l.ctx, l.dir, nil)
	if err != nil || !rep.OK() || rep.Images != 1 || rep.Blobs != 3 {
		t.Errorf("CheckDir = %+v, %v", rep, err)
	}
}

// TestRecoverRemovesTemps: leftover renameio temp files in the root and
// ingest temp files of owners that are gone (here: no owner file) are
// removed by the next recovery and reported; nothing else is touched.
func TestRecoverRemovesTemps(t *testing.T) {
	l := newLib(t)
	l.tag(l.image(nil, 1), "x")
	tmp := filepath.Join(l.dir, ".index.json8675309")
	ingest := filepath.Join(l.dir, ".ocistore", "ingest", protocol.TempPrefix(strings.Repeat("0f", 16))+"abc")
	if err := os.MkdirAll(filepath.Dir(ingest), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tmp, ingest} {
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if len(libProblems(testutil.Problems(t, l.s), recovery.KindTempFile)) != 2 {
		t.Errorf("fsck does not report both temp files: %v", testutil.Problems(t, l.s))
	}
	before := testutil.Snapshot(t, l.dir, ".ocistore", ".index.json8675309")
	acts, err := l.s.Recover(l.ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range acts {
		if a.Kind == "temp-removed" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("recovery actions %v, want two temp-removed", acts)
	}
	for _, p := range []string{tmp, ingest} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s not removed: %v", p, err)
		}
	}
	testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, l.dir, ".ocistore"))
	l.clean()
}
