package fuzz

// FuzzRecoverRecord: recovery over an arbitrary pending journal record.
//
// A small fixture layout (images sharing layers, a nested index, an
// untagged entry, and an image that was written but never tagged) is built
// once through the store API. Each input then constructs one journal
// record on a copy of it: which blobs it unlinks (any of the layout's, and
// random digests), its old and new index digests (the real current one,
// the digest of a candidate new index.json, a random one), the index bytes
// stored with it (the candidate matching the new digest, another one, or
// garbage), whether the reference counts were changed with it as a real
// transaction does, and whether index.json was then damaged (removed,
// truncated, emptied, replaced by a candidate). The record is inserted with
// journal.DB.Update and Tx.AddPending, and store.Open runs recovery.
//
// Required, whatever the record says:
//   - recovery terminates without panicking;
//   - no blob reachable from the index.json it leaves (walked here from the
//     files, independently of the engine's graph code) was unlinked;
//   - when it succeeds, a second recovery (Store.Recover) changes no file;
//   - when it fails, no file was removed, and an index.json that parsed
//     before still parses (the layout files are the truth: a failed
//     recovery must not destroy them).
//
// Defects D1, D2, D2b and D3 (see defects_test.go), found here and
// fixed, are checked strictly, also for a journal that contradicts itself
// (stored bytes that are not an index, refcounts not changed with the
// record): the layout files are the truth, whatever the journal says.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/refcount"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// rfFixture is the starting layout of every input.
type rfFixture struct {
	files   map[string][]byte // every file, slash paths relative to the root, the journal included
	blobs   []digest.Digest   // the blob files, sorted
	current []byte            // index.json
	cands   [][]byte          // candidate index.json contents (fixed ones; the input adds its own)
}

var (
	rfOnce sync.Once
	rfFix  *rfFixture
	rfErr  error
)

// Record flag bits.
const (
	rfApplyRefs   = 1 << iota // change the refcounts with the record, as a real transaction does
	rfUnlinkFreed             // unlink what the refcount change frees (a real transaction's blob set)
	rfRandomBlob              // unlink a random sha256 digest too
	rfRandom512               // unlink a random sha512 digest too
	rfTwoRecords              // add a second record after the first (same fields, old = first's new)
)

// Damage to index.json after the record is committed.
const (
	rfDamageNone = iota
	rfDamageRemove
	rfDamageTruncate
	rfDamageEmpty
	rfDamageReplace // by a candidate
	rfDamageKinds
)

// rfBuild writes the fixture layout through the store API and reads it back.
func rfBuild(tb testing.TB) (*rfFixture, error) {
	dir, err := os.MkdirTemp("", "ocistore-fuzz-fixture-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		return nil, err
	}
	b := testutil.NewBuilder(tb, s, 42)
	base := b.Random(300)
	img1 := b.Manifest([]v1.Descriptor{base}, 1)
	img2 := b.Manifest([]v1.Descriptor{base}, 2)
	img3 := b.Manifest([]v1.Descriptor{base, b.Random(100)}, 1)
	multi := b.Index(img1, img2)
	b.Tag(img1, "app:1")
	b.Tag(img2, "app:2")
	b.Tag(multi, "multi")
	b.Tag(img3, "tmp")
	if err := s.Untag(ctx, "tmp"); err != nil { // img3 stays as an untagged entry
		return nil, err
	}
	orphan := b.Manifest([]v1.Descriptor{base}, 1) // written, never tagged: refcount 0
	if err := s.Close(); err != nil {
		return nil, err
	}

	fx := &rfFixture{files: map[string][]byte{}}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		c, err := os.ReadFile(p)
		fx.files[filepath.ToSlash(rel)] = c
		return err
	})
	if err != nil {
		return nil, err
	}
	for p := range fx.files {
		if parts := strings.Split(p, "/"); len(parts) == 3 && parts[0] == layout.BlobsDir {
			if d, ok := layout.ParseBlobPath(parts[1], parts[2]); ok {
				fx.blobs = append(fx.blobs, d)
			}
		}
	}
	sort.Slice(fx.blobs, func(i, j int) bool { return fx.blobs[i] < fx.blobs[j] })
	fx.current = fx.files[layout.IndexFile]
	ix, err := layout.ParseIndex(fx.current)
	if err != nil {
		return nil, err
	}
	withOrphan := append(append([]layout.Entry(nil), ix.Entries...), layout.NewEntry(orphan, "orphan"))
	dangling := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromString("not in the layout"), Size: 10}
	fx.cands = [][]byte{
		fx.current,                                 // 0: the index on disk
		ix.With(ix.Entries[1:]).Marshal(),          // 1: one entry removed
		ix.With(ix.Entries[:1]).Marshal(),          // 2: all but one removed
		ix.With(nil).Marshal(),                     // 3: every entry removed
		ix.With(withOrphan).Marshal(),              // 4: an entry added for the never-tagged image
		[]byte(`{"schemaVersion":2,"manifests":[`), // 5: truncated
		[]byte("garbage\x00"),                      // 6: not JSON
		ix.With([]layout.Entry{layout.NewEntry(dangling, "dangling")}).Marshal(), // 7: an entry whose blob is missing
	}
	return fx, nil
}

