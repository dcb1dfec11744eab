package layout

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// sameChildrenAsSlow fails unless the fast parse of b, when it has one, is
// what encoding/json decodes into an anyManifest without error, holds no
// string that shares b's memory, shares the constants' memory for the
// common media types, and gives the children the slow way gives. It
// reports whether the fast parse had one.
func sameChildrenAsSlow(t *testing.T, b []byte) bool {
	t.Helper()
	m, ok := parseChildrenFast(b)
	if !ok {
		return false
	}
	var slow anyManifest
	if err := json.Unmarshal(b, &slow); err != nil {
		t.Fatalf("fast parse accepted what encoding/json rejects (%v): %q", err, b)
	}
	if !reflect.DeepEqual(m, slow) {
		t.Fatalf("fast parse %+v\nencoding/json %+v\n%q", m, slow, b)
	}
	lo, hi := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(unsafe.Pointer(unsafe.SliceData(b)))+uintptr(len(b))
	eachString(reflect.ValueOf(m), func(s string) {
		if p := uintptr(unsafe.Pointer(unsafe.StringData(s))); len(s) > 0 && p >= lo && p < hi {
			t.Fatalf("string %q shares the manifest's bytes", s)
		}
		if c, ok := repeated[s]; ok && unsafe.StringData(c) != unsafe.StringData(s) {
			t.Fatalf("%q is a copy, not the constant", s)
		}
	})
	for _, mt := range []string{"", v1.MediaTypeImageManifest, v1.MediaTypeImageIndex, MediaTypeArtifactManifest} {
		c, err := ParseChildrenAs("blob X", mt, b)
		slowC, slowErr := childrenOf("blob X", slow)
		if !reflect.DeepEqual(c, slowC) || fmt.Sprint(err) != fmt.Sprint(slowErr) {
			t.Fatalf("ParseChildrenAs(%q) = %+v, %v; the slow way %+v, %v\n%q", mt, c, err, slowC, slowErr, b)
		}
	}
	return true
}

// eachString calls f with every string v holds (map keys included).
func eachString(v reflect.Value, f func(string)) {
	switch v.Kind() {
	case reflect.String:
		f(v.String())
	case reflect.Pointer:
		if !v.IsNil() {
			eachString(v.Elem(), f)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			eachString(v.Field(i), f)
		}
	case reflect.Slice:
		for i := range v.Len() {
			eachString(v.Index(i), f)
		}
	case reflect.Map:
		for it := v.MapRange(); it.Next(); {
			eachString(it.Key(), f)
			eachString(it.Value(), f)
		}
	}
}

// fixtureManifests are the manifests and indexes of the fixture layouts.
func fixtureManifests(t testing.TB) [][]byte {
	files, _ := filepath.Glob("../../testdata/layouts/*/blobs/*/*")
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Config, Layers, Manifests, Blobs json.RawMessage
		}
		if json.Unmarshal(b, &m) == nil && (m.Layers != nil || m.Manifests != nil || m.Blobs != nil) {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		t.Fatal("no fixture manifests")
	}
	return out
}

var (
	dsk   = "sha256:" + strings.Repeat("a", 64)
	layer = `{"mediaType":"` + v1.MediaTypeImageLayerGzip + `","digest":"` + dsk + `","size":32654}`
)

