package recovery

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/refcount"
	"github.com/ocistore/ocistore/journal"
)

// Problem kinds reported by Check.
const (
	KindLayoutCorrupt   = "layout-corrupt"   // oci-layout missing or unparseable
	KindIndexMissing    = "index-missing"    // index.json missing
	KindIndexCorrupt    = "index-corrupt"    // index.json unparseable or not an image index
	KindDangling        = "dangling"         // a reachable descriptor has no blob
	KindSizeMismatch    = "size-mismatch"    // a reachable blob's size differs from its descriptor
	KindDigestMismatch  = "digest-mismatch"  // a manifest's bytes do not hash to its digest
	KindManifestCorrupt = "manifest-corrupt" // a reachable manifest does not parse
	KindNotRegular      = "not-regular"      // a blob path is a symlink, directory or device
	KindOrphan          = "orphan"           // a blob nothing reachable uses
	KindUnknownFile     = "unknown-file"     // a file under blobs/ that is not named by a digest
	KindTempFile        = "temp-file"        // a leftover temp file
	KindPending         = "pending"          // an unfinished journal record
	KindJournalMissing  = "journal-missing"  // no journal database (layout not adopted yet)
	KindJournalCorrupt  = "journal-corrupt"  // the journal database fails bbolt's check or cannot be read
	KindExternalChange  = "external-change"  // index.json differs from the last one committed through the journal
	KindRefcount        = "refcount"         // a stored reference count differs from a recount
)

// Problem is one finding of Check.
type Problem struct {
	Kind   string `json:"kind"`
	Digest string `json:"digest,omitempty"`
	Path   string `json:"path,omitempty"`
	Detail string `json:"detail"`
}

func (p Problem) String() string {
	s := p.Kind
	if p.Digest != "" {
		s += " " + p.Digest
	}
	if p.Path != "" {
		s += " (" + p.Path + ")"
	}
	return s + ": " + p.Detail
}

// Report is the result of Check.
type Report struct {
	Images   int       `json:"images"`   // entries of index.json
	Blobs    int       `json:"blobs"`    // blobs reachable from index.json
	Bytes    int64     `json:"bytes"`    // their total size
	Problems []Problem `json:"problems"` // empty when the layout is consistent
	// Deep describes the hashing of a deep check; nil for a quick one.
	Deep *DeepStats `json:"deep,omitempty"`
}

// OK reports whether no problem was found.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

func (r *Report) add(kind string, d digest.Digest, path, format string, args ...any) {
	r.Problems = append(r.Problems, Problem{Kind: kind, Digest: string(d), Path: path, Detail: fmt.Sprintf(format, args...)})
}

// Check verifies the invariants of DESIGN.md §5 without reading blob contents
// (manifests are read, since the graph runs through them). db may be nil when
// the layout has no journal. It changes nothing.
func Check(ctx context.Context, fsys fsio.FS, db *journal.DB) (*Report, error) {
	return CheckWith(ctx, fsys, db, nil)
}

