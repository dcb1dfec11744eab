package fsck

import (
	"testing"

	"github.com/ocistore/ocistore/internal/layout"
)

// TestValidCopy: repair restores index.json only from a copy that hashes to
// the committed digest and parses.
func TestValidCopy(t *testing.T) {
	good := []byte(`{"schemaVersion":2,"manifests":[]}`)
	d := layout.Sum(good)
	if !validCopy(good, d) {
		t.Fatal("a true copy is refused")
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)-2] = ' '
	if validCopy(bad, d) {
		t.Fatal("a copy that does not hash to its digest is accepted")
	}
	junk := []byte("not an index")
	if validCopy(junk, layout.Sum(junk)) {
		t.Fatal("a copy that does not parse is accepted")
	}
}
