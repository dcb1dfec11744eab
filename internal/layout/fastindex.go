package layout

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"unsafe"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// parseIndexFast parses the index.json that tools write (ASCII strings
// without escapes, each field of the image-spec structs under its exact
// name and once, integer sizes) in one pass, without encoding/json's
// reflection, which made the first read of a large index.json several
// times slower (figure: BENCHMARKS.md, "Figures behind design choices").
// It gives up (ok false) on anything else (a key that encoding/json
// matches under case folding, "Manifests", or a duplicate), for
// ParseIndex to parse the slow way: so its result, when it has one, is
// the one encoding/json gives (FuzzParseIndexFast checks it). It does not
// validate descriptors (ParseIndex does).
func parseIndexFast(b []byte) (top map[string]json.RawMessage, entries []Entry, ok bool) {
	p := &fastParser{b: b}
	p.ws()
	top = map[string]json.RawMessage{}
	seenManifests := false
	ok = p.object(func(key string) bool {
		if key == "manifests" {
			if seenManifests { // a duplicate: encoding/json keeps the last
				return false
			}
			seenManifests = true
			var ok bool
			entries, ok = p.entries()
			return ok
		}
		// A key another tool reads as a field of the index that is
		// not its exact name ("Manifests", "MEDIATYPE"): the slow way.
		if _, dup := top[key]; dup || foldsTo(key, indexFields) {
			return false
		}
		start := p.i
		if !p.skipValue() {
			return false
		}
		v := json.RawMessage(bytes.Clone(b[start:p.i]))
		top[key] = v
		// A field of the index must decode as one, or encoding/json
		// rejects the file ("annotations":{"a":1}): checked here, and
		// the slow way says why.
		if key != "schemaVersion" && key != "mediaType" && slices.Contains(indexFields, key) {
			doc := append(append(append([]byte(`{"`), key...), `":`...), v...)
			if json.Unmarshal(append(doc, '}'), new(v1.Index)) != nil {
				return false
			}
		}
		return true
	})
	if !ok {
		return nil, nil, false
	}
	p.ws()
	if p.i != len(b) {
		return nil, nil, false
	}
	if entries == nil {
		entries = []Entry{}
	}
	return top, entries, true
}

type fastParser struct {
	b      []byte
	i      int
	space  bool              // white space met inside the current entry
	fresh  bool              // str copies: the caller drops b (a manifest)
	intern map[string]string // the strings every entry repeats: media types, keys
}

// plainByte marks the bytes a string can hold as they are: printable ASCII
// but the backslash (the fast path takes no escapes).
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = c != '\\'
	}
	return t
}()

// span reads a string without escapes and returns its bytes (b[start:end]).
func (p *fastParser) span() (start, end int, ok bool) {
	if !p.eat('"') {
		return 0, 0, false
	}
	start = p.i
	n := bytes.IndexByte(p.b[start:], '"')
	if n < 0 {
		return 0, 0, false
	}
	for _, c := range p.b[start : start+n] {
		if !plainByte[c] {
			return 0, 0, false
		}
	}
	p.i = start + n + 1
	return start, start + n, true
}

// repeated are strings most entries hold, returned without an allocation:
// keys, the media types of the image-spec and Docker's, platform values.
var repeated = func() map[string]string {
	m := map[string]string{}
	for _, s := range []string{
		"mediaType", "digest", "size", "annotations", "platform", "artifactType",
		"schemaVersion", "config", "layers", "manifests", "blobs", "subject",
		v1.AnnotationRefName, v1.AnnotationCreated,
		v1.MediaTypeImageManifest, v1.MediaTypeImageIndex, v1.MediaTypeImageConfig,
		v1.MediaTypeEmptyJSON, v1.MediaTypeDescriptor, v1.MediaTypeLayoutHeader,
		v1.MediaTypeImageLayer, v1.MediaTypeImageLayerGzip, v1.MediaTypeImageLayerZstd,
		MediaTypeArtifactManifest,
		MediaTypeDockerManifest, MediaTypeDockerManifestList,
		"application/vnd.docker.container.image.v1+json",
		"application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
		"architecture", "os", "variant", "amd64", "arm64", "linux",
	} {
		m[s] = s
	}
	return m
}()

