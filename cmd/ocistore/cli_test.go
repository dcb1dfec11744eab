package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
)

func TestUsage(t *testing.T) {
	t.Parallel()
	dir := newFixture(t).dir
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"no command", nil, 2, nil, []string{"Usage: ocistore", "Commands:"}},
		{"help", []string{"help"}, 0, []string{"Usage: ocistore", "Commands:", "Global flags", "Exit codes"}, nil},
		{"-h", []string{"-h"}, 0, []string{"Usage: ocistore", "--layout"}, nil},
		{"--help", []string{"--help"}, 0, []string{"Usage: ocistore"}, nil},
		{"help rm", []string{"help", "rm"}, 0, []string{"Usage: ocistore [global flags] rm [flags] [--format text|json] REF..."}, nil},
		{"help unknown", []string{"help", "frob"}, 2, nil, []string{`unknown command "frob"`}},
		{"unknown command", []string{"frob"}, 2, nil, []string{`ocistore: unknown command "frob"`, "ocistore help"}},
		{"unknown global flag", []string{"--frob", "ls"}, 2, nil, []string{"frob"}},
		{"bad log level", []string{"--log-level", "loud", "ls"}, 2, nil, []string{"log-level"}},
		{"bad log format", []string{"--log-format", "xml", "ls"}, 2, nil, []string{"log-format"}},
		{"bad lock timeout", []string{"--lock-timeout", "soon", "ls"}, 2, nil, []string{"lock-timeout"}},
		{"empty layout", []string{"-l", "", "ls"}, 2, nil, []string{"--layout"}},
		{"unknown command flag", []string{"-l", dir, "ls", "--frob"}, 2, nil, []string{"ocistore: ls: ", "frob", "ocistore ls -h"}},
		{"bad format", []string{"-l", dir, "ls", "--format", "yaml"}, 2, nil, []string{"ocistore: ls: ", "want text or json"}},
		{"format on a command without it", []string{"-l", dir, "tag", "--format", "json", "a", "c"}, 2, nil, []string{"format"}},
		{"ls takes no argument", []string{"-l", dir, "ls", "x"}, 2, nil, []string{"ocistore: ls: takes no arguments"}},
		{"tag wants two", []string{"-l", dir, "tag", "a"}, 2, nil, []string{"ocistore: tag: want at least 2"}},
		{"inspect wants one", []string{"-l", dir, "inspect", "a", "b"}, 2, nil, []string{"ocistore: inspect: want 1"}},
		{"rm wants one", []string{"-l", dir, "rm"}, 2, nil, []string{"ocistore: rm: want at least 1"}},
		{"import wants a source", []string{"-l", dir, "import"}, 2, nil, []string{"ocistore: import: want at least 1"}},
		{"malformed digest", []string{"-l", dir, "rm", "sha256:1234"}, 2, nil, []string{"not a valid digest"}},
		{"tag to a digest-shaped name", []string{"-l", dir, "tag", "a", "sha256:" + strings.Repeat("0", 64)}, 2, nil, []string{"invalid argument"}},
		{"untag a digest", []string{"-l", dir, "untag", "sha256:" + strings.Repeat("0", 64)}, 2, nil, []string{"invalid argument"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := cli(t, c.args...)
			if r.code != c.code {
				t.Fatalf("want exit %d:\n%s", c.code, r)
			}
			wantContains(t, "stdout", r.stdout, c.stdout...)
			wantContains(t, "stderr", r.stderr, c.stderr...)
		})
	}
	// Every command has a help text, with -h and with "help COMMAND".
	for _, c := range commands {
		r := must(t, 0, c.name, "-h")
		wantContains(t, "stdout", r.stdout, "Usage: ocistore [global flags] "+c.name, c.summary)
		if r2 := must(t, 0, "help", c.name); r2.stdout != r.stdout {
			t.Errorf("help %s differs from %s -h", c.name, c.name)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	r := must(t, 0, "version")
	wantContains(t, "stdout", r.stdout, "ocistore ", "go1.")
}

func TestInit(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "new", "layout")
	r := must(t, 0, "-l", dir, "init")
	wantContains(t, "stdout", r.stdout, "created an empty OCI image layout in "+dir)
	for _, p := range []string{"oci-layout", "index.json", "blobs/sha256"} {
		if !exists(filepath.Join(dir, p)) {
			t.Errorf("init did not create %s", p)
		}
	}
	index := readFile(t, filepath.Join(dir, "index.json"))
	r = must(t, 0, "-l", dir, "init")
	wantContains(t, "stdout", r.stdout, "already an OCI image layout (0 images)")
	if got := readFile(t, filepath.Join(dir, "index.json")); string(got) != string(index) {
		t.Errorf("init on a layout rewrote index.json: %s", got)
	}
	must(t, 0, "-l", dir, "fsck")

	// A layout another tool wrote, with images: left as it is.
	f := newFixture(t)
	index = readFile(t, filepath.Join(f.dir, "index.json"))
	r = must(t, 0, "-l", f.dir, "init")
	wantContains(t, "stdout", r.stdout, "already an OCI image layout (5 images)")
	if got := readFile(t, filepath.Join(f.dir, "index.json")); string(got) != string(index) {
		t.Errorf("init on a layout rewrote index.json")
	}

	// A directory with other files is not made a layout.
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = must(t, exitNotLayout, "-l", other, "init")
	if want := "ocistore: init: " + other + ": not an OCI image layout (no oci-layout file)\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	if exists(filepath.Join(other, "oci-layout")) {
		t.Error("init wrote oci-layout into a directory with other files")
	}
}

