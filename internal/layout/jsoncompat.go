package layout

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// The tools that share a layout (skopeo, umoci, oras, podman) decode its
// JSON with encoding/json into the image-spec structs: an object key names
// a field when it equals the field's JSON name exactly or under Unicode
// case folding (bytes.EqualFold: "Manifests", "MEDIATYPE", "\u212aey" for
// "key"), escapes in keys are decoded first ("\u0064igest" is "digest"),
// and a key met twice is decoded twice into the same field (the last string
// wins, maps and structs merge, a null leaves the field as it was). This
// file holds what ocistore needs to read index.json and manifests the same
// way where its own parsing does not go through those structs.

// Field names, read from the structs themselves so that they follow the
// image-spec module.
var (
	indexFields      = jsonFieldNames(reflect.TypeFor[v1.Index]())
	descriptorFields = jsonFieldNames(reflect.TypeFor[v1.Descriptor]())
	platformFields   = jsonFieldNames(reflect.TypeFor[v1.Platform]())
)

// jsonFieldNames lists the JSON names of t's fields, embedded structs'
// included, as encoding/json names them.
func jsonFieldNames(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonFieldNames(f.Type)...)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}

// fieldOf returns the name of the field of names that encoding/json
// decodes key into, ok false when key names none of them.
func fieldOf(key string, names []string) (string, bool) {
	for _, n := range names {
		if n == key {
			return n, true
		}
	}
	for _, n := range names {
		if strings.EqualFold(n, key) {
			return n, true
		}
	}
	return "", false
}

// field is one member of a JSON object: its key, unescaped, and its value
// as it is written.
type field struct {
	key string
	val json.RawMessage
}

// objectFields lists the members of the JSON object b in order, duplicates
// included. b must be valid JSON; a value that is not an object (null) has
// no members.
func objectFields(b []byte) []field {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	var out []field
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return out
		}
		key, _ := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return out
		}
		out = append(out, field{key, val})
	}
	return out
}

// plain reports whether encoding/json reads fields as a map would: every
// key that names a field of names is that name exactly and the only one to
// name it. Other keys are free.
func plain(fields []field, names []string) bool {
	seen := make([]bool, len(names))
	for _, f := range fields {
		for i, n := range names {
			if f.key == n {
				if seen[i] {
					return false
				}
				seen[i] = true
				break
			}
			if strings.EqualFold(n, f.key) {
				return false
			}
		}
	}
	return true
}

// normalized rebuilds the object whose members are fields so that it reads
// as a map would (plain): keys that name none of names are kept (the last
// of a duplicate), and the fields of names take the values of canon, the
// object's decoded value marshalled again (what encoding/json made of the
// keys that named them, whatever their spelling or number).
func normalized(fields []field, names []string, canon any) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for _, f := range fields {
		if _, known := fieldOf(f.key, names); !known {
			out[f.key] = f.val
		}
	}
	b, _ := json.Marshal(canon)
	var known map[string]json.RawMessage
	_ = json.Unmarshal(b, &known)
	for k, v := range known {
		if _, ok := fieldOf(k, names); ok {
			out[k] = v
		}
	}
	return out
}