// rfInput is one decoded fuzz input.
type rfInput struct {
	mask                               uint32
	old, new, stored, damage, flags, c uint8
	extra                              []byte
}

func (in rfInput) String() string {
	return fmt.Sprintf("mask=%#x old=%d new=%d stored=%d damage=%d flags=%#x cand=%d extra=%q",
		in.mask, in.old, in.new, in.stored, in.damage, in.flags, in.c, in.extra)
}

func FuzzRecoverRecord(f *testing.F) {
	// Seeds. old and new pick (modulo 11): candidates 0..7, the input's own
	// bytes (8), a random digest (9), then "" for old, a malformed digest
	// for new (10). stored picks (modulo 10): the bytes matching new (0),
	// else candidate stored-1 (the input's bytes are 9). The minimal cases
	// of the defects found here are in testdata/fuzz/FuzzRecoverRecord/d*.
	f.Add(uint32(0), uint8(0), uint8(1), uint8(0), uint8(rfDamageNone), uint8(rfApplyRefs|rfUnlinkFreed), uint8(0), []byte(nil))   // a real delete, crashed after the journal commit
	f.Add(uint32(0), uint8(0), uint8(3), uint8(0), uint8(rfDamageRemove), uint8(rfApplyRefs|rfUnlinkFreed), uint8(0), []byte(nil)) // delete all, index.json lost
	f.Add(uint32(0), uint8(0), uint8(1), uint8(0), uint8(rfDamageTruncate), uint8(rfApplyRefs|rfUnlinkFreed), uint8(0), []byte(nil))
	f.Add(uint32(0), uint8(0), uint8(1), uint8(0), uint8(rfDamageReplace), uint8(rfApplyRefs|rfUnlinkFreed), uint8(1), []byte(nil)) // crashed after the rename: roll forward
	f.Add(uint32(0), uint8(0), uint8(1), uint8(0), uint8(rfDamageReplace), uint8(rfApplyRefs|rfUnlinkFreed), uint8(2), []byte(nil)) // another tool wrote index.json: roll back
	f.Add(uint32(0xffffffff), uint8(0), uint8(0), uint8(0), uint8(rfDamageNone), uint8(rfRandomBlob), uint8(0), []byte("x"))        // unlink everything, new == current
	f.Add(uint32(0xffffffff), uint8(0), uint8(4), uint8(0), uint8(rfDamageNone), uint8(rfApplyRefs), uint8(0), []byte(nil))         // add the untagged image, unlink everything
	f.Add(uint32(0x1), uint8(0), uint8(9), uint8(0), uint8(rfDamageNone), uint8(0), uint8(0), []byte("no bytes"))                   // new index digest random, nothing stored under it
	f.Add(uint32(0x0f0f), uint8(9), uint8(9), uint8(7), uint8(rfDamageNone), uint8(0), uint8(0), []byte("random"))
	f.Add(uint32(0x3), uint8(10), uint8(10), uint8(1), uint8(rfDamageEmpty), uint8(rfTwoRecords), uint8(0), []byte(nil))
	f.Add(uint32(0x1), uint8(0), uint8(8), uint8(0), uint8(rfDamageNone), uint8(rfApplyRefs|rfUnlinkFreed|rfTwoRecords), uint8(0),
		[]byte(`{"schemaVersion":2,"manifests":[]}`))

	rfOnce.Do(func() { rfFix, rfErr = rfBuild(f) })
	if rfErr != nil {
		f.Fatal(rfErr)
	}
	fx := rfFix

	f.Fuzz(func(t *testing.T, mask uint32, old, new, stored, damage, flags, c uint8, extra []byte) {
		in := rfInput{mask, old, new, stored, damage, flags, c, extra}
		rfRun(t, fx, in)
	})
}

