package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// The JSON output of each command is a contract (docs/JSON.md). The golden
// files of testdata/golden pin it down byte for byte on a layout built the
// same way every time; regenerate them after a deliberate change with
//
//	go test -tags crashpoints ./cmd/ocistore -run TestJSONGolden -update
//
// and review the diff (docs/JSON.md must say the same).
var update = flag.Bool("update", false, "rewrite the golden files of cmd/ocistore/testdata/golden")

const goldenDir = "testdata/golden"

// golden compares the output of a command with testdata/golden/name.json,
// or writes it with -update. The layout's directory is written $LAYOUT
// (it appears in fsck's details).
func golden(t *testing.T, name, dir string, r result) {
	t.Helper()
	got := strings.ReplaceAll(r.stdout, dir, "$LAYOUT")
	p := filepath.Join(goldenDir, name+".json")
	if *update {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -tags crashpoints ./cmd/ocistore -run TestJSONGolden -update)", err)
	}
	if got != string(want) {
		t.Errorf("ocistore %s differs from %s (if the change is meant, run go test -tags crashpoints ./cmd/ocistore -run TestJSONGolden -update, review the diff and docs/JSON.md)\n--- got:\n%s--- want:\n%s",
			strings.Join(r.args, " "), p, got, want)
	}
}

