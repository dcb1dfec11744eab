package layout

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// sameAsSlow fails unless the fast parse of b, when it has one, is what
// the slow way (encoding/json into a v1.Index) makes of it, and checks
// ParseIndex against encoding/json (sameAsTools). It reports whether the
// fast parse had one.
func sameAsSlow(t *testing.T, b []byte) bool {
	t.Helper()
	sameAsTools(t, b)
	top, entries, ok := parseIndexFast(b)
	if !ok {
		return false
	}
	slow, err := parseIndexSlow(b)
	if err != nil {
		if _, verr := ParseIndex(b); verr == nil {
			t.Fatalf("fast parse accepted what the slow way rejects (%v): %q", err, b)
		}
		return true // both refuse it (checkIndexTop, checkDescriptor)
	}
	if len(top) != len(slow.top) {
		t.Fatalf("top-level fields %v, encoding/json %v", top, slow.top)
	}
	for k, v := range slow.top {
		if !bytes.Equal(top[k], v) {
			t.Fatalf("top-level %q = %s, encoding/json %s", k, top[k], v)
		}
	}
	if len(entries) != len(slow.Entries) {
		t.Fatalf("%d entries, encoding/json %d", len(entries), len(slow.Entries))
	}
	for i := range entries {
		if !reflect.DeepEqual(entries[i].Desc, slow.Entries[i].Desc) {
			t.Fatalf("entry %d: %+v, encoding/json %+v", i, entries[i].Desc, slow.Entries[i].Desc)
		}
		if !bytes.Equal(entries[i].Raw, slow.Entries[i].Raw) {
			t.Fatalf("entry %d raw %s, encoding/json %s", i, entries[i].Raw, slow.Entries[i].Raw)
		}
	}
	return true
}

// TestParseIndexFastCorpus: every index.json of the fixture corpus, and
// typical shapes, parse the fast way to what encoding/json gives.
func TestParseIndexFastCorpus(t *testing.T) {
	files, _ := filepath.Glob("../../testdata/layouts/*/index.json")
	if len(files) == 0 {
		t.Fatal("no fixture layouts")
	}
	fast := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if sameAsSlow(t, b) {
			fast++
		}
	}
	if fast < len(files)/2 {
		t.Errorf("only %d of %d fixture indexes parse the fast way", fast, len(files))
	}
	for _, s := range fastSeeds {
		sameAsSlow(t, []byte(s))
	}
	for _, s := range hostileSeeds() {
		sameAsSlow(t, s)
	}
}

// hostileSeeds are the hostile spellings of index.json (compat_test.go),
// naming a manifest of digest d1.
func hostileSeeds() [][]byte {
	var out [][]byte
	for _, s := range hostileIndexes {
		s = strings.ReplaceAll(strings.ReplaceAll(s, "MDIGEST", d1), "MSIZE", "10")
		out = append(out, []byte(s))
	}
	return out
}

var fastSeeds = []string{
	`{"schemaVersion":2,"manifests":[]}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"m","digest":"sha256:` + strings.Repeat("a", 64) + `","size":12,"annotations":{"org.opencontainers.image.ref.name":"x"}}]}`,
	"{ \"schemaVersion\" : 2 ,\n \"manifests\" : [ { \"digest\" : \"d\" , \"size\" : 0 , \"platform\" : { \"os\" : \"linux\" , \"architecture\" : \"amd64\", \"os.features\": [\"a\"] } , \"x\" : [1,{\"y\":null}] } ] , \"annotations\" : { \"k\" : \"v\" } }\n",
	`{"schemaVersion":2,"manifests":[{"digest":"d","Size":1}]}`,
	`{"schemaVersion":2,"manifests":[{"annotations":{"a":"1"},"annotations":{"b":"2"}}]}`,
	`{"schemaVersion":2,"manifests":[{"size":-0,"urls":[],"artifactType":"t"}]}`,
	`{"schemaVersion":2,"manifests":[{"size":1e3}]}`,
	`{"schemaVersion":2,"manifests":[{"size":01}]}`,
	`{"schemaVersion":2,"manifests":null}`,
	`{"schemaVersion":2,"manifests":[{"mediaType":"caf\u00e9"}]}`,
	`{"schemaVersion":2,"manifests":[]} x`,
	`{"schemaVersion":2,"schemaVersion":3,"manifests":[]}`,
}

// FuzzParseIndexFast: on any input, the fast parser either gives up or
// gives exactly what the slow way gives, and ParseIndex reads what
// encoding/json into a v1.Index reads (sameAsTools): the same entries, the
// same roots, and rewrites that the tools read the same.
func FuzzParseIndexFast(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
	}
	for _, s := range hostileSeeds() {
		f.Add(s)
	}
	var big strings.Builder
	big.WriteString(`{"schemaVersion":2,"manifests":[`)
	for i := range 3 {
		if i > 0 {
			big.WriteByte(',')
		}
		fmt.Fprintf(&big, `{"mediaType":"m","digest":"sha256:%064x","size":%d,"platform":{"architecture":"arm","variant":"v7","os":"linux"}}`, i, i)
	}
	big.WriteString(`]}`)
	f.Add([]byte(big.String()))
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsSlow(t, b)
	})
}