func TestLs(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := must(t, 0, "-l", f.dir, "ls")
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("want a header and 5 rows:\n%s", r)
	}
	header := regexpFields(lines[0])
	if !slices.Equal(header, []string{"TAG", "DIGEST", "MEDIA", "TYPE", "SIZE"}) {
		t.Errorf("header %q", lines[0])
	}
	// Aligned: every row starts its digest at the same column.
	col := strings.Index(lines[0], "DIGEST")
	for _, l := range lines[1:] {
		if strings.Index(l, "sha256:") != col {
			t.Errorf("row not aligned with the header:\n%s", r.stdout)
		}
	}
	want := map[string]v1.Descriptor{"a": f.a, "a2": f.a, "b": f.b, "multi": f.multi, "<none>": f.untagged}
	for _, l := range lines[1:] {
		fs := regexpFields(l)
		d, ok := want[fs[0]]
		if !ok {
			t.Errorf("unexpected row %q", l)
			continue
		}
		delete(want, fs[0])
		if fs[1] != d.Digest.String() || fs[2] != d.MediaType {
			t.Errorf("row %q, want %s %s", l, d.Digest, d.MediaType)
		}
		if size := strings.Join(fs[3:], " "); size != humanSize(total(graphOf(t, f.dir, d))) {
			t.Errorf("row %q: size %q, want %q", l, size, humanSize(total(graphOf(t, f.dir, d))))
		}
	}
	if len(want) != 0 {
		t.Errorf("rows missing: %v", want)
	}

	for _, args := range [][]string{{"ls", "--format", "json"}, {"ls", "--json"}, {"ls", "--format=json"}} {
		r := must(t, 0, append([]string{"-l", f.dir}, args...)...)
		rows := decodeJSON[[]map[string]any](t, r)
		if len(rows) != 5 {
			t.Fatalf("want 5 rows:\n%s", r)
		}
		byName := map[string]map[string]any{}
		for _, row := range rows {
			for _, k := range []string{"ref", "repository", "tag", "untagged", "digest", "mediaType", "size", "totalSize"} {
				if _, ok := row[k]; !ok {
					t.Errorf("row %v has no %s", row, k)
				}
			}
			name, _ := row["ref"].(string)
			if (name == "") != row["untagged"] {
				t.Errorf("row %v: ref and untagged disagree", row)
			}
			byName[name] = row
		}
		for name, d := range map[string]v1.Descriptor{"a": f.a, "b": f.b, "multi": f.multi, "": f.untagged} {
			row := byName[name]
			if row["digest"] != d.Digest.String() || row["mediaType"] != d.MediaType || row["size"] != float64(d.Size) {
				t.Errorf("%q: row %v, want %v", name, row, d)
			}
			if want := total(graphOf(t, f.dir, d)); row["totalSize"] != float64(want) {
				t.Errorf("%q: totalSize %v, want %d", name, row["totalSize"], want)
			}
		}
	}
	// The multi-platform image's total counts the shared base layer once.
	// (Both platforms use the base layer: the sum over children would be larger.)
	if g := graphOf(t, f.dir, f.multi); total(g) >= f.multi.Size+total(graphOf(t, f.dir, f.amd64))+total(graphOf(t, f.dir, f.arm64)) {
		t.Errorf("fixture: both platforms of multi should share the base layer")
	}

	// An empty layout lists nothing.
	empty := t.TempDir()
	must(t, 0, "-l", empty, "init")
	if r := must(t, 0, "-l", empty, "ls", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("empty layout: %s", r)
	}
	// ls never creates a layout.
	none := filepath.Join(t.TempDir(), "none")
	r = must(t, exitLayoutMissing, "-l", none, "ls")
	wantContains(t, "stderr", r.stderr, "ocistore: ls: "+none+": layout directory does not exist")
	if exists(none) {
		t.Error("ls created the layout directory")
	}
}

