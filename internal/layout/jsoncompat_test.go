package layout_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/layout"
)

// Members of one class of bug: ocistore read keys of index.json and
// manifests by their exact spelling, where skopeo, umoci, oras and podman
// (encoding/json into the image-spec structs) match them under case
// folding, unescape them first and decode duplicates in turn.

var (
	dA = "sha256:" + strings.Repeat("a", 64)
	dB = "sha256:" + strings.Repeat("b", 64)
	dC = "sha256:" + strings.Repeat("c", 64)
)

// toolsIndex is what the tools read in index.json.
func toolsIndex(t *testing.T, b string) v1.Index {
	t.Helper()
	var ix v1.Index
	if err := json.Unmarshal([]byte(b), &ix); err != nil {
		t.Fatalf("encoding/json: %v", err)
	}
	return ix
}

// wantEntries fails unless index.json b parses to entries of the given
// digests and names, as the tools read them.
func wantEntries(t *testing.T, b string, want ...string) *layout.Index {
	t.Helper()
	ix, err := layout.ParseIndex([]byte(b))
	if err != nil {
		t.Fatalf("ParseIndex: %v", err)
	}
	var got []string
	for _, e := range ix.Entries {
		got = append(got, e.Desc.Digest.String()+"="+e.Name())
	}
	if !slices.Equal(got, want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	ref := toolsIndex(t, b)
	for i, e := range ix.Entries {
		if !reflect.DeepEqual(e.Desc, ref.Manifests[i]) {
			t.Errorf("entry %d %+v, encoding/json %+v", i, e.Desc, ref.Manifests[i])
		}
	}
	return ix
}

func entryJSON(d, name string) string {
	return `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","size":3,"annotations":{"org.opencontainers.image.ref.name":"` + name + `"}}`
}

func TestParseIndexFoldedManifestsKey(t *testing.T) {
	for _, key := range []string{"Manifests", "MANIFESTS", "mAnIfEsTs"} {
		t.Run(key, func(t *testing.T) {
			ix := wantEntries(t, `{"schemaVersion":2,"`+key+`":[`+entryJSON(dA, "app:1")+`]}`, dA+"=app:1")
			// A rewrite holds the entries under "manifests" alone: the
			// old key, read last by the tools, would bring them back.
			out := string(ix.With(nil).Marshal())
			if strings.Contains(out, key) || len(toolsIndex(t, out).Manifests) != 0 {
				t.Errorf("rewrite without entries: %s", out)
			}
		})
	}
	// The long s (U+017F) is an s to encoding/json.
	wantEntries(t, "{\"\u017fchemaVersion\":2,\"manife\u017fts\":["+entryJSON(dA, "a")+"]}", dA+"=a")
	// The other fields of the index too.
	wantEntries(t, `{"SchemaVersion":2,"MediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+entryJSON(dA, "x")+`]}`, dA+"=x")
	if _, err := layout.ParseIndex([]byte(`{"schemaVersion":2,"SCHEMAVERSION":1,"manifests":[]}`)); !errors.Is(err, errdef.ErrCorrupt) {
		t.Errorf("schemaVersion 1 spelled SCHEMAVERSION, read last: %v, want ErrCorrupt", err)
	}
}

func TestParseIndexEscapedKey(t *testing.T) {
	// An escape that spells another case ("\u004d" is M).
	wantEntries(t, `{"schemaVersion":2,"\u004danifests":[`+entryJSON(dA, "app:1")+`]}`, dA+"=app:1")
	wantEntries(t, `{"\u0053chemaVersion":2,"m\u0041nifests":[`+entryJSON(dA, "app:1")+`]}`, dA+"=app:1")
	// Escapes alone (read the slow way, by a map, before).
	wantEntries(t, `{"schemaVersion":2,"\u006danifests":[`+entryJSON(dA, "app:1")+`]}`, dA+"=app:1")
	wantEntries(t, `{"schemaVersion":2,"manifests":[{"mediaType":"m","\u0064igest":"`+dB+`","size":1,"annotation\u0073":{"org.opencontainers.image.ref.name":"b"}}]}`, dB+"=b")
}

func TestParseIndexDuplicateKeyLastWins(t *testing.T) {
	// Two manifests arrays: the last holds the entries.
	wantEntries(t, `{"schemaVersion":2,"manifests":[`+entryJSON(dA, "a")+`],"manifests":[`+entryJSON(dB, "b")+`,`+entryJSON(dC, "c")+`]}`, dB+"=b", dC+"=c")
	// Under another spelling, and emptied by a last null.
	wantEntries(t, `{"schemaVersion":2,"manifests":[`+entryJSON(dA, "a")+`],"Manifests":[`+entryJSON(dB, "b")+`]}`, dB+"=b")
	wantEntries(t, `{"schemaVersion":2,"Manifests":[`+entryJSON(dA, "a")+`],"manifests":null}`)
	// Two digests in one entry: the last.
	wantEntries(t, `{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"`+dA+`","size":1,"digest":"`+dB+`"}]}`, dB+"=")
	// A shorter array after a longer one: encoding/json decodes it into
	// the elements already there, which keep the fields it lacks, and
	// the rewrite keeps them too.
	ix := wantEntries(t, `{"schemaVersion":2,"manifests":[`+entryJSON(dA, "a")+`],"manifests":[{"annotations":{"k":"v"}}]}`, dA+"=a")
	again := wantEntries(t, string(ix.Marshal()), dA+"=a")
	if again.Entries[0].Desc.Annotations["k"] != "v" {
		t.Errorf("rewrite lost the annotation: %s", ix.Marshal())
	}
}

// TestUntagFoldedAnnotations: a tag held under "Annotations" is the one the
// tools read; untagging the entry removes it for them too.
func TestUntagFoldedAnnotations(t *testing.T) {
	for _, in := range []string{
		`{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"` + dA + `","size":1,"Annotations":{"org.opencontainers.image.ref.name":"a","k":"v"}}]}`,
		`{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"` + dA + `","size":1,"annotations":{"k":"v"},"ANNOTATIONS":{"org.opencontainers.image.ref.name":"a"}}]}`,
	} {
		ix := wantEntries(t, in, dA+"=a")
		for _, name := range []string{"", "b"} {
			out := ix.With([]layout.Entry{ix.Entries[0].Renamed(name)}).Marshal()
			got := toolsIndex(t, string(out)).Manifests[0]
			if got.Annotations[v1.AnnotationRefName] != name || got.Annotations["k"] != "v" || got.Digest != digest.Digest(dA) {
				t.Errorf("Renamed(%q) of %s: the tools read %+v in %s", name, in, got, out)
			}
		}
	}
}

// TestParseChildrenFoldedKeys: "Layers", "CONFIG", "Manifests" and escaped
// keys of a manifest name its children, as in v1.Manifest and v1.Index.
func TestParseChildrenFoldedKeys(t *testing.T) {
	desc := func(d string) string { return `{"mediaType":"x","digest":"` + d + `","size":1}` }
	for _, c := range []struct {
		name, in string
		want     []string
	}{
		{"Layers Config", `{"schemaVersion":2,"Config":` + desc(dA) + `,"Layers":[` + desc(dB) + `]}`, []string{dA, dB}},
		{"escaped", `{"schemaVersion":2,"\u0063onfig":` + desc(dA) + `,"layer\u0073":[` + desc(dB) + `]}`, []string{dA, dB}},
		{"long s", "{\"schemaVersion\":2,\"layer\u017f\":[" + desc(dB) + "]}", []string{dB}},
		{"config duplicated", `{"schemaVersion":2,"config":` + desc(dC) + `,"config":` + desc(dA) + `,"layers":[]}`, []string{dA}},
		// v1.Manifest's config is a value: a later null leaves it.
		{"config then null", `{"schemaVersion":2,"config":` + desc(dA) + `,"CONFIG":null,"layers":[` + desc(dB) + `]}`, []string{dA, dB}},
		{"layers duplicated", `{"schemaVersion":2,"layers":[` + desc(dC) + `],"Layers":[` + desc(dB) + `]}`, []string{dB}},
		{"manifest and index", `{"schemaVersion":2,"layers":[` + desc(dA) + `],"Manifests":[` + desc(dB) + `]}`, []string{dA, dB}},
		// An index whose "layers" v1.Manifest cannot decode: v1.Index,
		// which its media type names, reads its manifests.
		{"index with a foreign layers", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","layers":"x","manifests":[` + desc(dB) + `]}`, []string{dB}},
	} {
		t.Run(c.name, func(t *testing.T) {
			kids, err := layout.ParseChildren("blob X", []byte(c.in))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range kids.Refs {
				got = append(got, d.Digest.String())
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("children %v, want %v", got, c.want)
			}
		})
	}
	// A manifest (by its media type or its descriptor's) that v1.Manifest
	// cannot decode stays corrupt.
	bad := `{"schemaVersion":2,"layers":[` + desc(dB) + `,{"digest":5}]}`
	if _, err := layout.ParseChildrenAs("blob X", v1.MediaTypeImageManifest, []byte(bad)); !errors.Is(err, errdef.ErrCorrupt) {
		t.Errorf("ParseChildrenAs = %v, want ErrCorrupt", err)
	}
}
