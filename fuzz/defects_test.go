package fuzz

// Engine defects found by these fuzz targets and by the model-based test
// (store/rapid_test.go), each kept with its minimal case: the corpus files
// testdata/fuzz/FuzzRecoverRecord/d*-* and the tests below.
//
// Every defect listed is fixed and has no tolerance left: the checks are
// strict and each minimal case is a regression test.
//
//	D1  fixed (be78c0d): fsio.RemoveFiles synced every blobs/<alg>
//	    directory named by the unlink set, also one that does not exist:
//	    the ENOENT of that fsync was a durability failure, so the
//	    transaction failed after unlinking what it could, the handle was
//	    poisoned, and every later Open failed the same way in recovery (the
//	    record could never be finished): the layout could not be opened.
//	    Real trigger: deleting an image with a foreign (urls) sha512 layer
//	    in a layout without blobs/sha512. Regression:
//	    TestDefectD1ForeignSHA512Layer, d1-unlink-sha512-no-alg-dir.
//	D2  fixed (be78c0d): recovery replayed the index bytes stored with a
//	    record without checking that they hash to the record's NewIndex:
//	    bytes that do not (a damaged journal) replaced a valid index.json;
//	    when they did not parse, recovery then failed, on every open.
//	    Regression: d2-stored-bytes-garbage.
//	D2b fixed (bb7b3a3; the rest of D2): bytes that do hash to NewIndex
//	    but are not an index (a record the engine never writes: it renders
//	    a parsed index) were written over a valid index.json before they were
//	    parsed; recovery then failed on every open. protocol.Run now parses
//	    the stored bytes before WriteIndex and treats bytes that do not
//	    parse like no bytes (roll back when the old index is on disk).
//	    Regression: d2b-stored-bytes-not-an-index.
//	D3  fixed (1311674): before unlinking, recovery (Finish) trusted the
//	    journal's refcounts, not the index on disk (recovery asks for a re-check
//	    against the index on disk: a referenced blob is never unlinked, "whatever
//	    the journal says"): a
//	    record whose refcount changes were not committed with it unlinked
//	    blobs the replayed index reaches. Needs a journal that contradicts
//	    itself, which the engine never writes. For a record recovery finds
//	    pending, it now walks the graph of index.json on disk before any
//	    unlink, never unlinks what the walk reaches, and recounts when the
//	    journal's refcounts disagree with it (recovery.finishRecovered; the
//	    forward path of a transaction does not walk). Regression:
//	    d3-refcounts-not-committed.
//	D4  fixed (3873f11): Tag (or PutManifest with names) of an index whose
//	    child manifest or index is missing failed with ErrNotFound (the loader's
//	    error, returned as is by the refcount walk), not
//	    ErrMissingDependency as for a missing leaf. refcount.Counter.inc
//	    now reports a manifest that cannot be found, while it verifies a
//	    graph that becomes live (Present set), as a missing dependency.
//	    Regression: store/rapid_test.go TestRapidRegressionTagMissingChildManifest
//	    and testdata/rapid/TestRapidStateMachine/*-d4-tag-missing-child-manifest.fail
//	    (tagRefused is strict).

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// TestDefectD1ForeignSHA512Layer (regression for D1): deleting an image
// whose foreign layer is a sha512 digest, in a layout with no blobs/sha512,
// must succeed, and the layout must open again.
func TestDefectD1ForeignSHA512Layer(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := testutil.Open(t, dir)
	defer s.Close()
	cfg := []byte(`{}`)
	cd := v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	if err := s.PutBlob(ctx, cd, bytes.NewReader(cfg)); err != nil {
		t.Fatal(err)
	}
	foreign := v1.Descriptor{
		MediaType: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", // a foreign layer type: deprecated by the spec, still found in layouts
		Digest:    digest.SHA512.FromString("a foreign layer"), Size: 15,
		URLs: []string{"https://example.com/layer"},
	}
	m, err := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cd, Layers: []v1.Descriptor{foreign}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutManifest(ctx, v1.MediaTypeImageManifest, m, "win"); err != nil {
		t.Fatal(err)
	}
	_, delErr := s.Delete(ctx, "win")
	s.Close()
	s2, openErr := store.Open(ctx, dir, nil)
	if openErr == nil {
		defer s2.Close()
	}
	if delErr != nil || openErr != nil {
		t.Fatalf("delete: %v; open after it: %v", delErr, openErr)
	}
	if imgs, err := s2.List(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("after the delete: %v, %v", imgs, err)
	}
}
