package main

import (
	"bytes"
	_ "crypto/sha256" // registers sha256 for go-digest
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/refcount"
)

// Spec is a case's case.json.
type Spec struct {
	Description string `json:"description"`
	// Repair are the flags of `fsck --repair` the golden test uses (it
	// always adds --deep).
	Repair RepairFlags `json:"repair"`
	// SparseIndex, when set, makes the test replace index.json by a sparse
	// file of this many bytes (too large to commit).
	SparseIndex int64 `json:"sparseIndex,omitempty"`
	// Fifos are paths (relative to the layout) where the test makes named
	// pipes (git cannot hold them); nothing is committed there.
	Fifos []string `json:"fifos,omitempty"`
}

// RepairFlags mirror the repair options.
type RepairFlags struct {
	DropBroken  bool `json:"dropBroken,omitempty"`
	KeepOrphans bool `json:"keepOrphans,omitempty"`
	// Refused: the repair refuses (ErrRefused) and changes nothing.
	Refused bool `json:"refused,omitempty"`
}

// Case is one damaged layout.
type Case struct {
	Name  string
	Spec  Spec
	Build func(dir string) error
}

// recordTime is the time of every journal record of the corpus.
var recordTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// base is the healthy layout every case starts from, as another tool
// writes it: app:1 and app:2 share a base layer, tool:latest stands alone,
// multi is an index of two platform manifests that share app's base
// layer, and one layer of app:2 is a foreign layer (URLs, not on disk).
type base struct {
	blobs   map[digest.Digest][]byte
	entries []v1.Descriptor
	named   map[string]v1.Descriptor // every descriptor by a short name
}

func newBase() *base {
	b := &base{blobs: map[digest.Digest][]byte{}, named: map[string]v1.Descriptor{}}
	shared := b.blob("shared", []byte("shared base layer\n"), v1.MediaTypeImageLayer)
	b.image("app:1", "app1", []v1.Descriptor{shared, b.blob("app1-layer", []byte("app 1 layer\n"), v1.MediaTypeImageLayer)})
	// A foreign layer, as Windows images have: never on disk.
	foreign := v1.Descriptor{MediaType: "application/vnd.oci.image.layer.nondistributable.v1.tar", Digest: digest.FromString("foreign layer"), Size: 13,
		URLs: []string{"https://example.com/foreign.tar"}}
	b.named["foreign"] = foreign
	b.image("app:2", "app2", []v1.Descriptor{shared, b.blob("app2-layer", []byte("app 2 layer\n"), v1.MediaTypeImageLayer), foreign})
	b.image("tool:latest", "tool", []v1.Descriptor{b.blob("tool-layer", []byte("tool layer\n"), v1.MediaTypeImageLayer)})
	amd := b.manifest("amd64", []v1.Descriptor{shared, b.blob("amd64-layer", []byte("amd64 layer\n"), v1.MediaTypeImageLayer)})
	amd.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	arm := b.manifest("arm64", []v1.Descriptor{shared, b.blob("arm64-layer", []byte("arm64 layer\n"), v1.MediaTypeImageLayer)})
	arm.Platform = &v1.Platform{OS: "linux", Architecture: "arm64"}
	idx := b.index("multi", amd, arm)
	b.tag(idx, "multi:1")
	return b
}

func (b *base) blob(name string, content []byte, mt string) v1.Descriptor {
	d := v1.Descriptor{MediaType: mt, Digest: digest.FromBytes(content), Size: int64(len(content))}
	b.blobs[d.Digest] = content
	b.named[name] = d
	return d
}

