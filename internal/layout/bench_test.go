package layout

import (
	"fmt"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// BenchmarkParseIndex parses an index.json of 20,000 tagged entries (about
// 5 MB, as gendemo writes), the fast way and by encoding/json.
func BenchmarkParseIndex(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
	for i := range 20000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%064x","size":%d,"annotations":{"org.opencontainers.image.created":"2026-01-01T00:00:00Z","org.opencontainers.image.ref.name":"example.com/repo%d:v%d"}}`, i, 700+i%300, i%10, i)
	}
	sb.WriteString("]}\n")
	doc := []byte(sb.String())
	for _, c := range []struct {
		name  string
		parse func([]byte) (*Index, error)
	}{{"fast", ParseIndex}, {"encoding-json", parseIndexSlow}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(doc)))
			for b.Loop() {
				ix, err := c.parse(doc)
				if err != nil || len(ix.Entries) != 20000 {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseChildren parses a typical image manifest (a config and 5
// layers, as skopeo writes it), the fast way and by encoding/json (what
// ParseChildrenAs does for a manifest the fast parser gives up on).
func BenchmarkParseChildren(b *testing.B) {
	var sb strings.Builder
	fmt.Fprintf(&sb, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%064x","size":1469},"layers":[`, 0)
	for i := range 5 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%064x","size":%d}`, i+1, 3000000+i*1234)
	}
	sb.WriteString(`]}`)
	doc := []byte(sb.String())
	for _, c := range []struct {
		name  string
		parse func([]byte) (Children, error)
	}{
		{"fast", func(b []byte) (Children, error) { return ParseChildrenAs("blob X", v1.MediaTypeImageManifest, b) }},
		{"encoding-json", func(b []byte) (Children, error) {
			m, err := decodeManifest("blob X", v1.MediaTypeImageManifest, b)
			if err != nil {
				return Children{}, err
			}
			return childrenOf("blob X", m)
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(doc)))
			for b.Loop() {
				kids, err := c.parse(doc)
				if err != nil || len(kids.Refs) != 6 {
					b.Fatal(err)
				}
			}
		})
	}
}