// goldenFixture is the fixture (newFixture: a, a2, b, multi, an untagged
// entry) plus example.com/app:1.0, whose manifest has annotations with
// characters HTML escaping would change, and app's signature, an untagged
// referrer. It is the same, byte for byte, on every run.
func goldenFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	ctx := context.Background()
	s, err := store.Open(ctx, f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := testutil.NewBuilder(t, s, 8)
	cfg := b.Put([]byte(`{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:00Z"}`), v1.MediaTypeImageConfig)
	m := v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg,
		Layers:      []v1.Descriptor{f.base, b.Random(300)},
		Annotations: map[string]string{v1.AnnotationDescription: "<b>small</b> & fast", v1.AnnotationTitle: "app"},
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	app := b.Put(raw, v1.MediaTypeImageManifest)
	b.Tag(app, "example.com/app:1.0")
	sig := b.Artifact("application/vnd.dev.cosign.artifact.sig.v1+json", &app, "application/vnd.dev.cosign.simplesigning.v1+json")
	b.Tag(sig, "sig")
	if err := s.Untag(ctx, "sig"); err != nil {
		t.Fatal(err)
	}
	testutil.MustCheck(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestJSONGolden: the JSON of ls, inspect, du, gc, prune, rm, import and
// fsck on goldenFixture, each compared with its golden file. fsck's file
// (fsck.json) is regenerated the same way when its report changes.
func TestJSONGolden(t *testing.T) {
	t.Parallel()
	f := goldenFixture(t)
	dir := f.dir
	run := func(name string, code int, args ...string) {
		t.Helper()
		golden(t, name, dir, must(t, code, append([]string{"-l", dir}, args...)...))
	}
	// Reading commands.
	run("ls", 0, "ls", "--json")
	run("inspect", 0, "inspect", "--json", "example.com/app:1.0")
	run("inspect-index", 0, "inspect", "--json", "multi")
	run("inspect-untagged", 0, "inspect", "--json", f.untagged.Digest.String())
	// Two blobs another tool left: one older than gc's grace, one not.
	dropBlob(t, dir, "an old blob another tool left", 2*time.Hour)
	dropBlob(t, dir, "a blob another tool is writing", 0)
	run("du", 0, "du", "--json")
	run("gc-dry-run", 0, "gc", "--dry-run", "--json")
	run("gc", 0, "gc", "--json")
	// Writing commands (each after the reading ones: the layout changes).
	run("prune-dry-run", 0, "prune", "--keep-last", "1", "--dry-run", "--json")
	run("prune-untagged", 0, "prune", "--untagged", "--json")
	run("rm", 0, "rm", "--json", "example.com/app:1.0")
	dst := filepath.Join(t.TempDir(), "dst")
	must(t, 0, "-l", dst, "init")
	golden(t, "import", dst, must(t, 0, "-l", dst, "import", "--json", dir, "a", "multi"))
	// fsck: the young orphan, and b's last layer deleted behind ocistore's
	// back. The exit status is not asserted: what is a problem and what a
	// notice is fsck's to say, and its golden file is regenerated with it.
	var mb v1.Manifest
	if err := json.Unmarshal(readFile(t, f.blobPath(f.b.Digest)), &mb); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f.blobPath(mb.Layers[len(mb.Layers)-1].Digest)); err != nil {
		t.Fatal(err)
	}
	golden(t, "fsck", dir, cli(t, "-l", dir, "fsck", "--json"))
}

// shapeField is one field of the JSON shape a command's help lists, with
// the fields of its objects when the help lists them.
type shapeField struct {
	name string
	sub  []shapeField // nil: not listed
}

// helpShape reads the shape after "JSON output" in a command's help:
// "{a, b: [{c, d}], e: {f}}" (the first object after it).
func helpShape(t *testing.T, help string) []shapeField {
	t.Helper()
	i := strings.Index(help, "JSON output")
	if i < 0 {
		t.Fatalf("no JSON output in the help:\n%s", help)
	}
	s := help[i:]
	s = s[strings.IndexByte(s, '{'):]
	pos := 0
	skip := func() {
		for pos < len(s) && strings.ContainsRune(" \n\t", rune(s[pos])) {
			pos++
		}
	}
	expect := func(c byte) {
		skip()
		if pos >= len(s) || s[pos] != c {
			t.Fatalf("help's JSON shape: want %q at %q", c, s[pos:])
		}
		pos++
	}
	var object func() []shapeField
	object = func() []shapeField {
		expect('{')
		var out []shapeField
		for {
			skip()
			start := pos
			for pos < len(s) && (s[pos] >= 'a' && s[pos] <= 'z' || s[pos] >= 'A' && s[pos] <= 'Z') {
				pos++
			}
			f := shapeField{name: s[start:pos]}
			if f.name == "" {
				t.Fatalf("help's JSON shape: want a field name at %q", s[pos:])
			}
			skip()
			if s[pos] == ':' {
				pos++
				skip()
				if s[pos] == '[' {
					pos++
					f.sub = object()
					expect(']')
				} else {
					f.sub = object()
				}
			}
			out = append(out, f)
			skip()
			if s[pos] == '}' {
				pos++
				return out
			}
			expect(',')
		}
	}
	return object()
}

// objectKeys returns the keys of the JSON object raw, in order, and their
// values.
func objectKeys(t *testing.T, raw json.RawMessage) ([]string, map[string]json.RawMessage) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %s", raw)
	}
	var keys []string
	vals := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		k := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		vals[k] = v
	}
	return keys, vals
}

// matchShape checks that the object raw has exactly the fields of shape,
// in its order, and that the objects of a listed field (or of its array)
// have exactly theirs. It reports whether some listed array was empty (its
// elements then go unchecked).
func matchShape(t *testing.T, what string, shape []shapeField, raw json.RawMessage) (unchecked []string) {
	t.Helper()
	keys, vals := objectKeys(t, raw)
	var want []string
	for _, f := range shape {
		want = append(want, f.name)
	}
	if !slices.Equal(keys, want) {
		t.Errorf("%s: JSON fields %v, the help lists %v", what, keys, want)
	}
	for _, f := range shape {
		v, ok := vals[f.name]
		if f.sub == nil || !ok {
			continue
		}
		if bytes.HasPrefix(bytes.TrimSpace(v), []byte("[")) {
			var elems []json.RawMessage
			if err := json.Unmarshal(v, &elems); err != nil {
				t.Fatal(err)
			}
			if len(elems) == 0 {
				unchecked = append(unchecked, f.name)
			}
			for _, e := range elems {
				unchecked = append(unchecked, matchShape(t, what+"."+f.name+"[]", f.sub, e)...)
			}
			continue
		}
		unchecked = append(unchecked, matchShape(t, what+"."+f.name, f.sub, v)...)
	}
	return unchecked
}

