package layout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
)

// Entry is one descriptor of index.json. Raw keeps the entry as it was read
// (compacted), so fields this package does not know survive a rewrite.
type Entry struct {
	Desc v1.Descriptor
	Raw  json.RawMessage
	name string // Desc's org.opencontainers.image.ref.name, read once
	// tail, for an entry parsed the fast way, is what follows Raw in the
	// file's bytes: Marshal copies a run of entries that follow one
	// another there (a comma between) in one piece.
	tail []byte
}

// entry makes the Entry of d whose bytes are raw.
func entry(d v1.Descriptor, raw json.RawMessage) Entry {
	return Entry{Desc: d, Raw: raw, name: d.Annotations[v1.AnnotationRefName]}
}

// Name is the entry's tag (org.opencontainers.image.ref.name), "" if none.
func (e Entry) Name() string { return e.name }

// NewEntry makes an entry for desc named name ("" for an untagged root).
// Other annotations of desc are kept.
func NewEntry(desc v1.Descriptor, name string) Entry {
	d := desc
	d.Annotations = nil
	for k, v := range desc.Annotations {
		if k == v1.AnnotationRefName {
			continue
		}
		if d.Annotations == nil {
			d.Annotations = map[string]string{}
		}
		d.Annotations[k] = v
	}
	if name != "" {
		if d.Annotations == nil {
			d.Annotations = map[string]string{}
		}
		d.Annotations[v1.AnnotationRefName] = name
	}
	raw, _ := json.Marshal(d)
	return entry(d, raw)
}

// Renamed returns e with its tag set to name, or removed when name is "".
// Every other field of the entry, known or not, is kept.
func (e Entry) Renamed(name string) Entry {
	raw := e.Raw
	if fs := objectFields(raw); !plain(fs, descriptorFields) {
		// Keys that another tool reads as descriptor fields but a map
		// does not ("Annotations", a second "digest"): written again
		// from the descriptor first, so that the annotations changed
		// below are the ones every tool reads.
		raw, _ = json.Marshal(normalized(fs, descriptorFields, e.Desc))
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil || fields == nil {
		return NewEntry(e.Desc, name) // cannot happen for a parsed entry
	}
	// The descriptor's annotations are those of raw (parsed from it), and
	// a map even where raw says null.
	ann := make(map[string]string, len(e.Desc.Annotations)+1)
	maps.Copy(ann, e.Desc.Annotations)
	if name == "" {
		delete(ann, v1.AnnotationRefName)
	} else {
		ann[v1.AnnotationRefName] = name
	}
	if len(ann) == 0 {
		delete(fields, "annotations")
		ann = nil
	} else {
		fields["annotations"], _ = json.Marshal(ann)
	}
	raw, _ = json.Marshal(fields)
	d := e.Desc
	d.Annotations = ann
	return entry(d, raw)
}

// Index is a parsed index.json. It is immutable once built: writers make a new
// one with With.
type Index struct {
	top     map[string]json.RawMessage // every top-level field except manifests
	Entries []Entry
	// bare: the file parsed did not end with a newline, and Marshal keeps
	// it so (the bytes after the last changed entry then stay the file's,
	// which keeps the journal's delta of the first change small).
	bare bool
}

// ParseIndex parses and validates index.json bytes. The index shares b's
// memory (entries' raw bytes and strings): b must never be written after.
func ParseIndex(b []byte) (*Index, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%s: empty: %w", IndexFile, errdef.ErrCorrupt)
	}
	if top, entries, ok := parseIndexFast(b); ok {
		if err := checkIndexTop(top); err != nil {
			return nil, err
		}
		for i, e := range entries {
			if err := checkDescriptor(IndexFile, i, e.Desc); err != nil {
				return nil, err
			}
		}
		return &Index{top: top, Entries: entries, bare: !bytes.HasSuffix(b, []byte("\n"))}, nil
	}
	ix, err := parseIndexSlow(b)
	if err != nil {
		return nil, err
	}
	ix.bare = !bytes.HasSuffix(b, []byte("\n"))
	return ix, nil
}