// CheckWith is Check with options: with o.Deep it also re-hashes every blob
// file (see CheckOptions). A nil o is the quick check.
func CheckWith(ctx context.Context, fsys fsio.FS, db *journal.DB, o *CheckOptions) (*Report, error) {
	if o == nil {
		o = &CheckOptions{}
	}
	r := &Report{Problems: []Problem{}}
	if b, err := fsio.ReadFile(fsys, layout.LayoutFile, 4096); err != nil {
		r.add(KindLayoutCorrupt, "", layout.LayoutFile, "%v", err)
	} else if err := layout.CheckLayoutFile(b); err != nil {
		r.add(KindLayoutCorrupt, "", layout.LayoutFile, "%v", err)
	}
	raw, ix, err := ReadIndex(fsys)
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		r.add(KindIndexMissing, "", layout.IndexFile, "index.json does not exist")
	case err != nil:
		r.add(KindIndexCorrupt, "", layout.IndexFile, "%v", err)
	}

	// The closure, walked once; children are kept for the recount.
	reach := map[digest.Digest]bool{}
	sizes := map[digest.Digest]int64{} // size of the first descriptor of each blob
	kids := map[digest.Digest]layout.Children{}
	bad := map[digest.Digest]error{}
	ok := map[digest.Digest]bool{} // on disk with the first descriptor's size
	var walk func(d v1.Descriptor, depth int) error
	// expand reads a manifest or index and walks its children.
	expand := func(d v1.Descriptor, depth int, p string) error {
		if depth > layout.MaxDepth {
			r.add(KindManifestCorrupt, d.Digest, p, "nested deeper than %d", layout.MaxDepth)
			return nil
		}
		c, err := layout.LoadChildren(fsys)(d)
		if err != nil && layout.Sniffed(d, err) {
			bad[d.Digest] = err // the recount sees the same leaf
			return nil
		}
		if err != nil {
			bad[d.Digest] = err
			kind := KindManifestCorrupt
			if errors.Is(err, errdef.ErrDigestMismatch) {
				kind = KindDigestMismatch
			}
			r.add(kind, d.Digest, p, "%v", err)
			return nil
		}
		kids[d.Digest] = c
		for _, k := range c.Refs {
			if err := walk(k, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	walk = func(d v1.Descriptor, depth int) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if reach[d.Digest] {
			// Another descriptor of the same blob may say another size.
			if d.Size != sizes[d.Digest] {
				p := layout.BlobPath(d.Digest)
				if fi, err := fsys.Lstat(p); err == nil && fi.Size() != d.Size {
					r.add(KindSizeMismatch, d.Digest, p, "%d bytes on disk, a descriptor says %d", fi.Size(), d.Size)
				}
			}
			// First met under a leaf media type, now as a manifest: its
			// children are reachable too (the refcounts expand it as well).
			_, done := kids[d.Digest]
			_, failed := bad[d.Digest]
			if ok[d.Digest] && !done && !failed && layout.IsManifest(d.MediaType) {
				return expand(d, depth, layout.BlobPath(d.Digest))
			}
			return nil
		}
		reach[d.Digest] = true
		sizes[d.Digest] = d.Size
		p := layout.BlobPath(d.Digest)
		fi, err := fsys.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if len(d.URLs) == 0 {
				r.add(KindDangling, d.Digest, p, "referenced (%s, %d bytes) but missing", d.MediaType, d.Size)
			}
			return nil
		case err != nil:
			r.add(KindNotRegular, d.Digest, p, "%v", err)
			return nil
		case !fi.Mode().IsRegular():
			r.add(KindNotRegular, d.Digest, p, "is %s, not a regular file", typeName(fi.Mode().Type()))
			return nil
		case fi.Size() != d.Size:
			r.add(KindSizeMismatch, d.Digest, p, "%d bytes on disk, descriptor says %d", fi.Size(), d.Size)
			return nil
		}
		r.Blobs++
		r.Bytes += d.Size
		ok[d.Digest] = true
		if !layout.Parsed(d, depth == 0) {
			return nil
		}
		return expand(d, depth, p)
	}
	if ix != nil {
		r.Images = len(ix.Entries)
		for _, e := range ix.Entries {
			if err := walk(e.Desc, 0); err != nil {
				return nil, err
			}
		}
	}
	files, err := checkBlobFiles(fsys, reach, r, ix != nil, o.Deep)
	if err != nil {
		return nil, err
	}
	if o.Deep {
		known := map[digest.Digest]bool{}
		for _, p := range r.Problems {
			if p.Kind == KindDigestMismatch {
				known[digest.Digest(p.Digest)] = true
			}
		}
		if err := deepCheck(ctx, fsys, files, known, o, r); err != nil {
			return nil, err
		}
	}
	temps, err := Temps(fsys)
	if err != nil {
		return nil, err
	}
	for _, t := range temps {
		r.add(KindTempFile, "", t, "leftover temp file")
	}
	if db == nil {
		r.add(KindJournalMissing, "", "", "no journal: the layout was not adopted by ocistore yet")
		return r, nil
	}
	checkJournal(db, ix, raw, kids, bad, r)
	return r, nil
}

