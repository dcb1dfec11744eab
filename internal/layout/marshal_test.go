package layout

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestMarshalRuns: Marshal copies runs of entries that follow one another
// in the bytes they were parsed from in one piece; whatever the entries
// (kept, dropped, reordered, repeated, from two files, new), its output is
// the one it gives entry by entry.
func TestMarshalRuns(t *testing.T) {
	doc := func(n int, tag string, sep string) []byte {
		var b strings.Builder
		b.WriteString(`{"schemaVersion":2,"manifests":[`)
		for i := range n {
			if i > 0 {
				b.WriteString(sep)
			}
			fmt.Fprintf(&b, `{"mediaType":"m","digest":"sha256:%064x","size":%d,"annotations":{"org.opencontainers.image.ref.name":"%s%d"}}`, i, i+1, tag, i)
		}
		b.WriteString("]}\n")
		return []byte(b.String())
	}
	a, err := ParseIndex(doc(50, "a", ","))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseIndex(doc(30, "b", ", ")) // white space between entries
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 300 {
		var entries []Entry
		switch round % 4 {
		case 0: // drop some, keep the order (a delete, a prune)
			for _, e := range a.Entries {
				if rng.IntN(5) != 0 {
					entries = append(entries, e)
				}
			}
		default: // anything
			for range rng.IntN(80) {
				switch rng.IntN(5) {
				case 0:
					entries = append(entries, b.Entries[rng.IntN(len(b.Entries))])
				case 1:
					d := v1.Descriptor{MediaType: "m", Digest: digest.FromString(fmt.Sprint(rng.IntN(9))), Size: 3}
					entries = append(entries, NewEntry(d, "new"))
				default:
					i := rng.IntN(len(a.Entries))
					entries = append(entries, a.Entries[i:min(len(a.Entries), i+1+rng.IntN(4))]...)
				}
			}
		}
		got := a.With(entries).Marshal()
		plain := make([]Entry, len(entries))
		for i, e := range entries {
			e.tail = nil
			plain[i] = e
		}
		if want := a.With(plain).Marshal(); !bytes.Equal(got, want) {
			t.Fatalf("round %d: Marshal by runs\n%s\nentry by entry\n%s", round, got, want)
		}
		if _, err := ParseIndex(got); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	// All of a: one copy, the file's bytes.
	if got := a.Marshal(); !bytes.Equal(got, doc(50, "a", ",")) {
		t.Errorf("a whole index is not rewritten as it was:\n%s", got)
	}
}
