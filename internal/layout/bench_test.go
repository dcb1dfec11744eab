package layout

import (
	"fmt"
	"strings"
	"testing"
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