// checkBlobFiles lists blobs/, reporting orphans (when orphans is true) and
// files not named by a digest. With sizes, it returns the regular files
// named by a digest, with their sizes, for hashing.
func checkBlobFiles(fsys fsio.FS, reach map[digest.Digest]bool, r *Report, orphans, sizes bool) ([]blobFile, error) {
	algs, err := fsys.ReadDir(layout.BlobsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", layout.BlobsDir, err)
	}
	var out []blobFile
	for _, a := range algs {
		dir := layout.BlobsDir + "/" + a.Name()
		if !a.IsDir() {
			r.add(KindUnknownFile, "", dir, "not an algorithm directory")
			continue
		}
		files, err := fsys.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", dir, err)
		}
		for _, f := range files {
			p := dir + "/" + f.Name()
			d, ok := layout.ParseBlobPath(a.Name(), f.Name())
			if !ok {
				r.add(KindUnknownFile, "", p, "not named by a valid digest")
				continue
			}
			if !f.Type().IsRegular() {
				// A reachable one was reported by the walk. GC leaves
				// these alone; repair moves them to quarantine.
				if orphans && !reach[d] {
					r.add(KindNotRegular, d, p, "is %s, not a regular file (and nothing reaches it)", typeName(f.Type()))
				}
				continue
			}
			if orphans && !reach[d] {
				r.add(KindOrphan, d, p, "no index.json entry reaches this blob")
			}
			if !sizes {
				continue
			}
			fi, err := f.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile
			}
			if err != nil {
				return nil, fmt.Errorf("stat %s: %w", p, err)
			}
			out = append(out, blobFile{d: d, path: p, size: fi.Size()})
		}
	}
	return out, nil
}

func checkJournal(db *journal.DB, ix *layout.Index, raw []byte, kids map[digest.Digest]layout.Children, bad map[digest.Digest]error, r *Report) {
	for _, e := range db.Check() {
		r.add(KindJournalCorrupt, "", "", "%v", e)
	}
	stored := refcount.Map{}
	var last digest.Digest
	pending := 0
	err := db.View(func(tx *journal.Tx) error {
		recs, err := tx.Pending()
		if err != nil {
			return err
		}
		pending = len(recs)
		for _, rec := range recs {
			r.add(KindPending, "", "", "transaction %d (%s) of %s is unfinished: run ocistore recover", rec.ID, rec.Op, rec.Time.Format("2006-01-02T15:04:05Z"))
		}
		last = tx.IndexDigest()
		return tx.ForEachRef(func(d digest.Digest, ref journal.Ref) error {
			stored[d] = ref
			return nil
		})
	})
	if err != nil {
		r.add(KindJournalCorrupt, "", "", "%v", err)
		return
	}
	if ix == nil || pending > 0 {
		// The refcounts of a pending record already describe its new
		// index: comparing them with the index on disk says nothing more.
		return
	}
	if now := layout.Sum(raw); now != last {
		r.add(KindExternalChange, now, layout.IndexFile, "index.json changed outside ocistore (journal has %s): the next write recounts", last)
		return
	}
	cached := func(d v1.Descriptor) (layout.Children, error) {
		if err, ok := bad[d.Digest]; ok {
			return layout.Children{}, err
		}
		c, ok := kids[d.Digest]
		if !ok {
			return layout.Children{}, fmt.Errorf("blob %s: %w", d.Digest, errdef.ErrNotFound)
		}
		return c, nil
	}
	want, _ := refcount.Recount(ix, cached)
	var diffs []digest.Digest
	for d, w := range want {
		if stored[d].Count != w.Count {
			diffs = append(diffs, d)
		}
	}
	for d := range stored {
		if _, ok := want[d]; !ok {
			diffs = append(diffs, d)
		}
	}
	sort.Slice(diffs, func(i, j int) bool { return diffs[i] < diffs[j] })
	for _, d := range diffs {
		r.add(KindRefcount, d, "", "stored count %d, recount %d", stored[d].Count, want[d].Count)
	}
}

// typeName words a file type for a problem's detail.
func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "a special file"
}
