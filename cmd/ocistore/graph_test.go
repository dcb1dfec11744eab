package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// TestInspectNestedIndex: inspect and ls of an index whose manifests are an
// index and an image manifest that the inner index lists too: each manifest's
// size is its own graph's, the total counts every blob once.
func TestInspectNestedIndex(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := testutil.Open(t, dir)
	b := testutil.NewBuilder(t, s, 3)
	base := b.Random(5000)
	amd := b.Manifest([]v1.Descriptor{base}, 1)
	amd.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	arm := b.Manifest([]v1.Descriptor{base}, 2)
	arm.Platform = &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	inner := b.Index(amd, arm)
	outer := b.Index(inner, amd)
	b.Tag(outer, "outer")
	testutil.Close(t, s)
	gOuter, gInner, gAmd := graphOf(t, dir, outer), graphOf(t, dir, inner), graphOf(t, dir, amd)
	if len(gOuter) != 1+len(gInner) {
		t.Fatalf("fixture: outer's graph is %d blobs, want inner's %d and itself", len(gOuter), len(gInner))
	}

	r := must(t, 0, "-l", dir, "inspect", "outer")
	wantContains(t, "stdout", r.stdout, "Manifests (2):\n",
		fmt.Sprintf("Total: %s, %s\n", plural(len(gOuter), "blob", "blobs"), sizeWithBytes(total(gOuter))))
	var rows [][]string
	for _, l := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(l, "  sha256:") {
			rows = append(rows, strings.Fields(l))
		}
	}
	want := [][]string{
		append([]string{inner.Digest.String(), "-"}, append(strings.Fields(humanSize(total(gInner))), v1.MediaTypeImageIndex)...),
		append([]string{amd.Digest.String(), "linux/amd64"}, append(strings.Fields(humanSize(total(gAmd))), v1.MediaTypeImageManifest)...),
	}
	if fmt.Sprint(rows) != fmt.Sprint(want) {
		t.Errorf("manifest rows\n%v\nwant\n%v\n%s", rows, want, r)
	}

	out := decodeJSON[inspectOutput](t, must(t, 0, "-l", dir, "inspect", "--json", "outer"))
	wantSizes := map[string]int64{inner.Digest.String(): total(gInner), amd.Digest.String(): total(gAmd)}
	if fmt.Sprint(out.ManifestSizes) != fmt.Sprint(wantSizes) || out.TotalBlobs != len(gOuter) || out.TotalSize != total(gOuter) {
		t.Errorf("inspect --json: sizes %v, total %d blobs %d bytes; want %v, %d, %d", out.ManifestSizes, out.TotalBlobs, out.TotalSize, wantSizes, len(gOuter), total(gOuter))
	}
	rs := decodeJSON[[]lsRow](t, must(t, 0, "-l", dir, "ls", "--json"))
	if len(rs) != 1 || rs[0].TotalSize == nil || *rs[0].TotalSize != total(gOuter) {
		t.Errorf("ls --json: %+v, want totalSize %d", rs, total(gOuter))
	}
}

// TestDamagedGraphCLI: ls sizes what it can and warns about the rest (exit
// 0); inspect of an image whose graph cannot be read fails with exit 1 and
// says why: a missing manifest is corruption (not a reference not found), a
// manifest over the size limit or nested too deep is refused.
func TestDamagedGraphCLI(t *testing.T) {
	t.Parallel()
	blobs := map[digest.Digest][]byte{}
	add := func(v any, mt string) v1.Descriptor {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		d := testutil.Blob(raw, mt)
		blobs[d.Digest] = raw
		return d
	}
	index := func(ms ...v1.Descriptor) v1.Descriptor {
		return add(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: ms}, v1.MediaTypeImageIndex)
	}
	ok := testutil.RawImage(blobs, []byte(`{"ok":1}`), []byte("layer-ok"), []byte("shared"))
	gone := testutil.RawImage(blobs, []byte(`{"gone":1}`), []byte("layer-gone"), []byte("shared"))
	ix := index(ok, gone)
	big := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromString("big"), Size: store.MaxManifestSize + 1}
	deep := ok
	for i := 0; i < store.MaxDepth; i++ {
		deep = index(deep)
	}
	dir := testutil.WriteRawLayout(t, t.TempDir(), blobs, []v1.Descriptor{
		testutil.Named(ok, "ok"), testutil.Named(ok, "ok2"), testutil.Named(ix, "ix"), testutil.Named(big, "big"), testutil.Named(deep, "deep"),
	})
	if err := os.Remove(filepath.Join(dir, "blobs", "sha256", gone.Digest.Encoded())); err != nil {
		t.Fatal(err)
	}
	missing := fmt.Sprintf("manifest %s is missing from the layout (run ocistore fsck): corrupt", gone.Digest)
	tooLarge := fmt.Sprintf("manifest %s: %d bytes, limit %d: too large", big.Digest, big.Size, store.MaxManifestSize)
	tooDeep := fmt.Sprintf("nested deeper than %d: corrupt", store.MaxDepth)

	r := must(t, 0, "-l", dir, "ls")
	sizes := map[string]string{}
	for _, l := range strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")[1:] {
		f := strings.Fields(l)
		sizes[f[0]] = strings.Join(f[3:], " ")
	}
	okSize := humanSize(total(graphOf(t, dir, ok)))
	if want := map[string]string{"ok": okSize, "ok2": okSize, "ix": "?", "big": "?", "deep": "?"}; fmt.Sprint(sizes) != fmt.Sprint(want) {
		t.Errorf("ls sizes %v, want %v\n%s", sizes, want, r)
	}
	wantContains(t, "stderr", r.stderr, "cannot size image image=ix", missing, "image=big", tooLarge, "image=deep", tooDeep)
	if n := strings.Count(r.stderr, "cannot size image"); n != 3 {
		t.Errorf("%d warnings, want 3:\n%s", n, r.stderr)
	}

	for ref, why := range map[string]string{"ix": missing, "big": tooLarge, "deep": tooDeep} {
		r := must(t, 1, "-l", dir, "inspect", ref)
		if !strings.HasPrefix(r.stderr, "ocistore: inspect: ") || !strings.Contains(r.stderr, why) || strings.Count(r.stderr, "\n") != 1 || r.stdout != "" {
			t.Errorf("inspect %s: want one line saying %q on stderr, nothing on stdout:\n%s", ref, why, r)
		}
		// With --json, the error is one JSON object on stderr.
		r = must(t, 1, "-l", dir, "inspect", "--json", ref)
		var e errorJSON
		if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || !strings.Contains(e.Error, why) || e.Kind != kindError || e.Exit != 1 ||
			strings.Count(r.stderr, "\n") != 1 || r.stdout != "" {
			t.Errorf("inspect --json %s: want one JSON error saying %q on stderr, nothing on stdout (%v):\n%s", ref, why, err, r)
		}
	}
}