func (b *base) manifest(name string, layers []v1.Descriptor) v1.Descriptor {
	cfg := b.blob(name+"-config", []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"Labels":{"name":%q}}}`, name)), v1.MediaTypeImageConfig)
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers}
	raw, _ := json.Marshal(m)
	return b.blob(name, raw, v1.MediaTypeImageManifest)
}

func (b *base) index(name string, manifests ...v1.Descriptor) v1.Descriptor {
	ix := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: manifests}
	raw, _ := json.Marshal(ix)
	return b.blob(name, raw, v1.MediaTypeImageIndex)
}

func (b *base) image(tag, name string, layers []v1.Descriptor) v1.Descriptor {
	m := b.manifest(name, layers)
	b.tag(m, tag)
	return m
}

func (b *base) tag(d v1.Descriptor, tag string) {
	d.Annotations = map[string]string{v1.AnnotationRefName: tag}
	b.entries = append(b.entries, d)
}

// indexBytes renders an index.json of entries the way another tool would.
func indexBytes(entries []v1.Descriptor) []byte {
	ix := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: entries}
	if ix.Manifests == nil {
		ix.Manifests = []v1.Descriptor{}
	}
	raw, _ := json.Marshal(ix)
	return append(raw, '\n')
}

// write writes the layout's files into dir.
func (b *base) write(dir string) error {
	for d, c := range b.blobs {
		if err := writeFile(dir, layout.BlobPath(d), c); err != nil {
			return err
		}
	}
	if err := writeFile(dir, layout.LayoutFile, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	return writeFile(dir, layout.IndexFile, indexBytes(b.entries))
}

func writeFile(dir, rel string, content []byte) error {
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, content, 0o644)
}

func readFile(dir, rel string) ([]byte, error) {
	return os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
}

// pending describes a journaled transaction left unfinished: the entries
// of index.json it keeps.
type pending struct {
	op   string
	keep func(e layout.Entry) bool
}

// adopt writes the journal the store would have after adopting the
// layout in dir (the index on disk committed, its refcounts), plus a
// pending record when p is set (planned, refcounts of its new index; not
// applied). It returns the record's new index bytes.
func adopt(dir string, p *pending) ([]byte, error) {
	if err := os.MkdirAll(filepath.Join(dir, layout.StateDir), 0o755); err != nil {
		return nil, err
	}
	fsys, err := fsio.OpenOS(dir)
	if err != nil {
		return nil, err
	}
	defer fsys.Close()
	raw, err := readFile(dir, layout.IndexFile)
	if err != nil {
		return nil, err
	}
	ix, err := layout.ParseIndex(raw)
	if err != nil {
		return nil, err
	}
	// Lenient, as the store's adoption: a manifest that cannot be read is
	// counted as a leaf.
	load := layout.LoadChildren(fsys)
	refs, _ := refcount.Recount(ix, load)
	db, err := journal.Open(filepath.Join(dir, filepath.FromSlash(layout.StateDir+"/journal.db")), journal.Options{})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if err := db.Update(func(tx *journal.Tx) error {
		if err := tx.ReplaceRefs(refs); err != nil {
			return err
		}
		return tx.SetCommittedIndex(layout.Sum(raw), raw)
	}); err != nil {
		return nil, err
	}
	if p == nil {
		return nil, nil
	}
	var kept []layout.Entry
	for _, e := range ix.Entries {
		if p.keep(e) {
			kept = append(kept, e)
		}
	}
	next := ix.With(kept)
	newBytes := next.Marshal()
	newRefs, _ := refcount.Recount(next, load)
	rec := journal.Record{Op: p.op, Time: recordTime, OldIndex: layout.Sum(raw), NewIndex: layout.Sum(newBytes)}
	for d, r := range refs {
		if r.Count > 0 && newRefs[d].Count == 0 {
			if _, ok := fileExists(dir, layout.BlobPath(d)); ok {
				rec.Unlink = append(rec.Unlink, d)
			}
		}
	}
	sortDigests(rec.Unlink)
	err = db.Update(func(tx *journal.Tx) error {
		if err := tx.AddPending(&rec, newBytes); err != nil {
			return err
		}
		return tx.ReplaceRefs(newRefs)
	})
	return newBytes, err
}

func fileExists(dir, rel string) (os.FileInfo, bool) {
	fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(rel)))
	return fi, err == nil
}

func sortDigests(ds []digest.Digest) {
	for i := 1; i < len(ds); i++ {
		for j := i; j > 0 && ds[j] < ds[j-1]; j-- {
			ds[j], ds[j-1] = ds[j-1], ds[j]
		}
	}
}

// without keeps every entry but the one tagged tag.
func without(tag string) func(layout.Entry) bool {
	return func(e layout.Entry) bool { return e.Name() != tag }
}

// setRef overwrites one stored refcount of the journal in dir.
func setRef(dir string, d digest.Digest, count uint64) error {
	db, err := journal.Open(filepath.Join(dir, filepath.FromSlash(layout.StateDir+"/journal.db")), journal.Options{})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Update(func(tx *journal.Tx) error {
		r, err := tx.GetRef(d)
		if err != nil {
			return err
		}
		r.Count = count
		return tx.PutRef(d, r)
	})
}

// swapChild makes the journal of the layout in dir record child for
// manifest m in place of m's first child (what a flipped bit in the refs
// bucket could do): a release would free the wrong blob.
func swapChild(dir string, m, child v1.Descriptor) error {
	db, err := journal.Open(journalFile(dir), journal.Options{})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Update(func(tx *journal.Tx) error {
		r, err := tx.GetRef(m.Digest)
		if err != nil {
			return err
		}
		if len(r.Children) == 0 {
			return fmt.Errorf("%s: no children recorded", m.Digest)
		}
		r.Children[0] = v1.Descriptor{MediaType: child.MediaType, Digest: child.Digest, Size: child.Size}
		return tx.PutRef(m.Digest, r)
	})
}

// journalFile is the journal of the layout in dir.
func journalFile(dir string) string {
	return filepath.Join(dir, filepath.FromSlash(layout.StateDir+"/journal.db"))
}

// scribble overwrites n bytes at off of the file at p with 0xA5.
func scribble(p string, off int64, n int) error {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt(bytes.Repeat([]byte{0xA5}, n), off)
	return err
}

// freelistPages returns the freelist page ids both meta pages of a bbolt
// file name (4 KiB pages).
func freelistPages(p string) ([]int64, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var out []int64
	for _, off := range []int{0, 4096} {
		// page header (16 bytes), then magic, version, page size, flags,
		// root bucket (16 bytes), freelist page id.
		out = append(out, int64(binary.LittleEndian.Uint64(b[off+16+32:])))
	}
	return out, nil
}

// scribbleFreelist scribbles on the freelist pages of the journal in dir:
// it no longer opens read-write, but a read-only open still reads it.
func scribbleFreelist(dir string) error { return scribbleFreelistOf(journalFile(dir)) }

func scribbleFreelistOf(p string) error {
	pages, err := freelistPages(p)
	if err != nil {
		return err
	}
	for _, pg := range pages {
		if err := scribble(p, pg*4096, 4096); err != nil {
			return err
		}
	}
	return nil
}

// freeLivePage adds the root page of the newest meta's tree to that meta's
// freelist page (4 KiB pages): the file still opens, read-only or not, but
// a page is both in use and free, which bbolt's tx.Check reports.
func freeLivePage(p string) error {
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	// Meta: a 16-byte page header, then magic, version, page size, flags
	// (u32 each), root bucket page and sequence, freelist page, high-water
	// mark and txid (u64 each).
	meta := 0
	if le.Uint64(b[4096+16+48:]) > le.Uint64(b[16+48:]) {
		meta = 4096
	}
	root, fl := le.Uint64(b[meta+16+16:]), le.Uint64(b[meta+16+32:])
	page := b[fl*4096 : (fl+1)*4096]
	if flags := le.Uint16(page[8:]); flags != 0x10 {
		return fmt.Errorf("page %d is not a freelist page (flags %#x)", fl, flags)
	}
	count := int(le.Uint16(page[10:]))
	ids := []uint64{root}
	for i := 0; i < count; i++ {
		ids = append(ids, le.Uint64(page[16+8*i:]))
	}
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && ids[j] < ids[j-1]; j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
	le.PutUint16(page[10:], uint16(len(ids)))
	for i, id := range ids {
		le.PutUint64(page[16+8*i:], id)
	}
	return os.WriteFile(p, b, 0o644)
}

// mutate rewrites a blob file of the layout in dir with fn.
func mutate(dir string, d v1.Descriptor, fn func([]byte) []byte) error {
	c, err := readFile(dir, layout.BlobPath(d.Digest))
	if err != nil {
		return err
	}
	return writeFile(dir, layout.BlobPath(d.Digest), fn(bytes.Clone(c)))
}

func remove(dir, rel string) error { return os.Remove(filepath.Join(dir, filepath.FromSlash(rel))) }

func symlink(dir, rel, target string) error {
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.Symlink(target, p)
}

// steps runs fns in order.
func steps(fns ...func(dir string) error) func(string) error {
	return func(dir string) error {
		for _, fn := range fns {
			if err := fn(dir); err != nil {
				return err
			}
		}
		return nil
	}
}

// The steps below are the usual changes of a case, for steps.

// removed removes the file rel of the layout.
func removed(rel string) func(dir string) error {
	return func(dir string) error { return remove(dir, rel) }
}

// written writes content to the file rel of the layout.
func written(rel string, content []byte) func(dir string) error {
	return func(dir string) error { return writeFile(dir, rel, content) }
}

// symlinked makes rel a symlink to target.
func symlinked(rel, target string) func(dir string) error {
	return func(dir string) error { return symlink(dir, rel, target) }
}

// mutated rewrites d's blob file with fn.
func mutated(d v1.Descriptor, fn func([]byte) []byte) func(dir string) error {
	return func(dir string) error { return mutate(dir, d, fn) }
}

// flipBit flips a bit of the first byte of a blob, keeping its size.
func flipBit(c []byte) []byte { c[0] ^= 0x20; return c }

// tornIndex cuts index.json to cut(its size) bytes.
func tornIndex(cut func(size int) int) func(dir string) error {
	return func(dir string) error {
		raw, err := readFile(dir, layout.IndexFile)
		if err != nil {
			return err
		}
		return writeFile(dir, layout.IndexFile, raw[:cut(len(raw))])
	}
}

// scribbleMetas scribbles on both bbolt meta pages of the journal in dir.
func scribbleMetas(dir string) error {
	if err := scribble(journalFile(dir), 16, 64); err != nil {
		return err
	}
	return scribble(journalFile(dir), 4096+16, 64)
}

// deleteApp1 is a delete of app:1, journaled and not finished.
var deleteApp1 = pending{op: "delete app:1", keep: without("app:1")}

// pendingDelete adopts the layout in dir with deleteApp1 pending: a crash
// right after its journal commit.
func pendingDelete(dir string) error {
	_, err := adopt(dir, &deleteApp1)
	return err
}

// deleteIndexWritten adopts the layout in dir with deleteApp1 pending and
// writes its new index.json: a crash before its unlinks.
func deleteIndexWritten(dir string) error {
	nb, err := adopt(dir, &deleteApp1)
	if err != nil {
		return err
	}
	return writeFile(dir, layout.IndexFile, nb)
}

// toolLayerSize writes the base layout with tool:latest replaced by
// manifest name, whose one layer descriptor says the size size(actual
// size) of the tool layer.
func toolLayerSize(name string, size func(int64) int64) func(dir string) error {
	return func(dir string) error {
		lb := newBase()
		delete(lb.blobs, lb.named["tool"].Digest)
		delete(lb.blobs, lb.named["tool-config"].Digest)
		tl := lb.named["tool-layer"]
		tl.Size = size(tl.Size)
		m := lb.manifest(name, []v1.Descriptor{tl})
		for i, e := range lb.entries {
			if e.Annotations[v1.AnnotationRefName] == "tool:latest" {
				m.Annotations = e.Annotations
				lb.entries[i] = m
			}
		}
		return lb.write(dir)
	}
}

// Cases lists the corpus.
func Cases() []Case {
	b := newBase()
	n := b.named
	writeBase := func(dir string) error { return newBase().write(dir) }
	adopted := func(dir string) error { _, err := adopt(dir, nil); return err }
	healthy := steps(writeBase, adopted)
	drop := RepairFlags{DropBroken: true}
	canary := "../../../canary" // from blobs/<alg>/: next to the layout directory
	// tagApp2Latest: another tool tags app:2 as app:latest.
	tagApp2Latest := func(dir string) error {
		entries := append(append([]v1.Descriptor(nil), b.entries...), n["app2"])
		entries[len(entries)-1].Annotations = map[string]string{v1.AnnotationRefName: "app:latest"}
		return writeFile(dir, layout.IndexFile, indexBytes(entries))
	}
	blob := func(name string) string { return layout.BlobPath(n[name].Digest) }

	return []Case{
		{Name: "clean", Spec: Spec{Description: "a healthy adopted layout: nothing to report or repair (a foreign layer with URLs is not on disk, and need not be)"},
			Build: healthy},
		{Name: "journal-missing", Spec: Spec{Description: "a layout another tool wrote: no journal; repair adopts it"},
			Build: writeBase},
		{Name: "journal-empty", Spec: Spec{Description: "the journal is a 0-byte file (a crash right after it was created): repair initializes it and counts"},
			Build: steps(healthy, func(dir string) error { return os.Truncate(journalFile(dir), 0) })},
		{Name: "journal-truncated", Spec: Spec{Description: "the journal lost its tail: refused as corrupt, kept aside, rebuilt from the layout"},
			Build: steps(healthy, func(dir string) error { return os.Truncate(journalFile(dir), 12288) })},
		{Name: "journal-bad-meta", Spec: Spec{Description: "both bbolt meta pages scribbled on: nothing can be salvaged; kept aside and rebuilt"},
			Build: steps(healthy, scribbleMetas)},
		{Name: "journal-garbage", Spec: Spec{Description: "the journal file holds no database at all"},
			Build: steps(healthy, func(dir string) error {
				return os.WriteFile(journalFile(dir), bytes.Repeat([]byte("not a bbolt database "), 500), 0o644)
			})},
		{Name: "journal-page-freed-in-use", Spec: Spec{Description: "the journal opens, but its freelist also lists a page in use (the next write could overwrite live data): bbolt's consistency check finds it; repair keeps the journal aside and rebuilds it"},
			Build: steps(healthy, func(dir string) error { return freeLivePage(journalFile(dir)) })},
		{Name: "journal-bad-freelist-pending-torn-index", Spec: Spec{Description: "a delete was journaled, index.json was then torn, and the journal's freelist pages are scribbled on (it cannot be opened read-write): the record is salvaged read-only and replayed first, then the journal is rebuilt and the blobs the delete freed are removed as orphans"},
			Build: steps(writeBase, pendingDelete, tornIndex(func(int) int { return 40 }), scribbleFreelist)},
		{Name: "journal-bad-freelist-pending-roll-forward", Spec: Spec{Description: "a delete crashed after index.json was replaced, and the journal's freelist is scribbled on: the salvaged record needs nothing written; the blobs it freed are removed as orphans once the journal is rebuilt"},
			Build: steps(writeBase, deleteIndexWritten, scribbleFreelist)},
		{Name: "journal-bad-freelist-pending-roll-back", Spec: Spec{Description: "a delete was journaled, then another tool rewrote index.json (tagging app:2 as app:latest), and the journal's freelist is scribbled on: the salvaged record is dropped, nothing it planned to unlink is removed while the index on disk references it"},
			Build: steps(writeBase, pendingDelete, tagApp2Latest, scribbleFreelist)},
		{Name: "index-missing-journal-aside", Spec: Spec{Description: "an earlier open found the journal corrupt, kept it aside and made a new one, then failed: index.json is missing; repair restores it from the copy in the journal kept aside"},
			Build: steps(healthy, func(dir string) error {
				aside := journalFile(dir) + ".corrupt-1704067200000000000"
				if err := os.Rename(journalFile(dir), aside); err != nil {
					return err
				}
				if err := scribbleFreelistOf(aside); err != nil {
					return err
				}
				db, err := journal.Open(journalFile(dir), journal.Options{})
				if err != nil {
					return err
				}
				if err := db.Close(); err != nil {
					return err
				}
				return remove(dir, layout.IndexFile)
			})},
		{Name: "journal-bad-meta-index-missing", Spec: Spec{Description: "the journal's meta pages and index.json are both gone: nothing to restore index.json from; reported, never replaced by an empty index, nothing deleted"},
			Build: steps(healthy, scribbleMetas, removed(layout.IndexFile))},
		{Name: "pending-roll-forward", Spec: Spec{Description: "a delete of app:1 crashed after index.json was replaced: recovery unlinks what it freed"},
			Build: steps(writeBase, deleteIndexWritten)},
		{Name: "pending-replay", Spec: Spec{Description: "a delete of app:1 crashed right after its journal commit: recovery writes its new index, then unlinks"},
			Build: steps(writeBase, pendingDelete)},
		{Name: "pending-torn-index", Spec: Spec{Description: "a delete was journaled and index.json is torn (another tool wrote it in place): the torn file is quarantined and the record replayed"},
			Build: steps(writeBase, pendingDelete, tornIndex(func(size int) int { return size / 2 }))},
		{Name: "index-missing", Spec: Spec{Description: "index.json deleted: restored from the journal's copy of the last committed index"},
			Build: steps(healthy, removed(layout.IndexFile))},
		{Name: "blobs-elsewhere", Spec: Spec{Description: "the blobs live in a shared blob directory fsck is not given (skopeo --dest-shared-blob-dir; here blobs/ is missing, git keeps no empty directory): one blobs-elsewhere problem, first, in place of a dangling one per blob; the repair, even with --drop-broken, is refused and changes nothing", Repair: RepairFlags{DropBroken: true, Refused: true}},
			Build: steps(writeBase, func(dir string) error { return os.RemoveAll(filepath.Join(dir, layout.BlobsDir)) })},
		{Name: "index-missing-no-journal", Spec: Spec{Description: "index.json deleted in a layout with no journal: nothing to restore it from; reported, never replaced by an empty index, no blob deleted"},
			Build: steps(writeBase, removed(layout.IndexFile))},
		{Name: "index-garbage", Spec: Spec{Description: "index.json holds garbage: moved to quarantine, restored from the journal"},
			Build: steps(healthy, written(layout.IndexFile, []byte("\x00\x00\x00 garbage {")))},
		{Name: "index-empty", Spec: Spec{Description: "index.json is empty (in-place rewrite cut by a crash): quarantined, restored"},
			Build: steps(healthy, written(layout.IndexFile, nil))},
		{Name: "index-symlink", Spec: Spec{Description: "index.json is a symlink to a file outside the layout: never followed; the link is quarantined, index.json restored"},
			Build: steps(healthy, removed(layout.IndexFile), symlinked(layout.IndexFile, "../canary"))},
		{Name: "index-symlink-inside", Spec: Spec{Description: "index.json is a symlink to multi:1's index blob, inside the layout: never followed (it would read as a valid index.json); the link is quarantined, index.json restored"},
			Build: steps(healthy, removed(layout.IndexFile), symlinked(layout.IndexFile, blob("multi")))},
		{Name: "named-pipes", Spec: Spec{Description: "index.json and tool:latest's layer are named pipes (made by the test): never opened (an open would wait for a writer forever); the pipes are quarantined, index.json restored; tool:latest dropped", Repair: drop,
			Fifos: []string{layout.IndexFile, blob("tool-layer")}},
			Build: steps(healthy, removed(layout.IndexFile), removed(blob("tool-layer")))},
		{Name: "index-huge-sparse", Spec: Spec{Description: "index.json is a 2 GiB sparse file: never read (over the size limit), quarantined by a rename, restored", SparseIndex: 2 << 30},
			Build: healthy},
		{Name: "index-invalid-entries", Spec: Spec{Description: "another tool added entries with a path-traversal digest, a malformed digest, an unknown algorithm and a negative size: reported; the store refuses to open the layout", Repair: RepairFlags{}},
			Build: steps(healthy, invalidEntries)},
		{Name: "index-invalid-entries-drop", Spec: Spec{Description: "as index-invalid-entries, repaired with --drop-broken: the entries are removed in a journaled transaction, a copy of the old index.json is kept", Repair: drop},
			Build: steps(healthy, invalidEntries)},
		{Name: "external-change", Spec: Spec{Description: "another tool tagged app:2 as app:latest after the last transaction: recount"},
			Build: steps(healthy, tagApp2Latest)},
		{Name: "refcount", Spec: Spec{Description: "a stored reference count is wrong: recounted"},
			Build: steps(healthy, func(dir string) error { return setRef(dir, n["shared"].Digest, 9) })},
		{Name: "refcount-children", Spec: Spec{Description: "the journal's record of a manifest's children is wrong (another live blob in place of its config): reported; repaired by a recount, so that deleting the image frees its own config and never the other blob"},
			Build: steps(healthy, func(dir string) error { return swapChild(dir, n["app2"], n["tool-layer"]) })},
		{Name: "temp-files", Spec: Spec{Description: "a renameio temp file in the root, ingest temp files of two owners that are gone (one left its owner file, unlocked; the other none): removed, with the owner file"},
			Build: steps(healthy,
				written(".index.json3141592", []byte(`{"schemaVersion":2,"manif`)),
				written(".ocistore/owners/5eed5eed5eed5eed5eed5eed5eed5eed", nil),
				written(".ocistore/ingest/5eed5eed5eed5eed5eed5eed5eed5eed-x1", []byte("partial layer")),
				written(".ocistore/ingest/deadbeefdeadbeefdeadbeefdeadbeef-x2", []byte("another partial layer")))},
		{Name: "orphans", Spec: Spec{Description: "blobs nothing references (one under sha512): removed by a journaled GC"},
			Build: steps(healthy, orphans)},
		{Name: "orphans-kept", Spec: Spec{Description: "as orphans, with --keep-orphans: nothing removed, the orphans are left and reported", Repair: RepairFlags{KeepOrphans: true}},
			Build: steps(healthy, orphans)},
		{Name: "dangling-layer", Spec: Spec{Description: "a layer of app:2 is missing: app:2 is reported broken and kept without --drop-broken"},
			Build: steps(healthy, removed(blob("app2-layer")))},
		{Name: "dangling-layer-drop", Spec: Spec{Description: "as dangling-layer, with --drop-broken: app:2 leaves index.json in one transaction; its own blobs are freed, the base layer app:1 shares stays", Repair: drop},
			Build: steps(healthy, removed(blob("app2-layer")))},
		{Name: "dangling-manifest-drop", Spec: Spec{Description: "the manifest of arm64 inside multi:1 is missing: multi:1 is dropped; what only it used is freed (the arm64 blobs become orphans: their manifest is gone)", Repair: drop},
			Build: steps(healthy, removed(blob("arm64")))},
		{Name: "size-mismatch-truncated", Spec: Spec{Description: "a layer of app:1 lost its last bytes: its content no longer matches its digest, so it is quarantined; app:1 is dropped", Repair: drop},
			Build: steps(healthy, mutated(n["app1-layer"], func(c []byte) []byte { return c[:len(c)-3] }))},
		{Name: "size-lie", Spec: Spec{Description: "the manifest of tool:latest says its layer is one byte longer than it is: the layer's bytes match its digest, so it stays where it is; tool:latest is broken and dropped", Repair: drop},
			Build: steps(toolLayerSize("tool-lie", func(n int64) int64 { return n + 1 }), adopted)},
		{Name: "digest-mismatch-layer", Spec: Spec{Description: "one bit of tool:latest's layer flipped (same size: only the deep check sees it): quarantined; tool:latest reported broken"},
			Build: steps(healthy, mutated(n["tool-layer"], flipBit))},
		{Name: "digest-mismatch-manifest", Spec: Spec{Description: "app:2's manifest changed (still valid JSON, same size): quarantined; app:2 dropped; its own blobs become orphans and go", Repair: drop},
			Build: steps(healthy, mutated(n["app2"], func(c []byte) []byte {
				return bytes.Replace(c, []byte(`"schemaVersion":2`), []byte(`"schemaVersion":3`), 1)
			}))},
		{Name: "digest-mismatch-orphan", Spec: Spec{Description: "an unreferenced blob whose bytes do not match its name: quarantined, not deleted"},
			Build: steps(healthy, written(layout.BlobPath(digest.FromString("what it should be")), []byte("what it is")))},
		{Name: "blob-symlink", Spec: Spec{Description: "tool:latest's layer is a symlink to a file outside the layout, and an unreferenced blob name is another: never followed; both links are moved to quarantine; tool:latest reported broken"},
			Build: steps(healthy, removed(blob("tool-layer")), symlinked(blob("tool-layer"), canary),
				symlinked(layout.BlobPath(digest.FromString("a link")), canary))},
		{Name: "blob-symlink-inside", Spec: Spec{Description: "symlinks that stay inside the layout: tool:latest's layer links to app:1's layer, an unreferenced blob name links to index.json: never followed; both links (not what they point at) are moved to quarantine; tool:latest dropped, app:1 and index.json untouched", Repair: drop},
			Build: steps(healthy, removed(blob("tool-layer")), symlinked(blob("tool-layer"), n["app1-layer"].Digest.Encoded()),
				symlinked(layout.BlobPath(digest.FromString("index.json")), "../../"+layout.IndexFile))},
		{Name: "blob-directory", Spec: Spec{Description: "a directory where app:1's layer should be: moved to quarantine whole; app:1 dropped", Repair: drop},
			Build: steps(healthy, removed(blob("app1-layer")),
				written(blob("app1-layer")+"/inside", []byte("a file in a directory named like a blob\n")))},
		{Name: "hostile-manifest", Spec: Spec{Description: "a tagged manifest whose layers have a path-traversal digest and an unknown algorithm: reported naming it; dropped; nothing outside the layout is touched", Repair: drop},
			Build: steps(func(dir string) error {
				lb := newBase()
				raw := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":%s,"layers":[{"mediaType":%q,"digest":"sha256:../../../canary","size":7},{"mediaType":%q,"digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":0}]}`,
					v1.MediaTypeImageManifest, mustJSON(lb.named["tool-config"]), v1.MediaTypeImageLayer, v1.MediaTypeImageLayer))
				lb.tag(lb.blob("evil", raw, v1.MediaTypeImageManifest), "evil:1")
				return lb.write(dir)
			}, adopted)},
		{Name: "nested-too-deep", Spec: Spec{Description: "an entry is an index nested 34 deep (the limit is 32): reported; dropped with the whole chain", Repair: drop},
			Build: steps(func(dir string) error {
				lb := newBase()
				d := lb.named["tool"]
				for i := 0; i < 34; i++ {
					d = lb.index(fmt.Sprintf("nest%d", i), d)
				}
				lb.tag(d, "deep:1")
				return lb.write(dir)
			}, adopted)},
		{Name: "manifest-cycle", Spec: Spec{Description: "an index that lists itself (its file does not hash to its name, as a cycle must): the walk stops, the blob is quarantined, the entry dropped", Repair: drop},
			Build: steps(func(dir string) error {
				lb := newBase()
				self := digest.FromString("a cycle")
				raw := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
					v1.MediaTypeImageIndex, v1.MediaTypeImageIndex, self, 0))
				// The size must be the file's own: pad the number to fit.
				size := len(raw)
				for {
					raw = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
						v1.MediaTypeImageIndex, v1.MediaTypeImageIndex, self, size))
					if len(raw) == size {
						break
					}
					size = len(raw)
				}
				if err := lb.write(dir); err != nil {
					return err
				}
				if err := writeFile(dir, layout.BlobPath(self), raw); err != nil {
					return err
				}
				d := v1.Descriptor{MediaType: v1.MediaTypeImageIndex, Digest: self, Size: int64(len(raw)),
					Annotations: map[string]string{v1.AnnotationRefName: "cycle:1"}}
				return writeFile(dir, layout.IndexFile, indexBytes(append(lb.entries, d)))
			}, adopted)},
		{Name: "size-huge-lie", Spec: Spec{Description: "a descriptor says its layer is 2^62 bytes: a size mismatch, nothing allocated or read past the file; dropped", Repair: drop},
			Build: steps(toolLayerSize("tool-huge", func(int64) int64 { return 1 << 62 }), adopted)},
		{Name: "state-dir-symlinks", Spec: Spec{Description: ".ocistore/ingest is a symlink to blobs/sha256 and .ocistore/quarantine one to a file outside the layout, and a layer's bit flipped: neither is looked into or followed; repair moves both links aside, then quarantines the layer in a new quarantine folder"},
			Build: steps(healthy, symlinked(".ocistore/ingest", "../blobs/sha256"), symlinked(".ocistore/quarantine", "../../canary"),
				mutated(n["tool-layer"], flipBit))},
		{Name: "unknown-files", Spec: Spec{Description: "files under blobs/ not named by a digest (an unknown algorithm, a stray name): reported, never touched"},
			Build: steps(healthy, written("blobs/md5/d41d8cd98f00b204e9800998ecf8427e", nil), written("blobs/sha256/README", []byte("not a blob\n")))},
		{Name: "oci-layout-missing", Spec: Spec{Description: "oci-layout deleted: written again"},
			Build: steps(healthy, removed(layout.LayoutFile))},
		{Name: "oci-layout-symlink", Spec: Spec{Description: "oci-layout is a symlink to a file outside the layout: never followed; the link is moved to quarantine, oci-layout written again"},
			Build: steps(healthy, removed(layout.LayoutFile), symlinked(layout.LayoutFile, "../canary"))},
		{Name: "oci-layout-garbage", Spec: Spec{Description: "oci-layout does not parse: moved to quarantine, written again"},
			Build: steps(healthy, written(layout.LayoutFile, []byte("{oops")))},
	}
}

