package layout

import (
	"bytes"
	"reflect"
	"slices"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// manifestFields are the JSON names of anyManifest's fields.
var manifestFields = jsonFieldNames(reflect.TypeFor[anyManifest]())

// parseChildrenFast parses a manifest, index or artifact manifest as tools
// write them (the shapes parseIndexFast takes: ASCII strings without
// escapes, each field under its exact name and once, integer sizes, no
// null) in one pass with fastParser, without encoding/json's reflection,
// which cost seconds of CPU at the adoption of a layout of 100,000 images.
// It gives up (ok false) on anything else, for ParseChildrenAs to decode
// the slow way: so its result, when it has one, is what encoding/json
// decodes into an anyManifest without error (FuzzParseChildrenFast checks
// it). Its strings do not share b's memory (the caller drops b): digests
// and annotations are copies, keys and the common media types the
// package's constants.
func parseChildrenFast(b []byte) (m anyManifest, ok bool) {
	p := &fastParser{b: b, fresh: true}
	p.ws()
	var seen uint16
	ok = p.object(func(key string) bool {
		i := slices.Index(manifestFields, key)
		if i < 0 {
			// "Layers", "CONFIG": a field under case folding.
			return !foldsTo(key, manifestFields) && p.skipValue()
		}
		// A repeated field merges into the first in encoding/json (the
		// config, the subject, the elements of a list, the annotations):
		// the slow way.
		if seen&(1<<i) != 0 {
			return false
		}
		seen |= 1 << i
		var ok bool
		switch key {
		case "schemaVersion":
			var n int64
			n, ok = p.int()
			m.SchemaVersion = int(n)
			ok = ok && int64(m.SchemaVersion) == n
		case "mediaType":
			m.MediaType, ok = p.istr()
		case "artifactType":
			m.ArtifactType, ok = p.istr()
		case "config":
			m.Config, ok = p.descriptor()
		case "layers":
			m.Layers, ok = p.descriptors()
		case "manifests":
			m.Manifests, ok = p.descriptors()
		case "blobs":
			m.Blobs, ok = p.descriptors()
		case "subject":
			var d v1.Descriptor
			d, ok = p.descriptor()
			m.Subject = &d
		case "annotations":
			m.Annotations, ok = p.stringMap()
		}
		return ok
	})
	if p.ws(); !ok || p.i != len(b) {
		return anyManifest{}, false
	}
	return m, true
}

// descriptors reads an array of descriptors: [] is an empty list, not nil.
func (p *fastParser) descriptors() ([]v1.Descriptor, bool) {
	// Sized up front, as entries is: a descriptor takes at least 2 bytes.
	rest := p.b[p.i:]
	out := make([]v1.Descriptor, 0, min(bytes.Count(rest, []byte(`"digest"`)), len(rest)/2))
	ok := p.array(func() bool {
		d, ok := p.descriptor()
		out = append(out, d)
		return ok
	})
	return out, ok
}
