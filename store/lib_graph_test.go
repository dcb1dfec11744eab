package store_test

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

func digests(ds ...v1.Descriptor) []digest.Digest {
	out := make([]digest.Digest, len(ds))
	for i, d := range ds {
		out[i] = d.Digest
	}
	return out
}

// TestSharedLayers: deleting one image keeps the layers another uses;
// deleting the last frees them.
func TestSharedLayers(t *testing.T) {
	l := newLib(t)
	base := []v1.Descriptor{l.b.Random(500), l.b.Random(700)}
	a, b, c := l.image(base, 1), l.image(base, 2), l.image(base[:1], 1)
	l.tag(a, "a")
	l.tag(b, "b")
	l.tag(c, "c")
	ag, bg, cg := l.graph(a), l.graph(b), l.graph(c)
	rc := l.refs()
	if rc[base[0].Digest] != 3 || rc[base[1].Digest] != 2 {
		t.Fatalf("shared layer counts %d, %d; want 3, 2", rc[base[0].Digest], rc[base[1].Digest])
	}

	l.del("a")
	l.wantBlobs(false, libMinus(ag, digests(base...))...)
	l.wantBlobs(true, bg...)
	l.wantBlobs(true, cg...)
	l.clean()

	res := l.del("b")
	l.wantBlobs(false, libMinus(bg, digests(base[0]))...) // base[1] was b's and a's only
	l.wantBlobs(true, cg...)
	if !slices.ContainsFunc(res.Freed, func(f store.Blob) bool { return f.Digest == base[1].Digest.String() }) {
		t.Errorf("deleting the last user of %s did not free it: %v", base[1].Digest, res.Freed)
	}
	l.clean()

	l.del("c")
	l.wantBlobs(false, cg...)
	if rc := l.refs(); len(rc) != 0 {
		t.Errorf("refcounts left after deleting everything: %v", rc)
	}
	l.clean()
}

// TestTwoTagsOneManifest: the blobs stay until the last tag goes.
func TestTwoTagsOneManifest(t *testing.T) {
	l := newLib(t)
	m := l.image(nil, 2)
	l.tag(m, "one")
	l.tag(m, "two")
	g := l.graph(m)
	if rc := l.refs(); rc[m.Digest] != 2 {
		t.Errorf("manifest count %d, want 2", rc[m.Digest])
	}
	if res := l.del("one"); len(res.Freed) != 0 {
		t.Errorf("freed %v", res.Freed)
	}
	l.wantBlobs(true, g...)
	l.clean()
	if res := l.del("two"); len(res.Freed) != len(g) {
		t.Errorf("freed %d blobs, want %d", len(res.Freed), len(g))
	}
	l.wantBlobs(false, g...)
	l.clean()
}

// TestNestedIndex: index -> index -> manifests. Deleting the outer index
// frees the whole tree except a manifest that is also tagged on its own
// (and what it uses).
func TestNestedIndex(t *testing.T) {
	l := newLib(t)
	shared := l.b.Random(300)
	m1, m2, m3 := l.image([]v1.Descriptor{shared}, 1), l.image(nil, 1), l.image([]v1.Descriptor{shared}, 1)
	inner := l.b.Index(m1, m2)
	outer := l.b.Index(inner, m3)
	l.tag(outer, "outer")
	l.tag(m1, "m1")
	og, m1g := l.graph(outer), l.graph(m1)
	for _, d := range []v1.Descriptor{inner, m1, m2, m3, shared} {
		if !slices.Contains(og, d.Digest) {
			t.Fatalf("graph of outer misses %s", d.Digest)
		}
	}
	if rc := l.refs(); rc[m1.Digest] != 2 || rc[inner.Digest] != 1 || rc[shared.Digest] != 2 {
		t.Errorf("counts m1=%d inner=%d shared=%d; want 2 1 2", rc[m1.Digest], rc[inner.Digest], rc[shared.Digest])
	}
	l.clean()

	res := l.del("outer")
	l.wantBlobs(false, libMinus(og, m1g)...)
	l.wantBlobs(true, m1g...)
	if len(res.Freed) != len(og)-len(m1g) {
		t.Errorf("freed %d, want %d", len(res.Freed), len(og)-len(m1g))
	}
	l.clean()
	l.del("m1")
	l.wantBlobs(false, m1g...)
	l.clean()
}