func regexpFields(s string) []string { return strings.Fields(s) }

func TestInspect(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ga := graphOf(t, f.dir, f.a)
	r := must(t, 0, "-l", f.dir, "inspect", "a")
	var m v1.Manifest
	if err := json.Unmarshal(readFile(t, f.blobPath(f.a.Digest)), &m); err != nil {
		t.Fatal(err)
	}
	wantContains(t, "stdout", r.stdout,
		"Reference:", "a\n", "Tags:", "a, a2", f.a.Digest.String(), v1.MediaTypeImageManifest,
		"Config:", m.Config.Digest.String(), "Layers (2):", m.Layers[0].Digest.String(), m.Layers[1].Digest.String(),
		fmt.Sprintf("Total: %d blobs, %s", len(ga), sizeWithBytes(total(ga))))

	// By digest, as JSON.
	r = must(t, 0, "-l", f.dir, "inspect", "--format", "json", f.a.Digest.String())
	out := decodeJSON[inspectOutput](t, r)
	if out.Descriptor.Digest != f.a.Digest || out.Config == nil || out.Config.Digest != m.Config.Digest || len(out.Layers) != 2 {
		t.Errorf("inspect json: %+v", out)
	}
	if !slices.Equal(out.Refs, []string{"a", "a2"}) || out.Untagged || out.TotalBlobs != len(ga) || out.TotalSize != total(ga) {
		t.Errorf("inspect json: refs %v, total %d blobs %d bytes; want %d, %d", out.Refs, out.TotalBlobs, out.TotalSize, len(ga), total(ga))
	}

	// An index: its manifests with platform and their sizes.
	gm := graphOf(t, f.dir, f.multi)
	r = must(t, 0, "-l", f.dir, "inspect", "multi")
	wantContains(t, "stdout", r.stdout, "Manifests (2):", f.amd64.Digest.String(), "linux/amd64", f.arm64.Digest.String(), "linux/arm64/v8",
		humanSize(total(graphOf(t, f.dir, f.amd64))), fmt.Sprintf("Total: %d blobs, %s", len(gm), sizeWithBytes(total(gm))))
	wantNotContains(t, "stdout", r.stdout, "Config:", "Layers")
	out = decodeJSON[inspectOutput](t, must(t, 0, "-l", f.dir, "inspect", "--json", "multi"))
	if len(out.Manifests) != 2 || out.Manifests[1].Platform == nil || out.Manifests[1].Platform.Architecture != "arm64" ||
		out.ManifestSizes[f.arm64.Digest.String()] != total(graphOf(t, f.dir, f.arm64)) || out.TotalSize != total(gm) {
		t.Errorf("inspect json of an index: %+v", out)
	}

	// The untagged entry, by digest.
	r = must(t, 0, "-l", f.dir, "inspect", f.untagged.Digest.String())
	wantContains(t, "stdout", r.stdout, "Tags:", "<none>")

	// Not found: a tag, a digest.
	for _, ref := range []string{"nope", "sha256:" + strings.Repeat("ab", 32)} {
		r = must(t, 2, "-l", f.dir, "inspect", ref)
		wantContains(t, "stderr", r.stderr, "ocistore: inspect: ", "not found")
		if r.stdout != "" {
			t.Errorf("inspect %s printed to stdout: %s", ref, r)
		}
	}
}

