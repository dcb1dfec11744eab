package layout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// slowDecode is parseIndexSlow without its checks: what encoding/json
// makes of b.
func slowDecode(b []byte) (map[string]json.RawMessage, []Entry, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, nil, err
	}
	var raws []json.RawMessage
	if m, ok := top["manifests"]; ok && !bytes.Equal(bytes.TrimSpace(m), []byte("null")) {
		if err := json.Unmarshal(m, &raws); err != nil {
			return nil, nil, err
		}
	}
	delete(top, "manifests")
	out := []Entry{}
	for _, r := range raws {
		var d v1.Descriptor
		if err := json.Unmarshal(r, &d); err != nil {
			return nil, nil, err
		}
		out = append(out, entry(d, compact(r)))
	}
	return top, out, nil
}

// sameAsSlow fails unless the fast parse of b, when it has one, is what
// encoding/json makes of it.
func sameAsSlow(t *testing.T, b []byte) bool {
	t.Helper()
	top, entries, ok := parseIndexFast(b)
	if !ok {
		return false
	}
	stop, sentries, err := slowDecode(b)
	if err != nil {
		t.Fatalf("fast parse accepted what encoding/json rejects (%v): %q", err, b)
	}
	if len(top) != len(stop) {
		t.Fatalf("top-level fields %v, encoding/json %v", top, stop)
	}
	for k, v := range stop {
		if !bytes.Equal(top[k], v) {
			t.Fatalf("top-level %q = %s, encoding/json %s", k, top[k], v)
		}
	}
	if len(entries) != len(sentries) {
		t.Fatalf("%d entries, encoding/json %d", len(entries), len(sentries))
	}
	for i := range entries {
		if !reflect.DeepEqual(entries[i].Desc, sentries[i].Desc) {
			t.Fatalf("entry %d: %+v, encoding/json %+v", i, entries[i].Desc, sentries[i].Desc)
		}
		if !bytes.Equal(entries[i].Raw, sentries[i].Raw) {
			t.Fatalf("entry %d raw %s, encoding/json %s", i, entries[i].Raw, sentries[i].Raw)
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
// gives exactly what encoding/json gives.
func FuzzParseIndexFast(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s))
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
