package store

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestSmoke(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	put := func(b []byte, mt string) v1.Descriptor {
		d := v1.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		if err := s.PutBlob(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	base := put([]byte("base layer"), v1.MediaTypeImageLayerGzip)
	mk := func(own string) v1.Descriptor {
		cfg := put([]byte(`{"c":"`+own+`"}`), v1.MediaTypeImageConfig)
		l := put([]byte(own), v1.MediaTypeImageLayerGzip)
		m, _ := json.Marshal(v1.Manifest{Versioned: struct {
			SchemaVersion int `json:"schemaVersion"`
		}{2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{base, l}})
		d, err := s.PutManifest(ctx, v1.MediaTypeImageManifest, m)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	a, b := mk("a"), mk("b")
	if err := s.Tag(ctx, a, "a", "a2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, b, "b"); err != nil {
		t.Fatal(err)
	}
	res, err := s.Delete(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Freed) != 0 {
		t.Fatalf("freed %v while a2 holds it", res.Freed)
	}
	res, err = s.Delete(ctx, "a2")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Freed) != 3 {
		t.Fatalf("freed %v, want manifest+config+own layer", res.Freed)
	}
	rep, err := s.Check(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("problems: %v", rep.Problems)
	}
	s.Close()
}