func TestTagUntag(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := must(t, 0, "-l", f.dir, "tag", "b", "b-new", "b-other")
	wantContains(t, "stdout", r.stdout, "tagged "+f.b.Digest.String()+" as b-new", "as b-other")
	r = must(t, 0, "-l", f.dir, "tag", f.a.Digest.String(), "from-digest")
	rows := decodeJSON[[]lsRow](t, must(t, 0, "-l", f.dir, "ls", "--json"))
	got := map[string]string{}
	for _, row := range rows {
		got[row.name()] = row.Digest
	}
	if got["b-new"] != f.b.Digest.String() || got["b-other"] != f.b.Digest.String() || got["from-digest"] != f.a.Digest.String() {
		t.Errorf("after tag: %v", got)
	}

	must(t, 2, "-l", f.dir, "tag", "nope", "x")
	r = must(t, 0, "-l", f.dir, "untag", "b-new", "b-other")
	wantContains(t, "stdout", r.stdout, "untagged b-new", "untagged b-other")
	r = must(t, 2, "-l", f.dir, "untag", "b-new")
	wantContains(t, "stderr", r.stderr, "ocistore: untag: ", "not found")
	// Untagging never frees data, even the last tag of a manifest.
	before := blobFiles(t, f.dir)
	must(t, 0, "-l", f.dir, "untag", "b")
	if after := blobFiles(t, f.dir); !slices.Equal(before, after) {
		t.Errorf("untag removed blobs")
	}
	rows = decodeJSON[[]lsRow](t, must(t, 0, "-l", f.dir, "ls", "--json"))
	untagged := 0
	for _, row := range rows {
		if row.Untagged && row.Digest == f.b.Digest.String() {
			untagged++
		}
	}
	if untagged != 1 {
		t.Errorf("b's manifest should stay as one untagged entry: %+v", rows)
	}
	must(t, 0, "-l", f.dir, "fsck")
}

func TestRm(t *testing.T) {
	t.Parallel()
	t.Run("shared tag frees nothing", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		before := blobFiles(t, f.dir)
		r := must(t, 0, "-l", f.dir, "rm", "a")
		wantContains(t, "stdout", r.stdout, "removed a\n", "freed 0 blobs, 0 B")
		if after := blobFiles(t, f.dir); !slices.Equal(before, after) {
			t.Errorf("rm of a tag shared with a2 removed blobs")
		}
		r = must(t, 0, "-l", f.dir, "inspect", "a2")
		must(t, 2, "-l", f.dir, "inspect", "a")
		must(t, 0, "-l", f.dir, "fsck")
	})
	t.Run("frees the blobs only it used", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		freed := graphOf(t, f.dir, f.b)
		delete(freed, f.base.Digest) // a and multi still use it
		r := must(t, 0, "-l", f.dir, "rm", "b")
		wantContains(t, "stdout", r.stdout, "removed b\n", fmt.Sprintf("freed %d blobs, %s\n", len(freed), sizeWithBytes(total(freed))))
		for d, size := range freed {
			wantContains(t, "stdout", r.stdout, d.String())
			if !strings.Contains(r.stdout, humanSize(size)) {
				t.Errorf("size of %s not printed", d)
			}
			if exists(f.blobPath(d)) {
				t.Errorf("blob %s still on disk", d)
			}
		}
		if !exists(f.blobPath(f.base.Digest)) {
			t.Error("the shared base layer was removed")
		}
		must(t, 2, "-l", f.dir, "inspect", "b")
		must(t, 0, "-l", f.dir, "fsck")
	})
	t.Run("json, by digest", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		freed := graphOf(t, f.dir, f.a)
		delete(freed, f.base.Digest)
		r := must(t, 0, "-l", f.dir, "rm", f.a.Digest.String(), "--format", "json")
		out := decodeJSON[rmOutput](t, r)
		if !slices.Equal(out.Removed, []string{f.a.Digest.String()}) || out.Txn == 0 || out.BytesFreed != total(freed) || len(out.Freed) != len(freed) {
			t.Errorf("rm json: %+v, want %d blobs, %d bytes", out, len(freed), total(freed))
		}
		for _, b := range out.Freed {
			if freed[digest.Digest(b.Digest)] != b.Size {
				t.Errorf("freed %v, not in a's own graph", b)
			}
		}
		// Both tags of the manifest are gone.
		must(t, 2, "-l", f.dir, "inspect", "a")
		must(t, 2, "-l", f.dir, "inspect", "a2")
		must(t, 0, "-l", f.dir, "fsck")
	})
	t.Run("several refs, one missing: nothing deleted", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		index := readFile(t, filepath.Join(f.dir, "index.json"))
		before := blobFiles(t, f.dir)
		r := must(t, 2, "-l", f.dir, "rm", "b", "multi", "nope")
		wantContains(t, "stderr", r.stderr, "ocistore: rm: ", "nope", "not found")
		if r.stdout != "" {
			t.Errorf("stdout: %s", r)
		}
		if got := readFile(t, filepath.Join(f.dir, "index.json")); string(got) != string(index) {
			t.Error("index.json changed")
		}
		if after := blobFiles(t, f.dir); !slices.Equal(before, after) {
			t.Error("blobs removed")
		}
		// Then all of them at once: one transaction.
		r = must(t, 0, "-l", f.dir, "rm", "b", "multi", "--json")
		if out := decodeJSON[rmOutput](t, r); !slices.Equal(out.Removed, []string{"b", "multi"}) || len(out.Freed) == 0 {
			t.Errorf("rm b multi: %+v", out)
		}
		must(t, 0, "-l", f.dir, "fsck")
	})
}

