package store_test

// Fixture tests: the layouts of testdata/layouts were written by real tools
// (umoci, skopeo: make-tool-layouts.sh) or by internal/cmd/mkfixtures the way
// other tools write them (Docker, BuildKit, oras, ...). Each one is adopted
// by store.Open, checked, then emptied one reference at a time; after every
// step the graph is walked here, from index.json and the manifests' JSON,
// without trusting the store. See testdata/layouts/README.md.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// fxRoot is the corpus, relative to this package.
const fxRoot = "../testdata/layouts"

// fxToolLayouts are the layouts real tools wrote (make-tool-layouts.sh);
// every other one must be what mkfixtures writes.
var fxToolLayouts = []string{"skopeo", "umoci"}

// fxLayouts lists the layouts of the corpus: every directory of fxRoot,
// each of which must hold an oci-layout.
func fxLayouts(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(fxRoot)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(fxRoot, e.Name(), "oci-layout")); err != nil {
			t.Errorf("%s/%s is not a layout: %v", fxRoot, e.Name(), err)
			continue
		}
		out = append(out, e.Name())
	}
	if len(out) == 0 {
		t.Fatalf("no layouts in %s", fxRoot)
	}
	return out
}

// fxCopy copies layout name to a new temp dir.
func fxCopy(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	copyDir(t, filepath.Join(fxRoot, name), dir)
	return dir
}

// fxIndex is index.json as raw JSON fields: what must survive a rewrite.
type fxIndex struct {
	raw     []byte
	top     map[string]json.RawMessage
	entries []map[string]json.RawMessage
	descs   []v1.Descriptor
}

func fxReadIndex(t *testing.T, dir string) fxIndex {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	ix := fxIndex{raw: raw}
	if err := json.Unmarshal(raw, &ix.top); err != nil {
		t.Fatalf("index.json: %v\n%s", err, raw)
	}
	if m := ix.top["manifests"]; m != nil {
		if err := json.Unmarshal(m, &ix.entries); err != nil {
			t.Fatalf("index.json manifests: %v", err)
		}
		if err := json.Unmarshal(m, &ix.descs); err != nil {
			t.Fatalf("index.json manifests: %v", err)
		}
	}
	return ix
}

// fxKey names an entry as tags() does: its tag, or "<none>DIGEST".
func fxKey(d v1.Descriptor) string {
	if n := d.Annotations[v1.AnnotationRefName]; n != "" {
		return n
	}
	return "<none>" + d.Digest.String()
}