// manifestSeeds are manifests of every kind and hostile spellings, beside
// hostileManifests (compat_test.go).
var manifestSeeds = []string{
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + d1 + `","size":1469},"layers":[` + layer + `,` + layer + `],"annotations":{"org.opencontainers.image.created":"2024-01-01T00:00:00Z"}}`,
	"{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n   \"config\": {\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": 1457,\n      \"digest\": \"" + d1 + "\"\n   },\n   \"layers\": [\n      {\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": 3370706,\n         \"digest\": \"" + d2 + "\"\n      }\n   ]\n}",
	`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"` + d1 + `","platform":{"architecture":"arm","os":"linux","variant":"v7","os.features":["x"],"os.version":"1"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":528,"digest":"` + d2 + `","platform":{"architecture":"amd64","os":"windows","features":["sse4"]}}]}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d1 + `","size":7,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"a":"b"}}],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d3 + `","size":3},"artifactType":"application/x"}`,
	`{"mediaType":"application/vnd.oci.artifact.manifest.v1+json","artifactType":"application/vnd.example.sbom","blobs":[{"mediaType":"application/json","digest":"` + d1 + `","size":10,"annotations":{"org.opencontainers.image.title":"sbom.json"}}],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d2 + `","size":20},"annotations":{"org.opencontainers.image.created":"2023-01-01T00:00:00Z"}}`,
	`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"data":"e30="},"layers":[{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + d2 + `","size":2,"data":"","urls":["https://example.com/x"]}]}`,
	`{"schemaVersion":2,"config":{"digest":"` + d1 + `","size":1,"data":"e30"}}`,
	`{"schemaVersion":2,"config":{"digest":"` + d1 + `","size":1,"data":"!!!!"}}`,
	`{"schemaVersion":2,"Layers":[` + layer + `]}`,
	`{"schemaVersion":2,"layers":[{"Digest":"` + d1 + `","size":1}]}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":1,"size":2}]}`,
	`{"schemaVersion":2,"annotations":{"a":"1"},"annotations":{"b":"2"}}`,
	`{"schemaVersion":2,"annotations":{"a":"1","a":"2"}}`,
	`{"schemaVersion":2,"layers":[{"digest":"sha256:\u0061` + strings.Repeat("a", 63) + `","size":1}]}`,
	`{"schemaVersion":2,"mediaType":"caf\u00e9","layers":[]}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":1}],"layers":null}`,
	`{"schemaVersion":2,"subject":null,"config":null,"annotations":null,"mediaType":null}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":99999999999999999999}]}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":9223372036854775807}]}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":-9223372036854775808}]}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":-1}]}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":1.0}]}`,
	`{"schemaVersion":2,"layers":[{"digest":"` + d1 + `","size":1e2}]}`,
	`{"schemaVersion":99999999999999999999,"layers":[]}`,
	`{"schemaVersion":"2","layers":[]}`,
	`{"schemaVersion":2,"layers":[{"digest":"sha256:abc","size":1}]}`,
	`{"schemaVersion":2,"layers":[{}],"manifests":[],"blobs":[]}`,
	`{"schemaVersion":2,"config":{"urls":[]}}`,
	`{"schemaVersion":2,"config":{},"x":{"y":[1,2,{"z":null}]},"layers":[]} `,
	`{"schemaVersion":2,"layers":[]}x`,
	`{"schemaVersion":2,"layers":[],}`,
	`{}`,
	``,
}

// TestParseChildrenFastCorpus: every manifest of the fixture layouts
// parses the fast way, to what encoding/json gives; so do typical shapes.
func TestParseChildrenFastCorpus(t *testing.T) {
	for _, b := range fixtureManifests(t) {
		if !sameChildrenAsSlow(t, b) {
			t.Errorf("fixture manifest does not parse the fast way: %s", b)
		}
	}
	fast := 0
	for _, s := range append(manifestSeeds, hostileManifests...) {
		if sameChildrenAsSlow(t, []byte(s)) {
			fast++
		}
	}
	if fast < 10 {
		t.Errorf("only %d seeds parse the fast way", fast)
	}
}

// FuzzParseChildrenFast: on any input, the fast parser either gives up or
// gives exactly what encoding/json gives (sameChildrenAsSlow).
func FuzzParseChildrenFast(f *testing.F) {
	for _, b := range fixtureManifests(f) {
		f.Add(b)
	}
	for _, s := range append(manifestSeeds, hostileManifests...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sameChildrenAsSlow(t, b)
	})
}