// istr is str for a string that many entries repeat: one copy of each.
func (p *fastParser) istr() (string, bool) {
	start, end, ok := p.span()
	if !ok {
		return "", false
	}
	raw := p.b[start:end]
	if s, ok := repeated[string(raw)]; ok {
		return s, true
	}
	if s, ok := p.intern[string(raw)]; ok {
		return s, true
	}
	s := string(raw)
	if len(p.intern) < 4096 {
		if p.intern == nil {
			p.intern = map[string]string{}
		}
		p.intern[s] = s
	}
	return s, true
}

func (p *fastParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.space = true
			p.i++
		default:
			return
		}
	}
}

// wsThen skips white space and reports true (for use in conditions).
func (p *fastParser) wsThen() bool { p.ws(); return true }

func (p *fastParser) eat(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a string of printable ASCII without escapes.
func (p *fastParser) str() (string, bool) {
	start, end, ok := p.span()
	if !ok || start == end {
		return "", ok
	}
	if p.fresh {
		return string(p.b[start:end]), true
	}
	// The string shares b's memory, as Raw does: b, the file's bytes, is
	// kept and never written by whoever keeps the index.
	return unsafe.String(&p.b[start], end-start), true
}

// int reads a JSON integer that fits an int64.
func (p *fastParser) int() (int64, bool) {
	neg := p.eat('-')
	start := p.i
	var n int64
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		if n > (1<<63-1-9)/10 {
			return 0, false
		}
		n = n*10 + int64(p.b[p.i]-'0')
		p.i++
	}
	digits := p.i - start
	if digits == 0 || (digits > 1 && p.b[start] == '0') {
		return 0, false
	}
	if p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		return 0, false
	}
	if neg {
		n = -n
	}
	return n, true
}

// skipValue skips one JSON value, which must be valid.
func (p *fastParser) skipValue() bool {
	start := p.i
	dec := json.NewDecoder(bytes.NewReader(p.b[p.i:]))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return false
	}
	p.i = start + int(dec.InputOffset())
	// It may hold white space: the entry's raw bytes are compacted.
	p.space = true
	return true
}

// list reads open, elements separated by commas, and close; elem reads
// each element.
func (p *fastParser) list(open, close byte, elem func() bool) bool {
	if !p.eat(open) {
		return false
	}
	for first := true; ; first = false {
		p.ws()
		if p.eat(close) {
			return true
		}
		if !first && !(p.eat(',') && p.wsThen()) {
			return false
		}
		if !elem() {
			return false
		}
	}
}

// array calls elem for each element of an array; elem reads it.
func (p *fastParser) array(elem func() bool) bool { return p.list('[', ']', elem) }

// strings reads an array of strings.
func (p *fastParser) strings() ([]string, bool) {
	out := []string{}
	ok := p.array(func() bool {
		s, ok := p.str()
		out = append(out, s)
		return ok
	})
	return out, ok
}

// stringMap reads an object of strings.
func (p *fastParser) stringMap() (map[string]string, bool) {
	m := map[string]string{}
	ok := p.object(func(k string) bool {
		v, ok := p.str()
		m[k] = v
		return ok
	})
	return m, ok
}

// object calls field for each key of an object; field reads the value.
func (p *fastParser) object(field func(key string) bool) bool {
	return p.list('{', '}', func() bool {
		key, ok := p.istr()
		if !ok {
			return false
		}
		p.ws()
		if !p.eat(':') {
			return false
		}
		p.ws()
		return field(key)
	})
}

// knownBit is the bit of a descriptor key in a set of seen keys, 0 for
// another key.
func knownBit(key string) uint16 {
	for i, k := range descriptorFields {
		if k == key {
			return 1 << i
		}
	}
	return 0
}