// invalidEntries appends hostile entries to index.json, as another tool
// could write them.
func invalidEntries(dir string) error {
	raw, err := readFile(dir, layout.IndexFile)
	if err != nil {
		return err
	}
	evil := []string{
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../canary","size":7,"annotations":{"org.opencontainers.image.ref.name":"traversal"}}`,
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1234","size":7,"annotations":{"org.opencontainers.image.ref.name":"short"}}`,
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":0,"annotations":{"org.opencontainers.image.ref.name":"md5"}}`,
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + newBase().named["tool"].Digest.String() + `","size":-5,"annotations":{"org.opencontainers.image.ref.name":"negative"}}`,
	}
	s := strings.TrimSpace(string(raw))
	s = strings.Replace(s, `"manifests":[`, `"manifests":[`+strings.Join(evil, ",")+",", 1)
	return writeFile(dir, layout.IndexFile, []byte(s+"\n"))
}

// orphans adds unreferenced blobs.
func orphans(dir string) error {
	for _, c := range []string{"orphan one\n", "orphan two\n"} {
		if err := writeFile(dir, layout.BlobPath(digest.FromString(c)), []byte(c)); err != nil {
			return err
		}
	}
	c := []byte("orphan sha512\n")
	return writeFile(dir, layout.BlobPath(digest.SHA512.FromBytes(c)), c)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
