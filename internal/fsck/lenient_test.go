package fsck_test

import (
	"encoding/json"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsck"
)

// TestParseIndexLenientFoldedKey: the entries of an index.json that holds
// them under "Manifests" (as skopeo and umoci read it) are sorted into good
// and bad ones like those under "manifests", and the index kept holds the
// good ones under "manifests" alone.
func TestParseIndexLenientFoldedKey(t *testing.T) {
	good := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":3,"annotations":{"org.opencontainers.image.ref.name":"keep"}}`
	bad := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../x","size":3}`
	for _, key := range []string{"manifests", "Manifests", `\u004danifests`} {
		in := `{"schemaVersion":2,"` + key + `":[` + good + `,` + bad + `]}`
		ix, broken, err := fsck.ParseIndexLenient([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if len(broken) != 1 || broken[0].Pos != 1 {
			t.Errorf("%s: bad entries %+v, want manifests[1]", key, broken)
		}
		if len(ix.Entries) != 1 || ix.Entries[0].Name() != "keep" {
			t.Fatalf("%s: entries %+v", key, ix.Entries)
		}
		var tools v1.Index
		if err := json.Unmarshal(ix.Marshal(), &tools); err != nil || len(tools.Manifests) != 1 {
			t.Errorf("%s: the tools read %+v (%v) in %s", key, tools.Manifests, err, ix.Marshal())
		}
	}
}