func TestImport(t *testing.T) {
	t.Parallel()
	src := newFixture(t)
	t.Run("all", func(t *testing.T) {
		t.Parallel()
		dst := t.TempDir()
		must(t, 0, "-l", dst, "init")
		all := map[digest.Digest]int64{}
		for _, d := range []v1.Descriptor{src.a, src.b, src.multi, src.untagged} {
			for k, v := range graphOf(t, src.dir, d) {
				all[k] = v
			}
		}
		r := must(t, 0, "-l", dst, "import", src.dir)
		wantContains(t, "stdout", r.stdout, fmt.Sprintf("imported 5 images from %s: %d blobs copied, %s", src.dir, len(all), sizeWithBytes(total(all))),
			"imported   a ", "<none>")
		want := decodeJSON[[]lsRow](t, must(t, 0, "-l", src.dir, "ls", "--json"))
		got := decodeJSON[[]lsRow](t, must(t, 0, "-l", dst, "ls", "--json"))
		key := func(r lsRow) string { return r.name() + " " + r.Digest }
		wk, gk := []string{}, []string{}
		for _, r := range want {
			wk = append(wk, key(r))
		}
		for _, r := range got {
			gk = append(gk, key(r))
		}
		slices.Sort(wk)
		slices.Sort(gk)
		if !slices.Equal(wk, gk) {
			t.Errorf("imported %v, want %v", gk, wk)
		}
		must(t, 0, "-l", dst, "fsck")
		// Again: nothing to copy.
		out := decodeJSON[importOutput](t, must(t, 0, "-l", dst, "import", "--json", src.dir))
		if out.BlobsCopied != 0 || out.BytesCopied != 0 || len(out.Images) != 5 {
			t.Errorf("second import: %+v", out)
		}
	})
	t.Run("by ref", func(t *testing.T) {
		t.Parallel()
		dst := t.TempDir()
		must(t, 0, "-l", dst, "init")
		want := graphOf(t, src.dir, src.b)
		out := decodeJSON[importOutput](t, must(t, 0, "-l", dst, "import", src.dir, "b", "--format", "json"))
		if len(out.Images) != 1 || out.Images[0].name() != "b" || out.BlobsCopied != len(want) || out.BytesCopied != total(want) {
			t.Errorf("import b: %+v, want %d blobs %d bytes", out, len(want), total(want))
		}
		r := must(t, 0, "-l", dst, "import", src.dir, "multi", src.a.Digest.String())
		wantContains(t, "stdout", r.stdout, "imported 3 images")
		rows := decodeJSON[[]lsRow](t, must(t, 0, "-l", dst, "ls", "--json"))
		if len(rows) != 4 {
			t.Errorf("after imports: %+v", rows)
		}
		must(t, 0, "-l", dst, "fsck")
	})
	t.Run("missing ref or source", func(t *testing.T) {
		t.Parallel()
		dst := t.TempDir()
		must(t, 0, "-l", dst, "init")
		r := must(t, 2, "-l", dst, "import", src.dir, "b", "nope")
		wantContains(t, "stderr", r.stderr, "ocistore: import: ", "nope", "not found")
		r = must(t, exitLayoutMissing, "-l", dst, "import", filepath.Join(src.dir, "missing"))
		wantContains(t, "stderr", r.stderr, "ocistore: import: "+filepath.Join(src.dir, "missing")+": layout directory does not exist")
		if got := blobFiles(t, dst); len(got) != 0 {
			t.Errorf("failed imports left blobs: %v", got)
		}
		if out := must(t, 0, "-l", dst, "ls"); strings.Count(out.stdout, "\n") != 1 {
			t.Errorf("failed imports added images:\n%s", out)
		}
	})
}

