package journal

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzResolveIndex: stored values of any shape (a damaged journal) never
// make the reader panic, loop or allocate without bound; what resolves is
// made of the stored bytes only.
func FuzzResolveIndex(f *testing.F) {
	base := []byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:aa"},{"digest":"sha256:bb"}]}`)
	bd := digest.FromBytes(base)
	f.Add((&delta{depth: 1, base: bd, prefix: 10, suffix: 5, middle: []byte("xyz")}).encode(), base)
	f.Add((&delta{depth: 2, base: "k", prefix: 0, suffix: 0}).encode(), base)
	f.Add([]byte{deltaTag, 1, 1, 'k', 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0}, base)
	f.Fuzz(func(t *testing.T, v, b []byte) {
		m := map[string][]byte{"k": v, string(bd): b, "self": v}
		get := func(k []byte) []byte { return m[string(k)] }
		out, err := resolveIndex(get, "k")
		if err == nil && len(out) > len(v)+len(b)*(maxDeltaDepth+1) {
			t.Fatalf("resolved %d bytes from %d stored", len(out), len(v)+len(b))
		}
	})
}