func rfRun(t *testing.T, fx *rfFixture, in rfInput) {
	ctx := context.Background()
	dir := rfTempDir(t)
	for p, c := range fx.files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, c, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	cands := append(append([][]byte(nil), fx.cands...), in.extra)
	n := len(cands)
	pickDigest := func(sel uint8, salt string) digest.Digest {
		switch k := int(sel) % (n + 2); {
		case k < n:
			return digest.FromBytes(cands[k])
		case k == n:
			return digest.FromBytes(append([]byte(salt), in.extra...))
		case salt == "old":
			return "" // allowed: no index was committed before
		}
		return "sha256:not-a-digest" // a record the decoder refuses
	}
	rec := &journal.Record{Op: "fuzz", Time: time.Unix(1700000000, 0).UTC(), OldIndex: pickDigest(in.old, "old"), NewIndex: pickDigest(in.new, "new")}
	// The stored bytes: 0 = the candidate whose digest NewIndex is (nothing
	// when none is), k = candidate k-1.
	var newBytes []byte
	if k := int(in.stored) % (n + 1); k == 0 {
		for _, c := range cands {
			if digest.FromBytes(c) == rec.NewIndex {
				newBytes = c
			}
		}
	} else {
		newBytes = cands[k-1]
	}
	for i, d := range fx.blobs {
		if i < 32 && in.mask&(1<<i) != 0 {
			rec.Unlink = append(rec.Unlink, d)
		}
	}
	if in.flags&rfRandomBlob != 0 {
		rec.Unlink = append(rec.Unlink, digest.FromBytes(in.extra))
	}
	if in.flags&rfRandom512 != 0 {
		rec.Unlink = append(rec.Unlink, digest.SHA512.FromBytes(in.extra))
	}

	// The journal as the input says, and what it knew before recovery.
	refsBefore := map[digest.Digest]uint64{}
	if err := rfCommit(dir, rec, newBytes, in.flags, refsBefore); err != nil {
		// The counter refuses what the store would refuse (a missing blob):
		// then the store would not have committed this record either.
		if err := rfCommit(dir, rec, newBytes, in.flags&^(rfApplyRefs|rfUnlinkFreed), refsBefore); err != nil {
			t.Fatalf("%v: commit the record: %v", in, err)
		}
	}

	ixPath := filepath.Join(dir, layout.IndexFile)
	switch int(in.damage) % rfDamageKinds {
	case rfDamageRemove:
		rfMust(t, os.Remove(ixPath))
	case rfDamageTruncate:
		rfMust(t, os.WriteFile(ixPath, fx.current[:len(fx.current)/2], 0o644))
	case rfDamageEmpty:
		rfMust(t, os.WriteFile(ixPath, nil, 0o644))
	case rfDamageReplace:
		rfMust(t, os.WriteFile(ixPath, cands[int(in.c)%n], 0o644))
	}

	before := testutil.Snapshot(t, dir, layout.StateDir)
	rawBefore, _ := os.ReadFile(ixPath)
	_, parseErrBefore := layout.ParseIndex(rawBefore)

	s, err := store.Open(ctx, dir, &store.Options{LockTimeout: -1})
	after := testutil.Snapshot(t, dir, layout.StateDir)
	rawAfter, _ := os.ReadFile(ixPath)

	// Safety: nothing the index on disk reaches was unlinked (D3).
	for d := range rfReachable(dir, rawAfter) {
		p := layout.BlobPath(d)
		if _, was := before[p]; !was {
			continue
		}
		if _, is := after[p]; !is {
			t.Fatalf("%v: blob %s, reachable from the index.json recovery left, was unlinked (journal refcount before recovery: %d)", in, d, refsBefore[d])
		}
	}

	if err != nil {
		// A failed recovery removes nothing and leaves a valid index valid.
		for p := range before {
			if _, ok := after[p]; !ok {
				t.Fatalf("%v: recovery failed (%v) and removed %s", in, err, p)
			}
		}
		if parseErrBefore == nil {
			if _, perr := layout.ParseIndex(rawAfter); perr != nil {
				// D2, and D2b when the bytes hash to NewIndex.
				t.Fatalf("%v: recovery failed (%v) after replacing a valid index.json with bytes that do not parse (%q)", in, err, rfTrim(rawAfter))
			}
		}
		return
	}
	defer s.Close()

	// Idempotent: a second recovery changes no file.
	if _, err := s.Recover(ctx); err != nil {
		t.Fatalf("%v: second recovery: %v", in, err)
	}
	again := testutil.Snapshot(t, dir, layout.StateDir)
	if !maps.Equal(after, again) {
		t.Fatalf("%v: second recovery changed files", in)
	}
	// And the index it leaves parses.
	if _, perr := layout.ParseIndex(rawAfter); perr != nil {
		t.Fatalf("%v: recovery succeeded but left an index.json that does not parse: %v", in, perr)
	}
}