func TestFsck(t *testing.T) {
	t.Parallel()
	t.Run("clean", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		r := must(t, 0, "-l", f.dir, "fsck")
		all := map[digest.Digest]int64{}
		for _, d := range []v1.Descriptor{f.a, f.b, f.multi, f.untagged} {
			for k, v := range graphOf(t, f.dir, d) {
				all[k] = v
			}
		}
		if want := fmt.Sprintf("5 images, %d blobs, %s, 0 problems\n", len(all), sizeWithBytes(total(all))); r.stdout != want {
			t.Errorf("fsck: %q, want %q", r.stdout, want)
		}
		rep := decodeJSON[recovery.Report](t, must(t, 0, "-l", f.dir, "fsck", "--json"))
		if rep.Images != 5 || rep.Blobs != len(all) || rep.Bytes != total(all) || len(rep.Problems) != 0 {
			t.Errorf("fsck json: %+v", rep)
		}
	})
	t.Run("dangling layer", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		var m v1.Manifest
		if err := json.Unmarshal(readFile(t, f.blobPath(f.b.Digest)), &m); err != nil {
			t.Fatal(err)
		}
		layer := m.Layers[len(m.Layers)-1].Digest
		if err := os.Remove(f.blobPath(layer)); err != nil {
			t.Fatal(err)
		}
		r := must(t, 3, "-l", f.dir, "fsck")
		wantContains(t, "stdout", r.stdout, "dangling "+layer.String()+" blobs/sha256/"+layer.Encoded()+": ", "1 problem\n")
		if r.stderr != "" {
			t.Errorf("stderr: %s", r)
		}
		rep := decodeJSON[recovery.Report](t, must(t, 3, "-l", f.dir, "fsck", "--format", "json"))
		if len(rep.Problems) != 1 || rep.Problems[0].Kind != recovery.KindDangling || rep.Problems[0].Digest != layer.String() {
			t.Errorf("fsck json: %+v", rep)
		}
	})
	t.Run("garbage index.json", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		garbage := []byte("{this is not json")
		if err := os.WriteFile(filepath.Join(f.dir, "index.json"), garbage, 0o644); err != nil {
			t.Fatal(err)
		}
		before := blobFiles(t, f.dir)
		r := cli(t, "-l", f.dir, "fsck")
		if r.code != 3 && r.code != 1 {
			t.Fatalf("want exit 3 or 1:\n%s", r)
		}
		wantContains(t, "output", r.stdout+r.stderr, "index.json")
		if after := blobFiles(t, f.dir); !slices.Equal(before, after) {
			t.Error("fsck removed blobs")
		}
		if got := readFile(t, filepath.Join(f.dir, "index.json")); string(got) != string(garbage) {
			t.Error("fsck changed index.json")
		}
	})
	t.Run("layout of another tool", func(t *testing.T) {
		t.Parallel()
		layer := []byte("layer")
		dir := testutil.WriteRawLayout(t, t.TempDir(), map[digest.Digest][]byte{digest.FromBytes(layer): layer}, nil)
		r := must(t, 0, "-l", dir, "fsck") // notices only: a healthy layout of another tool
		wantContains(t, "stdout", r.stdout, "notice: "+recovery.KindJournalMissing, "notice: "+recovery.KindOrphan, "0 problems, 2 notices\n")
		if exists(filepath.Join(dir, ".ocistore")) {
			t.Error("fsck adopted the layout")
		}
	})
	t.Run("not a directory", func(t *testing.T) {
		t.Parallel()
		none := filepath.Join(t.TempDir(), "none")
		r := must(t, exitLayoutMissing, "-l", none, "fsck")
		wantContains(t, "stderr", r.stderr, "ocistore: fsck: "+none+": layout directory does not exist")
	})
}

type journalJSON struct {
	Journal  bool `json:"journal"`
	InFlight bool `json:"inFlight"`
	Pending  []struct {
		ID          uint64          `json:"id"`
		Op          string          `json:"op"`
		Time        time.Time       `json:"time"`
		OldIndex    digest.Digest   `json:"oldIndex"`
		NewIndex    digest.Digest   `json:"newIndex"`
		Unlink      []digest.Digest `json:"unlink"`
		Deltas      map[string]int  `json:"deltas"`
		UnlinkCount int             `json:"unlinkCount"`
	} `json:"pending"`
}