// foldsTo reports whether encoding/json would decode key into one of the
// fields names without key being its name: the fast parser gives up on it.
func foldsTo(key string, names []string) bool {
	for _, k := range names {
		if k != key && strings.EqualFold(k, key) {
			return true
		}
	}
	return false
}

// foldsToKnown is foldsTo for the fields of a descriptor and a platform.
func foldsToKnown(key string) bool {
	return foldsTo(key, descriptorFields) || foldsTo(key, platformFields)
}

func (p *fastParser) entries() ([]Entry, bool) {
	// Sized from the first entry's length (the entries of one index are
	// alike: the rest divided by it, and a little more), so that the
	// slice of 100,000 entries is not copied as it grows (half the bytes
	// the parse allocates) and the file is not scanned twice (a count of
	// "digest" keys cost a quarter of the parse). An entry takes at least
	// 80 bytes (its digest alone 71), which bounds what a hostile file can
	// make it allocate; an index of unlike entries grows the slice.
	rest := len(p.b) - p.i
	var out []Entry
	ok := p.array(func() bool {
		p.space = false
		start := p.i
		d, ok := p.descriptor()
		if !ok {
			return false
		}
		// Raw shares b's memory when it is already compact: b, the file's
		// bytes, is kept (and never written) by whoever keeps the index.
		raw := p.b[start:p.i:p.i]
		e := entry(d, raw)
		if p.space {
			e.Raw = compact(raw)
		} else {
			e.tail = p.b[p.i:]
		}
		if out == nil {
			out = make([]Entry, 0, min(rest/max(p.i-start, 80)+rest/(16*max(p.i-start, 80))+4, rest/80+1))
		}
		out = append(out, e)
		return true
	})
	if out == nil {
		out = []Entry{}
	}
	return out, ok
}

// descriptor reads a descriptor object (its strings share b's memory
// unless p.fresh).
func (p *fastParser) descriptor() (v1.Descriptor, bool) {
	var d v1.Descriptor
	var seen uint16
	ok := p.object(func(key string) bool {
		// A repeated field merges into the first in encoding/json
		// (maps, the platform): the slow way.
		if bit := knownBit(key); bit != 0 {
			if seen&bit != 0 {
				return false
			}
			seen |= bit
		}
		var ok bool
		switch key {
		case "mediaType":
			d.MediaType, ok = p.istr()
		case "artifactType":
			d.ArtifactType, ok = p.istr()
		case "digest":
			var s string
			s, ok = p.str()
			d.Digest = digest.Digest(s)
		case "size":
			d.Size, ok = p.int()
		case "urls":
			d.URLs, ok = p.strings()
		case "annotations":
			d.Annotations, ok = p.stringMap()
		case "platform":
			pl := &v1.Platform{}
			ok = p.object(func(k string) bool {
				var ok bool
				switch k {
				case "architecture":
					pl.Architecture, ok = p.istr()
				case "os":
					pl.OS, ok = p.istr()
				case "os.version":
					pl.OSVersion, ok = p.istr()
				case "variant":
					pl.Variant, ok = p.istr()
				case "os.features":
					pl.OSFeatures, ok = p.strings()
				default:
					return !foldsToKnown(k) && p.skipValue()
				}
				return ok
			})
			d.Platform = pl
		case "data":
			d.Data, ok = p.base64()
		default:
			return !foldsToKnown(key) && p.skipValue()
		}
		return ok
	})
	return d, ok
}

// base64 reads a string of base64 as encoding/json decodes it into a
// []byte: "" is an empty slice, not nil.
func (p *fastParser) base64() ([]byte, bool) {
	start, end, ok := p.span()
	if !ok {
		return nil, false
	}
	src := p.b[start:end]
	dst := make([]byte, base64.StdEncoding.DecodedLen(len(src)))
	n, err := base64.StdEncoding.Decode(dst, src)
	return dst[:n], err == nil
}