// TestDeepNesting: an index chain deeper than the limit is refused cleanly.
func TestDeepNesting(t *testing.T) {
	l := newLib(t)
	d := l.image(nil, 1)
	for i := 0; i < layout.MaxDepth+2; i++ {
		d = l.b.Index(d)
	}
	before := l.indexFile()
	err := l.s.Tag(l.ctx, d, "deep")
	if !errors.Is(err, store.ErrCorrupt) {
		t.Fatalf("Tag of a %d-deep index = %v, want ErrCorrupt", layout.MaxDepth+2, err)
	}
	if string(before) != string(l.indexFile()) {
		t.Error("index.json changed")
	}
}

// TestDockerMediaTypes: Docker schema 2 manifests and manifest lists are
// manifests (their children are counted), from PutManifest to Delete.
func TestDockerMediaTypes(t *testing.T) {
	l := newLib(t)
	shared := l.b.RandomAs(200, testutil.MediaTypeDockerLayer)
	amd := l.b.DockerManifest([]v1.Descriptor{shared}, 2)
	arm := l.b.DockerManifest([]v1.Descriptor{shared}, 1)
	list := l.b.DockerList(amd, arm)
	if err := l.s.Tag(l.ctx, list, "docker"); err != nil {
		t.Fatal(err)
	}
	// PutManifest with the Docker types, and a tag in the same call.
	raw, _ := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: layout.MediaTypeDockerManifestList, Manifests: []v1.Descriptor{arm}})
	only, err := l.s.PutManifest(l.ctx, layout.MediaTypeDockerManifestList, raw, "arm-only")
	if err != nil {
		t.Fatal(err)
	}
	single := l.b.DockerManifest(nil, 1)
	sraw := readBlob(t, l, single)
	if _, err := l.s.PutManifest(l.ctx, layout.MediaTypeDockerManifest, sraw, "single"); err != nil {
		t.Fatal(err)
	}
	lg, ag, sg := l.graph(list), l.graph(arm), l.graph(single)
	if len(lg) != 1+1+3+1+2+1 { // list, shared, amd (m+cfg+2), arm (m+cfg+1)
		t.Errorf("list graph has %d blobs: %v", len(lg), lg)
	}
	if rc := l.refs(); rc[shared.Digest] != 2 || rc[arm.Digest] != 2 {
		t.Errorf("counts shared=%d arm=%d; want 2 2", rc[shared.Digest], rc[arm.Digest])
	}
	l.clean()
	l.del("docker")
	l.wantBlobs(false, libMinus(lg, ag)...)
	l.wantBlobs(true, ag...)
	l.clean()
	l.del("arm-only", "single")
	l.wantBlobs(false, ag...)
	l.wantBlobs(false, sg...)
	l.wantBlobs(false, only.Digest)
	l.clean()
}