func TestJournalAndRecover(t *testing.T) {
	t.Parallel()
	t.Run("nothing pending", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		r := must(t, 0, "-l", f.dir, "journal")
		if r.stdout != "no pending records\n" {
			t.Errorf("journal: %s", r)
		}
		if out := decodeJSON[journalJSON](t, must(t, 0, "-l", f.dir, "journal", "--json")); !out.Journal || len(out.Pending) != 0 {
			t.Errorf("journal json: %+v", out)
		}
		r = must(t, 0, "-l", f.dir, "recover")
		if r.stdout != "nothing to recover\n" {
			t.Errorf("recover: %s", r)
		}
		if r := must(t, 0, "-l", f.dir, "recover", "--json"); strings.Join(strings.Fields(r.stdout), "") != `{"actions":[]}` {
			t.Errorf("recover json: %s", r)
		}
	})
	t.Run("no journal", func(t *testing.T) {
		t.Parallel()
		dir := testutil.WriteRawLayout(t, t.TempDir(), nil, nil)
		r := must(t, 0, "-l", dir, "journal")
		wantContains(t, "stdout", r.stdout, "no journal in "+dir)
		if out := decodeJSON[journalJSON](t, must(t, 0, "-l", dir, "journal", "--json")); out.Journal || len(out.Pending) != 0 {
			t.Errorf("journal json: %+v", out)
		}
		if exists(filepath.Join(dir, ".ocistore")) {
			t.Error("journal created the journal")
		}
		// recover adopts it: the journal is built from the files.
		r = must(t, 0, "-l", dir, "recover")
		wantContains(t, "stdout", r.stdout, "recount: ")
		must(t, 0, "-l", dir, "fsck")
		// Not a layout at all.
		r = must(t, exitNotLayout, "-l", t.TempDir(), "journal")
		wantContains(t, "stderr", r.stderr, "ocistore: journal: ", "not an OCI image layout")
	})
	t.Run("interrupted rm", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		freed := graphOf(t, f.dir, f.b)
		delete(freed, f.base.Digest)
		// The rm dies right after its journal commit.
		r := cliWith(t, runOpts{env: []string{crash.EnvVar + "=" + crash.TxnJournaled}}, "-l", f.dir, "rm", "b")
		if r.code != -1 {
			t.Fatalf("want the process killed:\n%s", r)
		}
		for d := range freed {
			if !exists(f.blobPath(d)) {
				t.Fatalf("blob %s gone before the index was written", d)
			}
		}
		r = must(t, 0, "-l", f.dir, "journal")
		wantContains(t, "stdout", r.stdout, "ID", "OP", "OLD INDEX", "delete b", "sha256:", fmt.Sprintf(" %d\n", len(freed)))
		out := decodeJSON[journalJSON](t, must(t, 0, "-l", f.dir, "journal", "--format", "json"))
		if len(out.Pending) != 1 || out.Pending[0].Op != "delete b" || out.Pending[0].UnlinkCount != len(freed) || len(out.Pending[0].Unlink) != len(freed) {
			t.Fatalf("journal json: %+v", out)
		}
		rec := out.Pending[0]
		r = must(t, 3, "-l", f.dir, "fsck")
		wantContains(t, "stdout", r.stdout, recovery.KindPending, "ocistore recover")
		if after := must(t, 0, "-l", f.dir, "journal", "--json"); !strings.Contains(after.stdout, rec.NewIndex.String()) {
			t.Error("fsck ran recovery")
		}
		r = must(t, 0, "-l", f.dir, "recover")
		wantContains(t, "stdout", r.stdout, fmt.Sprintf("replay txn %d: delete b", rec.ID))
		for d := range freed {
			if exists(f.blobPath(d)) {
				t.Errorf("blob %s not unlinked by recovery", d)
			}
		}
		must(t, 2, "-l", f.dir, "inspect", "b")
		must(t, 0, "-l", f.dir, "fsck")
		if r := must(t, 0, "-l", f.dir, "journal"); r.stdout != "no pending records\n" {
			t.Errorf("journal after recover: %s", r)
		}
		if r := must(t, 0, "-l", f.dir, "recover"); r.stdout != "nothing to recover\n" {
			t.Errorf("second recover: %s", r)
		}
	})
}

func TestLayoutSelection(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	check := func(r result) {
		t.Helper()
		if r.code != 0 || !strings.Contains(r.stdout, f.b.Digest.String()) {
			t.Errorf("did not list the fixture:\n%s", r)
		}
	}
	check(cliWith(t, runOpts{env: []string{"OCISTORE_LAYOUT=" + f.dir}}, "ls"))
	check(cli(t, "-l", f.dir, "ls"))
	check(cli(t, "--layout", f.dir, "ls"))
	check(cli(t, "--layout="+f.dir, "ls"))
	check(cli(t, "-layout", f.dir, "ls"))
	// The flag wins over the environment.
	check(cliWith(t, runOpts{env: []string{"OCISTORE_LAYOUT=" + t.TempDir()}}, "-l", f.dir, "ls"))
	// Default: the working directory.
	check(cliWith(t, runOpts{dir: f.dir}, "ls"))
	// Relative paths.
	check(cliWith(t, runOpts{dir: filepath.Dir(f.dir)}, "-l", filepath.Base(f.dir), "ls"))
	check(cliWith(t, runOpts{dir: filepath.Dir(f.dir), env: []string{"OCISTORE_LAYOUT=" + filepath.Base(f.dir)}}, "ls"))
}

