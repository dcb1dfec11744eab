package layout

import (
	"bytes"
	"encoding/json"
	"fmt"

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
	var fields map[string]json.RawMessage
	if json.Unmarshal(e.Raw, &fields) != nil || fields == nil {
		return NewEntry(e.Desc, name) // cannot happen for a parsed entry
	}
	ann := map[string]string{}
	if a, ok := fields["annotations"]; ok {
		_ = json.Unmarshal(a, &ann) // parsed before: a map of strings
	}
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
	raw, _ := json.Marshal(fields)
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

// parseIndexSlow is ParseIndex by encoding/json, for any index.
func parseIndexSlow(b []byte) (*Index, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", IndexFile, errdef.ErrCorrupt, err)
	}
	if err := checkIndexTop(top); err != nil {
		return nil, err
	}
	var raws []json.RawMessage
	if m, ok := top["manifests"]; ok && !bytes.Equal(bytes.TrimSpace(m), []byte("null")) {
		if err := json.Unmarshal(m, &raws); err != nil {
			return nil, fmt.Errorf("%s: manifests: %w: %v", IndexFile, errdef.ErrCorrupt, err)
		}
	}
	delete(top, "manifests")
	ix := &Index{top: top, Entries: make([]Entry, 0, len(raws))}
	for i, r := range raws {
		var d v1.Descriptor
		if err := json.Unmarshal(r, &d); err != nil {
			return nil, fmt.Errorf("%s: manifests[%d]: %w: %v", IndexFile, i, errdef.ErrCorrupt, err)
		}
		if err := checkDescriptor(IndexFile, i, d); err != nil {
			return nil, err
		}
		ix.Entries = append(ix.Entries, entry(d, compact(r)))
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