// parseIndexSlow is ParseIndex by encoding/json, for any index: it reads
// index.json as the other tools do, decoding it into a v1.Index (keys
// matched under case folding, escapes decoded, duplicates decoded in turn:
// see jsoncompat.go). Each entry keeps its bytes as they are written when
// they decode to its descriptor, so that a rewrite changes nothing else;
// the top-level fields keep theirs when read as a map would (plain), and
// are written again from the v1.Index otherwise.
func parseIndexSlow(b []byte) (*Index, error) {
	var doc v1.Index
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", IndexFile, errdef.ErrCorrupt, err)
	}
	fields := objectFields(b)
	if doc.SchemaVersion != 2 || fields == nil {
		return nil, fmt.Errorf("%s: schemaVersion is not 2: %w", IndexFile, errdef.ErrCorrupt)
	}
	if doc.MediaType != "" && doc.MediaType != v1.MediaTypeImageIndex {
		mt, _ := json.Marshal(doc.MediaType)
		return nil, fmt.Errorf("%s: mediaType %s is not an image index: %w", IndexFile, mt, errdef.ErrCorrupt)
	}
	var top map[string]json.RawMessage
	var manifests []field // every member that decodes into Manifests
	rest := make([]field, 0, len(fields))
	for _, f := range fields {
		if n, _ := fieldOf(f.key, indexFields); n == "manifests" {
			manifests = append(manifests, f)
		} else {
			rest = append(rest, f)
		}
	}
	if plain(rest, indexFields) {
		top = make(map[string]json.RawMessage, len(rest))
		for _, f := range rest {
			top[f.key] = f.val
		}
	} else {
		canon := doc
		canon.Manifests = nil
		top = normalized(rest, indexFields, canon)
		delete(top, "manifests")
	}
	// The entries' bytes are those of the last array: the one that gave
	// Manifests its length. An earlier array of the same key may have
	// filled in fields of its elements (encoding/json decodes into the
	// elements already there): an entry whose bytes do not decode to its
	// descriptor is written again.
	var raws []json.RawMessage
	if n := len(manifests); n > 0 {
		_ = json.Unmarshal(manifests[n-1].val, &raws) // an array or null: decoded above
	}
	if len(raws) != len(doc.Manifests) {
		raws = nil // cannot happen
	}
	ix := &Index{top: top, Entries: make([]Entry, 0, len(doc.Manifests))}
	for i, d := range doc.Manifests {
		if err := checkDescriptor(IndexFile, i, d); err != nil {
			return nil, err
		}
		var raw json.RawMessage
		if raws != nil {
			raw = compact(raws[i])
			if len(manifests) > 1 {
				var again v1.Descriptor
				if json.Unmarshal(raw, &again) != nil || !reflect.DeepEqual(again, d) {
					raw, _ = json.Marshal(normalized(objectFields(raw), descriptorFields, d))
				}
			}
		} else {
			raw, _ = json.Marshal(d)
		}
		ix.Entries = append(ix.Entries, entry(d, raw))
	}
	return ix, nil
}

// checkIndexTop checks the top-level fields of index.json.
func checkIndexTop(top map[string]json.RawMessage) error {
	var sv int
	if err := json.Unmarshal(top["schemaVersion"], &sv); err != nil || sv != 2 {
		return fmt.Errorf("%s: schemaVersion is not 2: %w", IndexFile, errdef.ErrCorrupt)
	}
	if mt, ok := top["mediaType"]; ok {
		var s string
		if err := json.Unmarshal(mt, &s); err != nil || (s != "" && s != v1.MediaTypeImageIndex) {
			return fmt.Errorf("%s: mediaType %s is not an image index: %w", IndexFile, mt, errdef.ErrCorrupt)
		}
	}
	return nil
}

// With returns a copy of ix with entries replaced.
func (ix *Index) With(entries []Entry) *Index {
	return &Index{top: ix.top, Entries: entries, bare: ix.bare}
}

// Marshal renders index.json. Entries keep their original bytes.
func (ix *Index) Marshal() []byte {
	n := 256
	for _, e := range ix.Entries {
		n += len(e.Raw) + 1
	}
	for _, v := range ix.top {
		n += len(v) + 32
	}
	var buf bytes.Buffer
	buf.Grow(n)
	buf.WriteString("{")
	// schemaVersion and mediaType first, like every other tool writes them.
	first := true
	field := func(k string, v []byte) {
		if !first {
			buf.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(v)
	}
	if v, ok := ix.top["schemaVersion"]; ok {
		field("schemaVersion", v)
	} else {
		field("schemaVersion", []byte("2"))
	}
	if v, ok := ix.top["mediaType"]; ok {
		field("mediaType", v)
	}
	if !first {
		buf.WriteByte(',')
	}
	first = false
	buf.WriteString(`"manifests":[`)
	for i := 0; i < len(ix.Entries); {
		if i > 0 {
			buf.WriteByte(',')
		}
		e := ix.Entries[i]
		buf.Write(e.Raw)
		// The entries that follow e in the bytes it was parsed from (a
		// comma between) go with it, in one copy.
		i++
		run := 0
		for ; i < len(ix.Entries); i++ {
			next := ix.Entries[i].Raw
			if len(next) == 0 || len(e.tail) < run+1+len(next) || e.tail[run] != ',' || &e.tail[run+1] != &next[0] {
				break
			}
			run += 1 + len(next)
		}
		buf.Write(e.tail[:run])
	}
	buf.WriteByte(']')
	keys := make([]string, 0, len(ix.top))
	for k := range ix.top {
		if k != "schemaVersion" && k != "mediaType" {
			keys = append(keys, k)
		}
	}
	sortStrings(keys)
	for _, k := range keys {
		field(k, compact(ix.top[k]))
	}
	buf.WriteByte('}')
	if !ix.bare {
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

func compact(b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}

// Find returns the positions of entries whose name is name.
func (ix *Index) Find(name string) []int {
	var out []int
	for i, e := range ix.Entries {
		if e.Name() == name {
			out = append(out, i)
		}
	}
	return out
}