// TestJSONMatchesHelp: the JSON of ls, du, gc, prune (a dry run too), rm
// and import has exactly the fields its help lists, in that order, whether
// or not something was removed; a list is [] when empty, never null.
func TestJSONMatchesHelp(t *testing.T) {
	t.Parallel()
	f := goldenFixture(t)
	dropBlob(t, f.dir, "an old blob another tool left", 2*time.Hour)
	help := func(name string) []shapeField {
		t.Helper()
		for _, c := range commands {
			if c.name == name {
				return helpShape(t, c.help)
			}
		}
		t.Fatalf("no command %s", name)
		return nil
	}
	checked := map[string]bool{} // fields whose elements were seen once
	check := func(cmd string, r result) {
		t.Helper()
		raw := json.RawMessage(r.stdout)
		if strings.HasPrefix(strings.TrimSpace(r.stdout), "[") {
			var rows []json.RawMessage
			if err := json.Unmarshal(raw, &rows); err != nil || len(rows) == 0 {
				t.Fatalf("%s: %v\n%s", cmd, err, r)
			}
			raw = rows[0]
		}
		shape := help(cmd)
		unchecked := matchShape(t, strings.Join(r.args[2:], " "), shape, raw)
		for _, f := range shape {
			if f.sub != nil && !slices.Contains(unchecked, f.name) {
				checked[cmd+"."+f.name] = true
			}
		}
		for _, bad := range []string{"<none>", `\u003c`, `\u0026`} {
			if strings.Contains(r.stdout, bad) {
				t.Errorf("%s: JSON output has %q:\n%s", cmd, bad, r.stdout)
			}
		}
	}
	l := []string{"-l", f.dir}
	check("ls", must(t, 0, append(l, "ls", "--json")...))
	check("du", must(t, 0, append(l, "du", "--json")...))
	check("gc", must(t, 0, append(l, "gc", "--dry-run", "--json")...))
	check("gc", must(t, 0, append(l, "gc", "--json")...))
	check("gc", must(t, 0, append(l, "gc", "--json")...)) // nothing left to remove
	check("prune", must(t, 0, append(l, "prune", "--keep-last", "1", "--dry-run", "--json")...))
	check("prune", must(t, 0, append(l, "prune", "--older-than", "1000w", "--dry-run", "--json")...)) // removes nothing
	check("prune", must(t, 0, append(l, "prune", "--untagged", "--json")...))
	check("rm", must(t, 0, append(l, "rm", "--json", "example.com/app:1.0")...))
	check("rm", must(t, 0, append(l, "rm", "--json", "a2")...)) // frees nothing
	dst := filepath.Join(t.TempDir(), "dst")
	must(t, 0, "-l", dst, "init")
	check("import", must(t, 0, "-l", dst, "import", "--json", f.dir))
	for _, k := range []string{"du.repositories", "gc.freed", "prune.freed", "prune.removed", "rm.referrers", "rm.freed", "import.images"} {
		if !checked[k] {
			t.Errorf("%s: never seen with an element; the test checks nothing of its elements", k)
		}
	}
}

// TestPrintJSONNoHTMLEscape: '<', '>' and '&' are written as they are.
func TestPrintJSONNoHTMLEscape(t *testing.T) {
	var out bytes.Buffer
	a := &app{stdout: &out}
	if err := a.printJSON(map[string]string{"k": "<b> & </b>"}); err != nil {
		t.Fatal(err)
	}
	if want := "{\n  \"k\": \"<b> & </b>\"\n}\n"; out.String() != want {
		t.Errorf("printJSON wrote %q, want %q", out.String(), want)
	}
}
