package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestLayoutsDeterministic: two runs build the same bytes, and every layout
// has its oci-layout and a parseable index.json. (store's fixture tests
// compare the output with the committed files.)
func TestLayoutsDeterministic(t *testing.T) {
	a, b := Layouts(), Layouts()
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("%d and %d layouts", len(a), len(b))
	}
	seen := map[string]bool{}
	for i := range a {
		if a[i].Name != b[i].Name || len(a[i].Files) != len(b[i].Files) {
			t.Fatalf("layout %d: %s (%d files) then %s (%d files)", i, a[i].Name, len(a[i].Files), b[i].Name, len(b[i].Files))
		}
		if seen[a[i].Name] {
			t.Errorf("layout %s twice", a[i].Name)
		}
		seen[a[i].Name] = true
		for p, content := range a[i].Files {
			if !bytes.Equal(content, b[i].Files[p]) {
				t.Errorf("%s/%s differs between two runs", a[i].Name, p)
			}
		}
		if _, ok := a[i].Files["oci-layout"]; !ok {
			t.Errorf("%s has no oci-layout", a[i].Name)
		}
		var ix struct{ SchemaVersion int }
		if err := json.Unmarshal(a[i].Files["index.json"], &ix); err != nil || ix.SchemaVersion != 2 {
			t.Errorf("%s/index.json: %v, schemaVersion %d", a[i].Name, err, ix.SchemaVersion)
		}
	}
}
