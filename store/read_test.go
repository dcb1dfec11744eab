package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/store"
)

// OpenBlob gives random access to a blob: http.ServeContent answers a
// Range request with 206 and the bytes of the range; the size is known to
// the caller, and a size the descriptor does not say is looked up.
func TestOpenBlobRange(t *testing.T) {
	l := newLib(t)
	content := l.b.Bytes(300 << 10)
	layer := l.b.Put(content, "application/vnd.oci.image.layer.v1.tar")
	for _, size := range []int64{layer.Size, -1, 0} {
		r, err := l.s.OpenBlob(l.ctx, v1.Descriptor{Digest: layer.Digest, Size: size})
		if err != nil {
			t.Fatalf("OpenBlob with size %d: %v", size, err)
		}
		if r.Size() != layer.Size || r.Descriptor().Size != layer.Size {
			t.Errorf("size %d, descriptor %d; want %d", r.Size(), r.Descriptor().Size, layer.Size)
		}
		if r.File() == nil {
			t.Error("no file to hand to sendfile on the OS file system")
		}
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/blob", nil)
		req.Header.Set("Range", "bytes=1000-1999")
		http.ServeContent(rec, req, "", time.Time{}, r)
		if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), content[1000:2000]) {
			t.Errorf("Range request: %d, %d bytes; want 206 and bytes 1000-1999", rec.Code, rec.Body.Len())
		}
		buf := make([]byte, 10)
		if n, err := r.ReadAt(buf, layer.Size-5); n != 5 || err != io.EOF || !bytes.Equal(buf[:5], content[len(content)-5:]) {
			t.Errorf("ReadAt across the end: %d, %v", n, err)
		}
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		all, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(all, content) {
			t.Errorf("ReadAll after Seek: %d bytes, %v", len(all), err)
		}
		r.Close()
	}
	if _, err := l.s.OpenBlob(l.ctx, v1.Descriptor{Digest: layer.Digest, Size: layer.Size + 1}); !errors.Is(err, store.ErrSizeMismatch) {
		t.Errorf("OpenBlob with a wrong size = %v, want ErrSizeMismatch", err)
	}
	if _, err := l.s.OpenBlob(l.ctx, v1.Descriptor{Digest: digest.FromString("absent"), Size: -1}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("OpenBlob of an absent blob = %v, want ErrNotFound", err)
	}
	ctx, cancel := context.WithCancel(l.ctx)
	r, err := l.s.OpenBlob(ctx, layer)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cancel()
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, context.Canceled) {
		t.Errorf("Read after the context ended = %v, want context.Canceled", err)
	}
}

// Exists takes an unknown size (negative, or zero for a digest other than
// the empty blob's); a size it is told must match.
func TestExistsUnknownSize(t *testing.T) {
	l := newLib(t)
	layer := l.b.Random(1000)
	empty := l.b.Put(nil, "application/octet-stream")
	for _, c := range []struct {
		desc v1.Descriptor
		want bool
	}{
		{layer, true},
		{v1.Descriptor{Digest: layer.Digest, Size: -1}, true},
		{v1.Descriptor{Digest: layer.Digest}, true},
		{v1.Descriptor{Digest: layer.Digest, Size: 999}, false},
		{v1.Descriptor{Digest: empty.Digest}, true},
		{v1.Descriptor{Digest: digest.FromString("absent"), Size: -1}, false},
	} {
		got, err := l.s.Exists(l.ctx, c.desc)
		if err != nil || got != c.want {
			t.Errorf("Exists(%s, size %d) = %v, %v; want %v", c.desc.Digest, c.desc.Size, got, err, c.want)
		}
	}
}

// Stat describes any blob; Resolve resolves any manifest the layout holds,
// a platform manifest of an index included, and nothing else.
func TestStatAndResolveAnyManifest(t *testing.T) {
	l := newLib(t)
	layer := l.b.Random(100)
	amd := l.image([]v1.Descriptor{layer}, 1)
	arm := l.image([]v1.Descriptor{layer}, 1)
	ix := l.b.Index(amd, arm)
	l.tag(ix, "multi:1")

	got, err := l.s.Stat(l.ctx, layer.Digest)
	if err != nil || got.Size != layer.Size || got.MediaType != "application/octet-stream" {
		t.Errorf("Stat of a layer = %+v, %v", got, err)
	}
	for _, d := range []v1.Descriptor{ix, amd} {
		got, err := l.s.Stat(l.ctx, d.Digest)
		if err != nil || got.Size != d.Size || got.MediaType != d.MediaType {
			t.Errorf("Stat of %s = %+v, %v; want media type %s", d.Digest, got, err, d.MediaType)
		}
		res, err := l.s.Resolve(l.ctx, d.Digest.String())
		if err != nil || res.Digest != d.Digest || res.Size != d.Size || res.MediaType != d.MediaType {
			t.Errorf("Resolve(%s) = %+v, %v", d.Digest, res, err)
		}
	}
	if _, err := l.s.Resolve(l.ctx, layer.Digest.String()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Resolve of a layer's digest = %v, want ErrNotFound", err)
	}
	if _, err := l.s.Stat(l.ctx, digest.FromString("absent")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stat of an absent blob = %v, want ErrNotFound", err)
	}
}

