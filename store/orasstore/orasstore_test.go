package orasstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/memory"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
	"github.com/ocistore/ocistore/store/orasstore"
)

// The interfaces the package promises.
var (
	_ oras.Target             = (*orasstore.Target)(nil)
	_ oras.GraphTarget        = (*orasstore.Target)(nil)
	_ content.Deleter         = (*orasstore.Target)(nil)
	_ content.GraphStorage    = (*orasstore.Target)(nil)
	_ registry.TagLister      = (*orasstore.Target)(nil)
	_ content.ReadOnlyStorage = (*orasstore.Target)(nil)
)

// push stores b in mem and returns its descriptor.
func push(t *testing.T, mem content.Pusher, mt string, b []byte) v1.Descriptor {
	t.Helper()
	d := content.NewDescriptorFromBytes(mt, b)
	if err := mem.Push(context.Background(), d, bytes.NewReader(b)); err != nil && !errors.Is(err, errdef.ErrAlreadyExists) {
		t.Fatal(err)
	}
	return d
}

func manifest(t *testing.T, mem content.Pusher, cfg v1.Descriptor, layers []v1.Descriptor, subject *v1.Descriptor, artifactType string) v1.Descriptor {
	t.Helper()
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		Config: cfg, Layers: layers, Subject: subject, ArtifactType: artifactType}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return push(t, mem, v1.MediaTypeImageManifest, b)
}