func readBlob(t *testing.T, l *lib, d v1.Descriptor) []byte {
	t.Helper()
	b, err := libFetchAll(l.ctx, l.s, d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUnknownMediaTypes: an artifact whose layers have media types nobody
// knows, and an index entry of an unknown type, are leaves: counted, freed,
// never an error.
func TestUnknownMediaTypes(t *testing.T) {
	l := newLib(t)
	art := l.b.Artifact("application/vnd.example.sbom.v1", nil,
		"application/vnd.example.sbom.v1+json", "application/x-never-heard-of-it", "text/plain")
	thing := l.b.RandomAs(64, "application/vnd.example.thing.v1")
	img := l.image(nil, 1)
	ix := l.b.IndexOf(v1.MediaTypeImageIndex, img, thing, art)
	l.tag(art, "sbom")
	l.tag(ix, "mixed")
	artg, ixg := l.graph(art), l.graph(ix)
	if len(artg) != 5 { // manifest, empty config, 3 layers
		t.Errorf("artifact graph %v", artg)
	}
	if !slices.Contains(ixg, thing.Digest) {
		t.Errorf("graph of the index misses the unknown entry")
	}
	l.clean()
	l.del("mixed")
	l.wantBlobs(false, libMinus(ixg, artg)...)
	l.wantBlobs(true, artg...)
	l.clean()
	l.del("sbom")
	l.wantBlobs(false, artg...)
	l.clean()
	// A blob of an unknown type cannot itself be tagged.
	if err := l.s.Tag(l.ctx, thing, "thing"); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("Tag of an unknown media type = %v", err)
	}
}

// TestUnknownIndexEntry: index.json written by another tool holds an entry of
// an unknown media type. It is adopted as a leaf, survives other
// transactions, and is deleted by digest.
func TestUnknownIndexEntry(t *testing.T) {
	dir := t.TempDir()
	blobs := map[digest.Digest][]byte{}
	img := testutil.RawImage(blobs, []byte(`{}`), []byte("layer"))
	odd := []byte("opaque thing")
	oddDesc := testutil.Blob(odd, "application/vnd.example.unknown")
	blobs[oddDesc.Digest] = odd
	testutil.WriteRawLayout(t, dir, blobs, []v1.Descriptor{testutil.Named(img, "img"), testutil.Named(oddDesc, "odd")})
	l := libOpen(t, dir, 1)
	l.clean()
	if d, err := l.s.Resolve(l.ctx, "odd"); err != nil || d.MediaType != oddDesc.MediaType {
		t.Fatalf("Resolve(odd) = %v, %v", d, err)
	}
	m := l.image(nil, 1)
	l.tag(m, "new")
	l.del("img")
	l.wantBlobs(true, oddDesc.Digest)
	l.clean()
	l.del("odd")
	l.wantBlobs(false, oddDesc.Digest)
	l.clean()
}

// TestSHA512 builds, tags, resolves and deletes images whose every blob,
// manifest and index is sha512, sharing a sha256 layer with another image.
func TestSHA512(t *testing.T) {
	l := newLib(t)
	shared := l.b.Random(100) // sha256
	s256 := l.image([]v1.Descriptor{shared}, 1)
	l.tag(s256, "s256")
	l.b.Alg = digest.SHA512
	m := l.image([]v1.Descriptor{shared}, 2)
	ix := l.b.Index(m)
	if m.Digest.Algorithm() != digest.SHA512 || ix.Digest.Algorithm() != digest.SHA512 {
		t.Fatalf("builder did not make sha512 digests: %s %s", m.Digest, ix.Digest)
	}
	l.tag(m, "m512")
	l.tag(ix, "ix512")
	for ref, want := range map[string]digest.Digest{"m512": m.Digest, "ix512": ix.Digest, m.Digest.String(): m.Digest, ix.Digest.String(): ix.Digest} {
		if d, err := l.s.Resolve(l.ctx, ref); err != nil || d.Digest != want {
			t.Errorf("Resolve(%s) = %s, %v", ref, d.Digest, err)
		}
	}
	if got, err := libFetchAll(l.ctx, l.s, m); err != nil || digest.SHA512.FromBytes(got) != m.Digest {
		t.Errorf("Fetch sha512 manifest: %v", err)
	}
	mg := l.graph(m)
	l.clean()
	l.del(ix.Digest.String())
	l.wantBlobs(true, mg...)
	l.wantBlobs(false, ix.Digest)
	l.del("m512")
	l.wantBlobs(false, libMinus(mg, digests(shared))...)
	l.wantBlobs(true, l.graph(s256)...)
	l.clean()
}

// TestReferrer: a manifest whose subject is an image (a signature or an
// SBOM). The subject is a weak reference: the referrer does not keep the
// image alive, and with KeepReferrers deleting the image does not delete
// the referrer (by default it does: see TestReferrerCascade). Both stay
// consistent.
func TestReferrer(t *testing.T) {
	l := newLib(t)
	img := l.image(nil, 2)
	l.tag(img, "app")
	sig := l.b.Artifact("application/vnd.dev.cosign.artifact.sig.v1+json", &img, "application/vnd.dev.cosign.simplesigning.v1+json")
	l.tag(sig, "app.sig")
	ig, sg := l.graph(img), l.graph(sig)
	if slices.Contains(sg, img.Digest) {
		t.Fatal("subject counted as a child")
	}
	if rc := l.refs(); rc[img.Digest] != 1 {
		t.Errorf("image count %d: the subject must not count", rc[img.Digest])
	}
	l.clean()
	if _, err := l.s.DeleteWith(l.ctx, []string{"app"}, &store.DeleteOptions{KeepReferrers: true}); err != nil {
		t.Fatal(err)
	}
	l.wantBlobs(false, ig...)
	l.wantBlobs(true, sg...)
	if d, err := l.s.Resolve(l.ctx, "app.sig"); err != nil || d.Digest != sig.Digest {
		t.Errorf("referrer lost: %v, %v", d, err)
	}
	l.clean() // the dangling subject is not a problem
	// The referrer can be re-tagged and deleted with its subject gone.
	l.tag(sig, "sig2")
	l.del(sig.Digest.String())
	l.wantBlobs(false, sg...)
	l.clean()

	// A referrer whose subject was never stored can be put and tagged.
	absent := libDesc([]byte(`{"schemaVersion":2}`), v1.MediaTypeImageManifest)
	raw, _ := json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		Config: l.b.Put([]byte("{}"), v1.MediaTypeEmptyJSON), Layers: []v1.Descriptor{l.b.Put([]byte("{}"), v1.MediaTypeEmptyJSON)}, Subject: &absent,
	})
	if _, err := l.s.PutManifest(l.ctx, v1.MediaTypeImageManifest, raw, "orphan-sig"); err != nil {
		t.Fatalf("PutManifest of a referrer with an absent subject: %v", err)
	}
	l.clean()
}