// Referrers lists the manifests whose subject is the given one, from the
// journal, filtered by artifact type, and follows the commits of the
// handle (the readers' shared copy of the journal is taken again).
func TestReferrers(t *testing.T) {
	l := newLib(t)
	img := l.image(nil, 1)
	l.tag(img, "app:1")
	sig := l.b.Artifact("application/vnd.example.signature", &img)
	l.tag(sig, "app:sig")
	got, err := l.s.Referrers(l.ctx, img.Digest, "")
	if err != nil || len(got) != 1 || got[0].Digest != sig.Digest || got[0].ArtifactType != "application/vnd.example.signature" || got[0].MediaType != v1.MediaTypeImageManifest {
		t.Fatalf("Referrers = %+v, %v", got, err)
	}
	sbom := l.b.Artifact("application/vnd.example.sbom", &img)
	l.tag(sbom, "app:sbom")
	if got, err := l.s.Referrers(l.ctx, img.Digest, ""); err != nil || len(got) != 2 {
		t.Errorf("Referrers after a second referrer = %+v, %v", got, err)
	}
	if got, err := l.s.Referrers(l.ctx, img.Digest, "application/vnd.example.sbom"); err != nil || len(got) != 1 || got[0].Digest != sbom.Digest {
		t.Errorf("Referrers filtered by artifact type = %+v, %v", got, err)
	}
	if got, err := l.s.Referrers(l.ctx, sig.Digest, ""); err != nil || got == nil || len(got) != 0 {
		t.Errorf("Referrers of a manifest nothing refers to = %#v, %v; want []", got, err)
	}
	l.del("app:sig")
	if got, err := l.s.Referrers(l.ctx, img.Digest, ""); err != nil || len(got) != 1 || got[0].Digest != sbom.Digest {
		t.Errorf("Referrers after rm of one = %+v, %v", got, err)
	}
}

// AddUntagged makes manifests untagged roots, once each, and refuses what
// is not a manifest or not in the layout, changing nothing.
func TestAddUntagged(t *testing.T) {
	l := newLib(t)
	img := l.image(nil, 1)
	l.tag(img, "app:1")
	sig := l.b.Artifact("application/vnd.example.signature", &img)
	for range 2 {
		if err := l.s.AddUntagged(l.ctx, sig, img); err != nil {
			t.Fatal(err)
		}
	}
	imgs, err := l.s.List(l.ctx)
	if err != nil || len(imgs) != 2 || imgs[1].Name != "" || imgs[1].Descriptor.Digest != sig.Digest {
		t.Fatalf("List after AddUntagged twice = %+v, %v; want app:1 and the untagged signature", imgs, err)
	}
	if refs, err := l.s.Referrers(l.ctx, img.Digest, ""); err != nil || len(refs) != 1 {
		t.Errorf("Referrers of an untagged referrer's subject = %+v, %v", refs, err)
	}
	before := l.indexFile()
	layer := l.b.Random(10)
	if err := l.s.AddUntagged(l.ctx, layer); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("AddUntagged of a layer = %v, want ErrInvalidArgument", err)
	}
	absent := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromString("absent"), Size: 6}
	if err := l.s.AddUntagged(l.ctx, absent); !errors.Is(err, store.ErrMissingDependency) {
		t.Errorf("AddUntagged of an absent manifest = %v, want ErrMissingDependency (as Tag)", err)
	}
	if !bytes.Equal(before, l.indexFile()) {
		t.Error("a refused AddUntagged changed index.json")
	}
}

// Referenced follows the journal's counts: a root and the blobs of its
// graph are, a blob nothing reaches is not, and a removal is seen at once.
func TestReferenced(t *testing.T) {
	l := newLib(t)
	layer := l.b.Random(100)
	img := l.image([]v1.Descriptor{layer}, 0)
	loose := l.b.Random(50)
	l.tag(img, "app:1")
	for d, want := range map[digest.Digest]bool{img.Digest: true, layer.Digest: true, loose.Digest: false} {
		if got, err := l.s.Referenced(l.ctx, d); err != nil || got != want {
			t.Errorf("Referenced(%s) = %v, %v; want %v", d, got, err, want)
		}
	}
	l.del("app:1")
	if got, err := l.s.Referenced(l.ctx, img.Digest); err != nil || got {
		t.Errorf("Referenced after rm = %v, %v", got, err)
	}
}

// Held: an entry, a blob its graph reaches and a blob a live lease holds
// are the layout's; a blob in blobs/ that is none of these (the manifest
// blob of a PUT whose transaction a crash stopped) is not, though Resolve
// finds it by digest; an absent one is not either. Its lease expired, a
// leased blob is no longer held.
func TestHeld(t *testing.T) {
	l := newLib(t)
	layer := l.b.Random(100)
	img := l.image([]v1.Descriptor{layer}, 0)
	l.tag(img, "app:1")
	platform := l.image(nil, 1)
	ix := l.b.Index(platform)
	l.tag(ix, "multi:1")
	orphan := l.image(nil, 1) // written, never tagged
	lease, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leased := l.putUnder(lease.Context(l.ctx), []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`))
	for _, c := range []struct {
		what string
		d    digest.Digest
		want bool
	}{
		{"an entry", img.Digest, true},
		{"a layer of an entry", layer.Digest, true},
		{"a platform manifest of an index", platform.Digest, true},
		{"a manifest nothing references", orphan.Digest, false},
		{"a manifest a live lease holds", leased.Digest, true},
		{"an absent blob", digest.FromString("absent"), false},
	} {
		if got, err := l.s.Held(l.ctx, c.d); err != nil || got != c.want {
			t.Errorf("Held(%s: %s) = %v, %v; want %v", c.what, c.d, got, err, c.want)
		}
	}
	if _, err := l.s.Resolve(l.ctx, orphan.Digest.String()); err != nil {
		t.Errorf("Resolve of a manifest in blobs/ nothing references: %v (it finds any manifest present)", err)
	}
	if err := lease.Release(l.ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := l.s.Held(l.ctx, leased.Digest); err != nil || got {
		t.Errorf("Held of a blob whose lease was released = %v, %v; want false", got, err)
	}
}