// source is an oras memory store holding image "v1" (a config and two
// layers) and a signature whose subject is it, untagged.
func source(t *testing.T) (*memory.Store, v1.Descriptor, v1.Descriptor) {
	t.Helper()
	mem := memory.New()
	cfg := push(t, mem, v1.MediaTypeImageConfig, []byte(`{"architecture":"amd64","os":"linux"}`))
	l1 := push(t, mem, v1.MediaTypeImageLayer, bytes.Repeat([]byte("layer one "), 1000))
	l2 := push(t, mem, v1.MediaTypeImageLayer, bytes.Repeat([]byte("layer two "), 2000))
	img := manifest(t, mem, cfg, []v1.Descriptor{l1, l2}, nil, "")
	if err := mem.Tag(context.Background(), img, "v1"); err != nil {
		t.Fatal(err)
	}
	empty := push(t, mem, v1.MediaTypeEmptyJSON, []byte("{}"))
	sigBlob := push(t, mem, "application/vnd.example.signature.v1", []byte("signed"))
	sig := manifest(t, mem, empty, []v1.Descriptor{sigBlob}, &img, "application/vnd.example.signature")
	return mem, img, sig
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "layout"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// oras.ExtendedCopy in both directions: memory -> ocistore (the image
// tagged, its signature kept as an untagged entry, found as a referrer)
// -> an oras OCI layout, and the store is clean.
func TestExtendedCopyBothWays(t *testing.T) {
	ctx := context.Background()
	mem, img, sig := source(t)
	s := openStore(t)
	dst := orasstore.New(s, nil)
	got, err := oras.ExtendedCopy(ctx, mem, "v1", dst, "v1", oras.DefaultExtendedCopyOptions)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != img.Digest {
		t.Fatalf("copied %s, want %s", got.Digest, img.Digest)
	}
	if err := dst.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d, err := s.Resolve(ctx, "v1"); err != nil || d.Digest != img.Digest {
		t.Fatalf("Resolve v1 = %v, %v", d, err)
	}
	refs, err := s.Referrers(ctx, img.Digest, "")
	if err != nil || len(refs) != 1 || refs[0].Digest != sig.Digest || refs[0].ArtifactType != "application/vnd.example.signature" {
		t.Fatalf("Referrers after the copy = %+v, %v", refs, err)
	}
	imgs, err := s.List(ctx)
	if err != nil || len(imgs) != 2 {
		t.Fatalf("List = %+v, %v; want v1 and the untagged signature", imgs, err)
	}
	testutil.MustCheck(t, s)
	if leases, err := s.Leases(ctx); err != nil || len(leases) != 0 {
		t.Errorf("leases after Close = %v, %v", leases, err)
	}

	// Back out, to oras-go's own OCI layout store.
	out, err := oci.New(filepath.Join(t.TempDir(), "oci"))
	if err != nil {
		t.Fatal(err)
	}
	src := orasstore.New(s, nil)
	defer src.Close(ctx)
	if _, err := oras.ExtendedCopy(ctx, src, "v1", out, "v1", oras.DefaultExtendedCopyOptions); err != nil {
		t.Fatal(err)
	}
	if d, err := out.Resolve(ctx, "v1"); err != nil || d.Digest != img.Digest {
		t.Fatalf("the OCI store resolves v1 to %v, %v", d, err)
	}
	preds, err := out.Predecessors(ctx, img)
	if err != nil || len(preds) != 1 || preds[0].Digest != sig.Digest {
		t.Fatalf("the signature did not reach the OCI store: %+v, %v", preds, err)
	}
	// And oras.Fetch by tag.
	if _, b, err := oras.FetchBytes(ctx, src, "v1", oras.DefaultFetchBytesOptions); err != nil || digest.FromBytes(b) != img.Digest {
		t.Fatalf("oras.FetchBytes = %v", err)
	}
	tags := []string{}
	if err := src.Tags(ctx, "", func(ts []string) error { tags = append(tags, ts...); return nil }); err != nil || len(tags) != 1 || tags[0] != "v1" {
		t.Errorf("Tags = %v, %v", tags, err)
	}
}

// What a copy pushed is under its lease until it ends: a GC with no
// grace period keeps it; after Close, a manifest pushed without a tag (and
// not a referrer) is not in index.json and GC frees it with its blobs.
func TestCopyLease(t *testing.T) {
	ctx := context.Background()
	mem, img, _ := source(t)
	s := openStore(t)
	dst := orasstore.New(s, nil)
	// oras.Copy to a digest reference: pushes the graph, tags nothing.
	if _, err := oras.Copy(ctx, mem, "v1", dst, img.Digest.String(), oras.DefaultCopyOptions); err != nil {
		t.Fatal(err)
	}
	gc, err := s.GC(ctx, store.GCOptions{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(gc.Freed) != 0 || gc.Leased == 0 {
		t.Fatalf("GC during the copy freed %d blobs (%d leased); want none freed", len(gc.Freed), gc.Leased)
	}
	if err := dst.Push(ctx, img, bytes.NewReader(nil)); !errors.Is(err, errdef.ErrAlreadyExists) {
		t.Errorf("Push of content the store holds = %v, want errdef.ErrAlreadyExists", err)
	}
	if err := dst.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if imgs, err := s.List(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("an untagged push became an entry of index.json: %+v, %v", imgs, err)
	}
	gc, err = s.GC(ctx, store.GCOptions{Grace: -1})
	if err != nil || len(gc.Freed) != 4 {
		t.Fatalf("GC after the copy ended freed %d blobs, %v; want the manifest, config and 2 layers", len(gc.Freed), err)
	}
	if _, err := dst.Fetch(ctx, img); !errors.Is(err, errdef.ErrNotFound) || !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Fetch of a freed manifest = %v, want both oras's and the store's not found", err)
	}
	if err := dst.Push(ctx, img, bytes.NewReader(nil)); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Push after Close = %v, want ErrClosed", err)
	}
}

// FindSuccessors reserves a manifest's successors, and the manifest, in
// the copy's lease before they are pushed: a blob the store already holds
// unreferenced is kept by a GC from then on. A leaf has no successors and
// reserves nothing. A copy through it ends as any other.
func TestFindSuccessorsReserves(t *testing.T) {
	ctx := context.Background()
	mem, img, _ := source(t)
	s := openStore(t)
	want, err := content.Successors(ctx, mem, img)
	if err != nil || len(want) != 3 {
		t.Fatalf("successors of the image = %v, %v", want, err)
	}
	// The config, in the store before the copy, referenced by nothing.
	cfg := want[0]
	b, err := content.FetchAll(ctx, mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutBlob(ctx, cfg, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}

	dst := orasstore.New(s, nil)
	if got, err := dst.FindSuccessors(ctx, mem, want[1]); err != nil || len(got) != 0 {
		t.Fatalf("FindSuccessors of a layer = %v, %v; want none", got, err)
	}
	if leases, err := s.Leases(ctx); err != nil || len(leases) != 0 {
		t.Fatalf("a leaf took a lease: %v, %v", leases, err)
	}
	got, err := dst.FindSuccessors(ctx, mem, img)
	if err != nil || len(got) != len(want) {
		t.Fatalf("FindSuccessors of the image = %v, %v; want %v", got, err, want)
	}
	for i := range want {
		if got[i].Digest != want[i].Digest {
			t.Fatalf("FindSuccessors = %v, want %v", got, want)
		}
	}
	gc, err := s.GC(ctx, store.GCOptions{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	if len(gc.Freed) != 0 || gc.Leased != 1 {
		t.Fatalf("GC after the reservation freed %v (%d leased); want the config kept by the lease", gc.Freed, gc.Leased)
	}

	opts := oras.DefaultCopyOptions
	opts.FindSuccessors = dst.FindSuccessors
	if _, err := oras.Copy(ctx, mem, "v1", dst, "v1", opts); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d, err := s.Resolve(ctx, "v1"); err != nil || d.Digest != img.Digest {
		t.Fatalf("Resolve v1 = %v, %v", d, err)
	}
	if leases, err := s.Leases(ctx); err != nil || len(leases) != 0 {
		t.Errorf("leases after Close = %v, %v", leases, err)
	}
	testutil.MustCheck(t, s)
}

// Delete of a tagged manifest removes it with what only it used; a blob
// cannot be deleted on its own.
func TestDelete(t *testing.T) {
	ctx := context.Background()
	mem, img, _ := source(t)
	s := openStore(t)
	dst := orasstore.New(s, nil)
	if _, err := oras.Copy(ctx, mem, "v1", dst, "v1", oras.DefaultCopyOptions); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := content.FetchAll(ctx, dst, img)
	if err != nil {
		t.Fatal(err)
	}
	var mf v1.Manifest
	if err := json.Unmarshal(m, &mf); err != nil {
		t.Fatal(err)
	}
	if err := dst.Delete(ctx, mf.Layers[0]); !errors.Is(err, errdef.ErrUnsupported) {
		t.Errorf("Delete of a layer = %v, want errdef.ErrUnsupported", err)
	}
	if err := dst.Delete(ctx, img); err != nil {
		t.Fatal(err)
	}
	if ok, err := dst.Exists(ctx, mf.Layers[0]); err != nil || ok {
		t.Errorf("a layer only the deleted manifest used is still there: %v, %v", ok, err)
	}
	if _, err := dst.Resolve(ctx, "v1"); !errors.Is(err, errdef.ErrNotFound) {
		t.Errorf("Resolve after Delete = %v, want errdef.ErrNotFound", err)
	}
	testutil.MustCheck(t, s)
}

// A referrer is kept only when index.json reaches its subject: copied
// with a subject that nothing tags, both go once the copy's lease ends.
func TestReferrerOfUntaggedSubject(t *testing.T) {
	ctx := context.Background()
	mem, img, _ := source(t)
	s := openStore(t)
	dst := orasstore.New(s, nil)
	if _, err := oras.ExtendedCopy(ctx, mem, "v1", dst, img.Digest.String(), oras.DefaultExtendedCopyOptions); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if imgs, err := s.List(ctx); err != nil || len(imgs) != 0 {
		t.Fatalf("index.json after a copy that tagged nothing = %+v, %v; want empty", imgs, err)
	}
	if ok, err := s.Referenced(ctx, img.Digest); err != nil || ok {
		t.Errorf("Referenced(untagged subject) = %v, %v", ok, err)
	}
	gc, err := s.GC(ctx, store.GCOptions{Grace: -1})
	if err != nil || len(gc.Freed) != 7 {
		t.Fatalf("GC freed %d blobs, %v; want the image's 4 and the signature's 3", len(gc.Freed), err)
	}
	testutil.MustCheck(t, s)
}

// Abort ends a failed copy: the referrer it pushed is not kept, even
// though index.json reaches its subject (which Close would keep), the
// lease is released, and GC frees what the copy wrote.
func TestAbort(t *testing.T) {
	ctx := context.Background()
	mem, img, sig := source(t)
	s := openStore(t)
	// The image is in the layout and tagged already.
	first := orasstore.New(s, nil)
	if _, err := oras.Copy(ctx, mem, "v1", first, "v1", oras.DefaultCopyOptions); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	dst := orasstore.New(s, nil)
	if err := oras.ExtendedCopyGraph(ctx, mem, dst, img, oras.DefaultExtendedCopyGraphOptions); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Exists(ctx, sig); err != nil || !ok {
		t.Fatalf("the signature was not pushed: %v, %v", ok, err)
	}
	if err := dst.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(ctx); err != nil {
		t.Fatalf("Close after Abort = %v", err)
	}
	if imgs, err := s.List(ctx); err != nil || len(imgs) != 1 || imgs[0].Name != "v1" {
		t.Fatalf("index.json after Abort = %+v, %v; want v1 alone", imgs, err)
	}
	if leases, err := s.Leases(ctx); err != nil || len(leases) != 0 {
		t.Fatalf("leases after Abort = %v, %v", leases, err)
	}
	gc, err := s.GC(ctx, store.GCOptions{Grace: -1})
	if err != nil || len(gc.Freed) != 3 {
		t.Fatalf("GC after Abort freed %d blobs, %v; want the signature's 3", len(gc.Freed), err)
	}
	testutil.MustCheck(t, s)
}