// TestManifestAlsoReferencedAsLeaf: one manifest blob is referenced twice,
// once under a media type nobody knows (a leaf) and once as a manifest. Its
// children must be counted whatever the order of the references, or a layer
// it shares with another image is unlinked when that image goes, while the
// manifest is still tagged.
func TestManifestAlsoReferencedAsLeaf(t *testing.T) {
	for _, order := range []string{"leaf first", "manifest first"} {
		t.Run(order, func(t *testing.T) {
			l := newLib(t)
			shared := l.b.Random(300)
			other := l.image([]v1.Descriptor{shared}, 1)
			l.tag(other, "other")
			m := l.image([]v1.Descriptor{shared}, 1)
			asLeaf := m
			asLeaf.MediaType = "application/vnd.example.copy-of-a-manifest"
			// An artifact whose one layer is m's blob under another media type.
			hraw, _ := json.Marshal(v1.Manifest{
				Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
				ArtifactType: "application/vnd.example.bundle",
				Config:       l.b.Put([]byte("{}"), v1.MediaTypeEmptyJSON), Layers: []v1.Descriptor{asLeaf},
			})
			if order == "leaf first" {
				if _, err := l.s.PutManifest(l.ctx, v1.MediaTypeImageManifest, hraw, "bundle"); err != nil {
					t.Fatal(err)
				}
				l.tag(m, "m")
			} else {
				l.tag(m, "m")
				if _, err := l.s.PutManifest(l.ctx, v1.MediaTypeImageManifest, hraw, "bundle"); err != nil {
					t.Fatal(err)
				}
			}
			mg := l.graph(m)
			l.clean()
			l.del("other")
			l.wantBlobs(true, mg...)
			l.clean()
			l.del("bundle")
			l.wantBlobs(true, mg...)
			l.clean()
			l.del("m")
			l.wantBlobs(false, mg...)
			l.clean()
		})
	}
}