// fxTagNames are the tags of ix in file order.
func fxTagNames(ix fxIndex) []string {
	var out []string
	for _, d := range ix.descs {
		if n := d.Annotations[v1.AnnotationRefName]; n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// fxNorm is the canonical form of a JSON value (objects' keys sorted).
func fxNorm(t *testing.T, b json.RawMessage) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

// fxPreserved fails unless every top-level field of old (but manifests) is
// in now with the same value, and every entry of old that is still there
// (same tag, or same digest when untagged) kept every field it had with its
// value: platform, annotations, artifactType, data, unknown ones.
func fxPreserved(t *testing.T, what string, old, now fxIndex) {
	t.Helper()
	for k, v := range old.top {
		if k == "manifests" {
			continue
		}
		nv, ok := now.top[k]
		if !ok {
			t.Errorf("%s: index.json lost its top-level field %q (was %s):\n%s", what, k, v, now.raw)
			continue
		}
		if fxNorm(t, v) != fxNorm(t, nv) {
			t.Errorf("%s: index.json top-level %q changed: %s -> %s", what, k, v, nv)
		}
	}
	for i, oe := range old.entries {
		key := fxKey(old.descs[i])
		var match map[string]json.RawMessage
		for j, ne := range now.entries {
			if fxKey(now.descs[j]) == key && now.descs[j].Digest == old.descs[i].Digest {
				match = ne
				break
			}
		}
		if match == nil {
			continue // removed on purpose; the tag maps are compared elsewhere
		}
		for f, v := range oe {
			nv, ok := match[f]
			if !ok {
				t.Errorf("%s: entry %s lost its field %q (was %s)", what, key, f, v)
				continue
			}
			if fxNorm(t, v) != fxNorm(t, nv) {
				t.Errorf("%s: entry %s field %q changed: %s -> %s", what, key, f, v, nv)
			}
		}
		for f := range match {
			if _, ok := oe[f]; !ok {
				t.Errorf("%s: entry %s gained a field %q", what, key, f)
			}
		}
	}
}

// fxInner are the media types whose blobs list children.
var fxInner = []string{
	v1.MediaTypeImageManifest, v1.MediaTypeImageIndex,
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.artifact.manifest.v1+json",
}

// fxReach walks the graph of dir's index.json from the files and fails on
// every reachable blob that is missing (unless its descriptor has URLs: a
// foreign layer), has another size, or does not hash to its digest. A root
// without a media type is read as a manifest; a subject is a weak reference
// and is not followed; unknown media types are leaves. It returns the blobs
// reached that are on disk, with the first descriptor met of each.
func fxReach(t *testing.T, dir string) map[digest.Digest]v1.Descriptor {
	t.Helper()
	ix := fxReadIndex(t, dir)
	seen := map[digest.Digest]bool{}
	onDisk := map[digest.Digest]v1.Descriptor{}
	var visit func(d v1.Descriptor, root bool, from string)
	visit = func(d v1.Descriptor, root bool, from string) {
		if err := d.Digest.Validate(); err != nil {
			t.Errorf("%s: bad digest %q: %v", from, d.Digest, err)
			return
		}
		if seen[d.Digest] {
			return
		}
		seen[d.Digest] = true
		p := filepath.Join(dir, "blobs", d.Digest.Algorithm().String(), d.Digest.Encoded())
		b, err := os.ReadFile(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) && len(d.URLs) > 0:
			return // a foreign layer: fetched from its URLs, never in the layout
		case err != nil:
			t.Errorf("blob %s (%s, from %s) is reachable but unreadable: %v", d.Digest, d.MediaType, from, err)
			return
		case int64(len(b)) != d.Size:
			t.Errorf("blob %s (from %s): %d bytes, descriptor says %d", d.Digest, from, len(b), d.Size)
		case d.Digest.Algorithm().FromBytes(b) != d.Digest:
			t.Errorf("blob %s (from %s): content hashes to %s", d.Digest, from, d.Digest.Algorithm().FromBytes(b))
		}
		onDisk[d.Digest] = d
		if !slices.Contains(fxInner, d.MediaType) && !(root && d.MediaType == "") {
			return
		}
		var m struct {
			Config    *v1.Descriptor  `json:"config"`
			Layers    []v1.Descriptor `json:"layers"`
			Manifests []v1.Descriptor `json:"manifests"`
			Blobs     []v1.Descriptor `json:"blobs"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Errorf("manifest %s (from %s): %v", d.Digest, from, err)
			return
		}
		var kids []v1.Descriptor
		if m.Config != nil {
			kids = append(kids, *m.Config)
		}
		kids = slices.Concat(kids, m.Layers, m.Manifests, m.Blobs)
		for _, k := range kids {
			visit(k, false, d.Digest.String())
		}
	}
	for _, d := range ix.descs {
		visit(d, true, "index.json entry "+fxKey(d))
	}
	return onDisk
}

// fxBlobFiles lists every file under dir/blobs.
func fxBlobFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, f := range files(t, dir) {
		if strings.HasPrefix(f, "blobs"+string(filepath.Separator)) {
			out = append(out, f)
		}
	}
	return out
}

// fxNoTemps fails on files in the layout root other than the layout's own
// (a leftover temp file of an index.json rewrite).
func fxNoTemps(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		switch e.Name() {
		case "oci-layout", "index.json", "blobs", ".ocistore":
		default:
			t.Errorf("unexpected file %s in the layout root", e.Name())
		}
	}
}

// TestFixtureCorpus checks the corpus itself: every blob is named by its
// content's digest, the layouts are consistent for ocistore's checker before
// adoption (only the journal is missing), none carries ocistore state, the
// README lists each one, and the whole stays small.
func TestFixtureCorpus(t *testing.T) {
	names := fxLayouts(t)
	readme, err := os.ReadFile(filepath.Join(fxRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	err = filepath.WalkDir(fxRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		total += fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total > 300<<10 {
		t.Errorf("the corpus holds %d bytes, over 300 KiB: keep layers tiny", total)
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			if !bytes.Contains(readme, []byte("`"+name+"`")) {
				t.Errorf("%s/README.md does not describe `%s`", fxRoot, name)
			}
			src := filepath.Join(fxRoot, name)
			if _, err := os.Stat(filepath.Join(src, ".ocistore")); err == nil {
				t.Errorf("%s holds ocistore state: the corpus must be as the tools wrote it", src)
			}
			for _, f := range fxBlobFiles(t, src) {
				parts := strings.Split(filepath.ToSlash(f), "/")
				if len(parts) != 3 {
					t.Errorf("%s: not blobs/ALG/HEX", f)
					continue
				}
				d := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2])
				if err := d.Validate(); err != nil {
					t.Errorf("%s: %v", f, err)
					continue
				}
				b, err := os.ReadFile(filepath.Join(src, f))
				if err != nil {
					t.Fatal(err)
				}
				if got := d.Algorithm().FromBytes(b); got != d {
					t.Errorf("%s: content hashes to %s", f, got)
				}
			}
			dir := fxCopy(t, name)
			// A read-only open lists the entries and writes nothing.
			ro, err := store.Open(context.Background(), dir, &store.Options{ReadOnly: true})
			if err != nil {
				t.Fatalf("read-only open: %v", err)
			}
			imgs, err := ro.List(context.Background())
			ro.Close()
			if err != nil {
				t.Fatal(err)
			}
			if len(imgs) != len(fxReadIndex(t, src).descs) {
				t.Errorf("read-only List: %d entries, index.json has %d", len(imgs), len(fxReadIndex(t, src).descs))
			}
			if got, want := files(t, dir), files(t, src); !slices.Equal(got, want) {
				t.Errorf("read-only open changed the files:\n got %v\nwant %v", got, want)
			}
			if _, err := os.Stat(filepath.Join(dir, ".ocistore")); err == nil {
				t.Errorf("read-only open created .ocistore")
			}
			rep, err := store.CheckDir(context.Background(), dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range rep.Problems {
				if p.Kind != recovery.KindJournalMissing {
					t.Errorf("before adoption: %s", p)
				}
			}
			reach := fxReach(t, dir)
			if got := len(fxBlobFiles(t, dir)); got != len(reach) {
				t.Errorf("%d blob files, %d reachable: the corpus must have no orphan", got, len(reach))
			}
		})
	}
}

// TestFixtureAdoptAndDeleteAll adopts each layout (every reachable blob
// then fetches, verified), then deletes its tags one at a time (in file
// order, and in reverse order on a fresh copy), then its untagged entries by
// digest; a third copy is emptied by digest only (a digest removes every
// entry of its manifest). After each step: fsck is clean, the other entries
// are unchanged (fields included), every remaining tag resolves, and every
// blob reachable from index.json is still on disk. At the end no blob is
// left.
func TestFixtureAdoptAndDeleteAll(t *testing.T) {
	ctx := context.Background()
	for _, name := range fxLayouts(t) {
		for _, order := range []string{"forward", "reverse", "digest"} {
			t.Run(name+"/"+order, func(t *testing.T) {
				dir := fxCopy(t, name)
				orig := fxReadIndex(t, dir)
				s, err := store.Open(ctx, dir, nil)
				if err != nil {
					t.Fatalf("adopt: %v", err)
				}
				defer s.Close()
				checkClean(t, dir, false)
				if now := fxReadIndex(t, dir); !bytes.Equal(now.raw, orig.raw) {
					t.Errorf("adoption rewrote index.json:\nbefore %s\nafter  %s", orig.raw, now.raw)
				}
				for _, d := range fxReach(t, dir) {
					if _, err := libFetchAll(ctx, s, d); err != nil {
						t.Errorf("fetch %s: %v", d.Digest, err)
					}
				}
				before := tags(t, dir)
				var refs []string
				switch order {
				case "forward":
					refs = fxTagNames(orig)
				case "reverse":
					refs = fxTagNames(orig)
					slices.Reverse(refs)
				case "digest":
					for _, d := range orig.descs {
						if !slices.Contains(refs, d.Digest.String()) {
							refs = append(refs, d.Digest.String())
						}
					}
				}
				for _, ref := range refs {
					if !fxHolds(before, ref) {
						continue // a referrer already deleted with its subject
					}
					res, err := s.Delete(ctx, ref)
					if err != nil {
						t.Fatalf("delete %s: %v", ref, err)
					}
					step := "after delete " + ref
					gone := []string{ref}
					if order == "digest" {
						gone = nil
						for k, v := range before {
							if v == ref {
								gone = append(gone, k)
							}
						}
					}
					// The referrers of what left the layout go with it.
					for _, r := range res.Referrers {
						if r.Name != "" {
							gone = append(gone, r.Name)
						} else {
							gone = append(gone, "<none>"+r.Descriptor.Digest.String())
						}
					}
					got := tags(t, dir)
					if want := without(before, gone...); !equalMaps(got, want) {
						t.Fatalf("%s: entries\n got %v\nwant %v", step, got, want)
					}
					before = got
					checkClean(t, dir, false)
					fxNoTemps(t, dir)
					now := fxReadIndex(t, dir)
					fxPreserved(t, step, orig, now)
					for _, d := range now.descs {
						n := d.Annotations[v1.AnnotationRefName]
						if n == "" {
							continue
						}
						r, err := s.Resolve(ctx, n)
						if err != nil {
							t.Errorf("%s: resolve %s: %v", step, n, err)
						} else if r.Digest != d.Digest {
							t.Errorf("%s: resolve %s = %s, index.json says %s", step, n, r.Digest, d.Digest)
						}
					}
					reach := fxReach(t, dir)
					for _, f := range res.Freed {
						if _, ok := reach[digest.Digest(f.Digest)]; ok {
							t.Errorf("%s: freed %s, which index.json still reaches", step, f.Digest)
						}
					}
					if _, err := s.Resolve(ctx, ref); !errors.Is(err, store.ErrNotFound) {
						t.Errorf("%s: resolve %s after its delete: %v, want ErrNotFound", step, ref, err)
					}
				}
				var untagged []string
				for _, d := range fxReadIndex(t, dir).descs {
					if d.Annotations[v1.AnnotationRefName] != "" {
						t.Fatalf("tag %s left after deleting every tag", d.Annotations[v1.AnnotationRefName])
					}
					if !slices.Contains(untagged, d.Digest.String()) {
						untagged = append(untagged, d.Digest.String())
					}
				}
				for _, d := range untagged {
					if _, err := s.Delete(ctx, d); err != nil {
						t.Fatalf("delete untagged %s: %v", d, err)
					}
					checkClean(t, dir, false)
					fxReach(t, dir)
				}
				final := fxReadIndex(t, dir)
				if len(final.descs) != 0 {
					t.Errorf("index.json still has %d entries: %s", len(final.descs), final.raw)
				}
				fxPreserved(t, "emptied", orig, final)
				if left := fxBlobFiles(t, dir); len(left) != 0 {
					t.Errorf("blobs left after deleting everything (leaked): %v", left)
				}
				checkClean(t, dir, false)
				fxNoTemps(t, dir)
			})
		}
	}
}

// TestFixtureTagKeepsIndexFields tags the first tagged entry of each layout
// under a new name, then untags it: index.json keeps every top-level field
// and every field of every entry it had (platform, annotations,
// artifactType, data, fields no spec defines). The entry tagged is the first
// one with a media type: Tag refuses a descriptor without one, such as
// Resolve returns for no-media-type's "bare" entry.
func TestFixtureTagKeepsIndexFields(t *testing.T) {
	ctx := context.Background()
	for _, name := range fxLayouts(t) {
		t.Run(name, func(t *testing.T) {
			dir := fxCopy(t, name)
			orig := fxReadIndex(t, dir)
			s, err := store.Open(ctx, dir, nil)
			if err != nil {
				t.Fatalf("adopt: %v", err)
			}
			defer s.Close()
			var first string
			for _, d := range orig.descs {
				if n := d.Annotations[v1.AnnotationRefName]; n != "" && d.MediaType != "" {
					first = n
					break
				}
			}
			if first == "" {
				t.Fatal("no tagged entry with a media type")
			}
			desc, err := s.Resolve(ctx, first)
			if err != nil {
				t.Fatal(err)
			}
			const copyTag = "fixture-copy"
			if err := s.Tag(ctx, desc, copyTag); err != nil {
				t.Fatalf("tag %s as %s: %v", first, copyTag, err)
			}
			tagged := fxReadIndex(t, dir)
			fxPreserved(t, "after tag", orig, tagged)
			if len(tagged.descs) != len(orig.descs)+1 {
				t.Errorf("after tag: %d entries, want %d:\n%s", len(tagged.descs), len(orig.descs)+1, tagged.raw)
			}
			for i, d := range orig.descs {
				if fxKey(d) != fxKey(tagged.descs[i]) {
					t.Errorf("after tag: entry %d is %s, was %s (order changed)", i, fxKey(tagged.descs[i]), fxKey(d))
				}
			}
			if got, err := s.Resolve(ctx, copyTag); err != nil || got.Digest != desc.Digest {
				t.Errorf("resolve %s: %v %v, want %s", copyTag, got.Digest, err, desc.Digest)
			}
			checkClean(t, dir, false)
			fxReach(t, dir)

			if err := s.Untag(ctx, copyTag); err != nil {
				t.Fatal(err)
			}
			untagged := fxReadIndex(t, dir)
			fxPreserved(t, "after untag", orig, untagged)
			if len(untagged.descs) != len(orig.descs) {
				t.Errorf("after untag: %d entries, want %d:\n%s", len(untagged.descs), len(orig.descs), untagged.raw)
			}
			if !equalMaps(tags(t, dir), fxTagMap(orig)) {
				t.Errorf("after untag: entries %v, want %v", tags(t, dir), fxTagMap(orig))
			}
			checkClean(t, dir, false)
			if got := len(fxBlobFiles(t, dir)); got != len(fxReach(t, dir)) {
				t.Errorf("after tag and untag: %d blob files, %d reachable", got, len(fxReach(t, dir)))
			}
		})
	}
}

// fxTagMap is tags() of an index read from the file.
func fxTagMap(ix fxIndex) map[string]string {
	out := map[string]string{}
	for _, d := range ix.descs {
		out[fxKey(d)] = d.Digest.String()
	}
	return out
}

// TestFixtureGeneratorReproducible runs the generator into a temp dir and
// requires exactly the committed files of every layout it writes, and that
// every committed layout is either one of them or one the tools wrote.
func TestFixtureGeneratorReproducible(t *testing.T) {
	out := t.TempDir()
	cmd := exec.Command("go", "run", "./internal/cmd/mkfixtures", out)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run ./internal/cmd/mkfixtures: %v\n%s", err, b)
	}
	ents, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var generated []string
	for _, e := range ents {
		generated = append(generated, e.Name())
	}
	if len(generated) == 0 {
		t.Fatal("the generator wrote nothing")
	}
	for _, name := range fxLayouts(t) {
		if !slices.Contains(generated, name) && !slices.Contains(fxToolLayouts, name) {
			t.Errorf("%s/%s is neither generated by mkfixtures nor one of the tool layouts %v", fxRoot, name, fxToolLayouts)
		}
	}
	for _, name := range generated {
		gen, committed := filepath.Join(out, name), filepath.Join(fxRoot, name)
		gf, cf := fxTree(t, gen), fxTree(t, committed)
		if !slices.Equal(gf, cf) {
			t.Errorf("%s: the generator writes files %v, the repository has %v: run go run ./internal/cmd/mkfixtures testdata/layouts", name, gf, cf)
			continue
		}
		for _, f := range gf {
			a, err := os.ReadFile(filepath.Join(gen, f))
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(committed, f))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a, b) {
				t.Errorf("%s/%s differs from what the generator writes: run go run ./internal/cmd/mkfixtures testdata/layouts", name, f)
			}
		}
	}
}

// fxTree lists the files under dir, sorted; a missing dir has none.
func fxTree(t *testing.T, dir string) []string {
	t.Helper()
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	out := files(t, dir)
	sort.Strings(out)
	return out
}

// TestFixtureImport imports every entry of each layout into a new store:
// the same entries (names, untagged ones, descriptors with their platform,
// annotations, artifactType and data), every reachable blob copied (a
// foreign layer stays absent), nothing more, and fsck clean.
func TestFixtureImport(t *testing.T) {
	ctx := context.Background()
	for _, name := range fxLayouts(t) {
		t.Run(name, func(t *testing.T) {
			src := fxCopy(t, name)
			srcIx := fxReadIndex(t, src)
			dir := filepath.Join(t.TempDir(), "dst")
			s, err := store.Open(ctx, dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			res, err := s.Import(ctx, src)
			if err != nil {
				t.Fatalf("import: %v", err)
			}
			if len(res.Images) != len(srcIx.descs) {
				t.Errorf("imported %d entries, the source has %d", len(res.Images), len(srcIx.descs))
			}
			if got, want := tags(t, dir), fxTagMap(srcIx); !equalMaps(got, want) {
				t.Errorf("entries after import\n got %v\nwant %v", got, want)
			}
			ix := fxReadIndex(t, dir)
			for i, d := range srcIx.descs {
				found := false
				for _, nd := range ix.descs {
					if fxKey(nd) == fxKey(d) {
						found = true
						a, _ := json.Marshal(d)
						b, _ := json.Marshal(nd)
						if !bytes.Equal(a, b) {
							t.Errorf("entry %d (%s): imported as %s, source has %s", i, fxKey(d), b, a)
						}
					}
				}
				if !found {
					t.Errorf("entry %s not imported", fxKey(d))
				}
			}
			checkClean(t, dir, false)
			reach := fxReach(t, dir)
			if got := len(fxBlobFiles(t, dir)); got != len(reach) {
				t.Errorf("%d blob files after import, %d reachable", got, len(reach))
			}
			if want := len(fxReach(t, src)); len(reach) != want {
				t.Errorf("%d blobs reachable after import, %d in the source", len(reach), want)
			}
		})
	}
}

// TestFixtureUntagKeepsEntryFields: removing the last name of an entry
// written by another tool keeps the entry where it was with every field it
// had (an unknown vendor field; no mediaType where it had none), only the
// name annotation gone.
func TestFixtureUntagKeepsEntryFields(t *testing.T) {
	ctx := context.Background()
	dir := fxCopy(t, "no-media-type")
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Untag(ctx, "normal", "bare"); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Manifests []map[string]json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Manifests) != 2 {
		t.Fatalf("entries: %s", raw)
	}
	bare, normal := doc.Manifests[0], doc.Manifests[1]
	if _, ok := bare["mediaType"]; ok {
		t.Errorf("untag added a mediaType to an entry that had none: %s", raw)
	}
	if _, ok := normal["io.example.vendor-extension"]; !ok {
		t.Errorf("untag dropped an unknown entry field: %s", raw)
	}
	for i, e := range doc.Manifests {
		if _, ok := e["annotations"]; ok {
			t.Errorf("entry %d still has annotations (only the name was there): %s", i, raw)
		}
	}
}

// TestFixtureForeignLayerNotCounted: a foreign layer (with urls) that was
// never on disk is neither reported as freed nor counted as copied.
func TestFixtureForeignLayerNotCounted(t *testing.T) {
	ctx := context.Background()
	src := fxCopy(t, "docker-schema2")
	dst := t.TempDir()
	s, err := store.Open(ctx, dst, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := s.Import(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(fxBlobFiles(t, dst)); res.BlobsCopied != n {
		t.Errorf("import reports %d blobs copied, %d are on disk", res.BlobsCopied, n)
	}
	imgs, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, im := range imgs {
		r, err := s.Delete(ctx, im.Descriptor.Digest.String())
		if err != nil && !errors.Is(err, store.ErrNotFound) { // a digest may have gone with an earlier one
			t.Fatal(err)
		}
		if r != nil {
			total += r.BytesFreed
		}
	}
	if total != res.BytesCopied {
		t.Errorf("freed %d bytes in all, copied %d", total, res.BytesCopied)
	}
}

// fxHolds reports whether a tag or digest is still in tags.
func fxHolds(tags map[string]string, ref string) bool {
	if _, ok := tags[ref]; ok {
		return true
	}
	for _, v := range tags {
		if v == ref {
			return true
		}
	}
	return false
}