// rfCommit inserts rec (and, with rfTwoRecords, a second one) into the
// journal of the layout in dir, changing the refcounts with it when the
// flags say so. It fills refs with the stored counts the records leave.
func rfCommit(dir string, rec *journal.Record, newBytes []byte, flags uint8, refs map[digest.Digest]uint64) error {
	db, err := journal.Open(filepath.Join(dir, protocol.JournalFile), journal.Options{LockTimeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	fsys, err := fsio.OpenOS(dir)
	if err != nil {
		return err
	}
	defer fsys.Close()
	unlink := rec.Unlink
	err = db.Update(func(tx *journal.Tx) error {
		r := *rec
		r.Unlink = append([]digest.Digest(nil), unlink...)
		if flags&rfApplyRefs != 0 {
			freed, err := rfApplyDiff(tx, fsys, newBytes)
			if err != nil {
				return err
			}
			if flags&rfUnlinkFreed != 0 {
				r.Unlink = append(r.Unlink, freed...)
			}
		}
		if err := tx.AddPending(&r, newBytes); err != nil {
			return err
		}
		if flags&rfTwoRecords != 0 {
			r2 := r
			r2.OldIndex = r.NewIndex
			if err := tx.AddPending(&r2, newBytes); err != nil {
				return err
			}
		}
		clear(refs)
		return tx.ForEachRef(func(d digest.Digest, ref journal.Ref) error {
			refs[d] = ref.Count
			return nil
		})
	})
	return err
}

// rfApplyDiff changes the refcounts from the committed index to newBytes the
// way a transaction does, and returns the blobs it frees.
func rfApplyDiff(tx *journal.Tx, fsys fsio.FS, newBytes []byte) ([]digest.Digest, error) {
	oldRaw, ok := tx.IndexBytes(tx.IndexDigest())
	if !ok {
		return nil, errors.New("no committed index in the journal")
	}
	oldIx, err := layout.ParseIndex(oldRaw)
	if err != nil {
		return nil, err
	}
	newIx, err := layout.ParseIndex(newBytes)
	if err != nil {
		return nil, err
	}
	count := map[digest.Digest]int{}
	for _, e := range oldIx.Entries {
		count[e.Desc.Digest]++
	}
	var added []v1.Descriptor
	for _, e := range newIx.Entries {
		if count[e.Desc.Digest] > 0 {
			count[e.Desc.Digest]--
			continue
		}
		added = append(added, e.Desc)
	}
	c := &refcount.Counter{T: tx, Load: layout.LoadChildren(fsys), Present: func(d v1.Descriptor) error {
		if _, err := fsys.Lstat(layout.BlobPath(d.Digest)); err != nil {
			return err
		}
		return nil
	}}
	for _, d := range added {
		if err := c.Inc(d); err != nil {
			return nil, err
		}
	}
	for _, e := range oldIx.Entries {
		if count[e.Desc.Digest] > 0 {
			count[e.Desc.Digest]--
			if err := c.Dec(e.Desc); err != nil {
				return nil, err
			}
		}
	}
	var freed []digest.Digest
	for _, d := range c.Freed {
		freed = append(freed, d.Digest)
	}
	return freed, nil
}

// rfReachable walks, from the files of the layout in dir, every blob the
// index.json bytes raw reach: manifests and indexes are followed (roots of
// unknown media type are sniffed, as every tool does), a subject is a weak
// reference and is not. Unparseable bytes reach nothing.
func rfReachable(dir string, raw []byte) map[digest.Digest]bool {
	var ix struct {
		Manifests []v1.Descriptor `json:"manifests"`
	}
	out := map[digest.Digest]bool{}
	if json.Unmarshal(raw, &ix) != nil {
		return out
	}
	manifestTypes := map[string]bool{
		v1.MediaTypeImageManifest: true, v1.MediaTypeImageIndex: true,
		"application/vnd.docker.distribution.manifest.v2+json":      true,
		"application/vnd.docker.distribution.manifest.list.v2+json": true,
		"application/vnd.oci.artifact.manifest.v1+json":             true,
	}
	var walk func(d v1.Descriptor, root bool, depth int)
	walk = func(d v1.Descriptor, root bool, depth int) {
		if d.Digest.Validate() != nil || out[d.Digest] || depth > 64 {
			return
		}
		out[d.Digest] = true
		if !manifestTypes[d.MediaType] && !root {
			return
		}
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(layout.BlobPath(d.Digest))))
		if err != nil {
			return
		}
		kids, err := testutil.Listed(b)
		if err != nil {
			return
		}
		for _, k := range kids {
			walk(k, false, depth+1)
		}
	}
	for _, d := range ix.Manifests {
		walk(d, true, 0)
	}
	return out
}

// rfTempDir is a fresh directory for one input, on tmpfs when the machine
// has /dev/shm: recovery and the journal fsync, and on a disk that costs
// ten times the executions.
func rfTempDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "ocistore-fuzz-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

func rfTrim(b []byte) []byte {
	if len(b) > 64 {
		return append(bytes.Clone(b[:64]), "..."...)
	}
	return b
}

func rfMust(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