func TestLogging(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	r := must(t, 0, "-l", f.dir, "--log-format", "json", "--log-level", "debug", "tag", "a", "logged")
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) < 2 {
		t.Fatalf("want debug lines on stderr:\n%s", r)
	}
	levels := map[string]bool{}
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("stderr line %q is not JSON: %v", l, err)
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("log line %q has no %s", l, k)
			}
		}
		levels[fmt.Sprint(rec["level"])] = true
	}
	if !levels["DEBUG"] {
		t.Errorf("no DEBUG line: %s", r.stderr)
	}
	if r.stdout != "tagged "+f.a.Digest.String()+" as logged\n" {
		t.Errorf("stdout: %q", r.stdout)
	}

	// Text logs (tint) without colour when stderr is not a terminal.
	r = must(t, 0, "-l", f.dir, "--log-level", "debug", "ls")
	wantContains(t, "stderr", r.stderr, "DBG", "command=ls")
	wantNotContains(t, "stderr", r.stderr, "\x1b[")
	// The default level (warn) is quiet.
	if r := must(t, 0, "-l", f.dir, "ls"); r.stderr != "" {
		t.Errorf("stderr at the default level: %s", r)
	}
	if r := must(t, 0, "-l", f.dir, "--log-level", "error", "--log-format", "json", "ls"); r.stderr != "" {
		t.Errorf("stderr at level error: %s", r)
	}
}

func TestLocked(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	db, err := bolt.Open(filepath.Join(f.dir, ".ocistore", "journal.db"), 0o644, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	index := readFile(t, filepath.Join(f.dir, "index.json"))
	// Reading commands take no lock: they work while a writer holds it
	// (fsck and journal say that a transaction is in flight).
	for _, args := range [][]string{{"ls"}, {"inspect", "a"}, {"du"}, {"fsck"}, {"journal"}, {"gc", "--dry-run"}} {
		must(t, 0, append([]string{"-l", f.dir, "--lock-timeout", "200ms"}, args...)...)
	}
	// Writers wait --lock-timeout, then fail (every writer:
	// TestErrorSituations).
	for _, args := range [][]string{
		{"tag", "a", "x"},
		{"rm", "b"},
		{"gc"},
	} {
		start := time.Now()
		r := must(t, exitLocked, append([]string{"-l", f.dir, "--lock-timeout", "200ms"}, args...)...)
		wantContains(t, "stderr", r.stderr, "ocistore: "+args[0]+": "+f.dir+": locked by another process (gave up after --lock-timeout 200ms)")
		if took := time.Since(start); took > 20*time.Second {
			t.Errorf("%s waited %s with --lock-timeout 200ms", args[0], took)
		}
	}
	if got := readFile(t, filepath.Join(f.dir, "index.json")); string(got) != string(index) {
		t.Error("index.json changed under another process's lock")
	}
	db.Close()
	must(t, 0, "-l", f.dir, "--lock-timeout", "200ms", "tag", "a", "x")
}

// TestRmIncomplete: rm whose unlinks fail after its new index.json is in
// place (a blob file made immutable, so that even root cannot unlink it)
// exits 4 and says that the change was made and its cleanup is pending;
// once the blob can go, recover finishes it and fsck is clean.
func TestRmIncomplete(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var own digest.Digest
	for d := range graphOf(t, f.dir, f.b) {
		if d != f.base.Digest && d != f.b.Digest {
			own = d
			break
		}
	}
	p := f.blobPath(own)
	if out, err := exec.Command("chattr", "+i", p).CombinedOutput(); err != nil {
		t.Fatalf("chattr +i: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("chattr", "-i", p).Run() })
	r := must(t, exitIncomplete, "-l", f.dir, "rm", "b")
	wantContains(t, "stderr", r.stderr, "change made, cleanup pending", "ocistore recover")
	must(t, exitUsage, "-l", f.dir, "inspect", "b") // the change was made
	if out, err := exec.Command("chattr", "-i", p).CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v: %s", err, out)
	}
	must(t, 0, "-l", f.dir, "recover")
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("b's own blob %s after recover: %v", own, err)
	}
	must(t, 0, "-l", f.dir, "fsck")
}
