// Package fuzz holds cross-package fuzz targets: the parsers of untrusted
// layout files and the journal's record decoder. Run them with `make fuzz`;
// crashers land in testdata/fuzz/ and are committed as regression seeds.
package fuzz

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"annotations":{"org.opencontainers.image.ref.name":"x"}}],"annotations":{"a":"b"}}`))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:../../x","size":1}]}`))
	f.Add([]byte(``))
	// Spellings that encoding/json reads as "manifests" (and the tools
	// with it), and duplicates.
	f.Add([]byte(`{"schemaVersion":2,"Manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"Annotations":{"org.opencontainers.image.ref.name":"x"}}]}`))
	f.Add([]byte(`{"schemaVersion":2,"\u006danifests":[{"\u0064igest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}],"manifests":[{"digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","digest":null}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ix, err := layout.ParseIndex(b)
		if err != nil {
			return
		}
		// What parses must render to something that parses to the same entries.
		out := ix.Marshal()
		ix2, err := layout.ParseIndex(out)
		if err != nil {
			t.Fatalf("re-parse of rendered index: %v\n%s", err, out)
		}
		if len(ix2.Entries) != len(ix.Entries) {
			t.Fatalf("entries %d -> %d", len(ix.Entries), len(ix2.Entries))
		}
		for i := range ix.Entries {
			if ix.Entries[i].Desc.Digest != ix2.Entries[i].Desc.Digest || ix.Entries[i].Name() != ix2.Entries[i].Name() {
				t.Fatalf("entry %d changed", i)
			}
			// Every digest that parsed is safe to turn into a path.
			p := layout.BlobPath(ix.Entries[i].Desc.Digest)
			if bytes.Contains([]byte(p), []byte("..")) {
				t.Fatalf("path traversal accepted: %s", p)
			}
		}
		if !bytes.Equal(ix2.Marshal(), out) {
			t.Fatalf("rendering is not stable")
		}
	})
}

func FuzzParseChildren(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}`))
	f.Add([]byte(`{"manifests":[{"digest":"sha512:00","size":-1}]}`))
	f.Add([]byte(`{"Config":{"mediaType":"a","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"config":null,"LAYERS":[],"Manifests":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := layout.ParseChildren("fuzz", b)
		if err != nil {
			return
		}
		for _, d := range c.Refs {
			if d.Digest.Validate() != nil || d.Size < 0 {
				t.Fatalf("invalid descriptor accepted: %+v", d)
			}
		}
	})
}

func FuzzRecordDecode(f *testing.F) {
	r := &journal.Record{ID: 7, Op: "delete x", Time: time.Unix(1700000000, 0).UTC(),
		OldIndex: digest.FromString("old"), NewIndex: digest.FromString("new"),
		Unlink: []digest.Digest{digest.FromString("a")}, Deltas: map[digest.Digest]int64{digest.FromString("a"): -1}}
	f.Add(r.Encode())
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := journal.Decode(b)
		if err != nil {
			return
		}
		again, err := journal.Decode(got.Encode())
		if err != nil {
			t.Fatalf("decode(encode(x)): %v", err)
		}
		if !reflect.DeepEqual(got, again) {
			t.Fatalf("decode(encode(x)) != x:\n%+v\n%+v", got, again)
		}
	})
}
