// Package fsck checks a layout's invariants (quick: the graph, the files,
// the journal; deep: every blob re-hashed) and holds the building blocks of
// the repair that need no open store. It reports in package recovery's
// types; package store runs it under its lock.
package fsck

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/refcount"
	"github.com/ocistore/ocistore/recovery"
)

// journalFile is the journal database, relative to the layout root: the
// path of journal problems.
const journalFile = protocol.JournalFile

func add(r *recovery.Report, kind string, d digest.Digest, path, format string, args ...any) {
	r.Problems = append(r.Problems, finding(kind, d, path, fmt.Sprintf(format, args...)))
}

// finding is one finding of a check, with its kind's severity.
func finding(kind string, d digest.Digest, path, detail string) recovery.Problem {
	return recovery.Problem{Kind: kind, Severity: recovery.SeverityOf(kind), Digest: string(d), Path: path, Detail: detail}
}

// Check verifies the invariants of a layout (the blob files are the
// closure of index.json plus leased and orphan blobs; the refcounts match a
// recount; no record is pending) without reading blob contents (manifests
// are read, since the graph runs through them). db may be nil when
// the layout has no journal. It changes nothing. Its findings are problems
// or notices (recovery.SeverityOf).
func Check(ctx context.Context, fsys fsio.FS, db *journal.DB) (*recovery.Report, error) {
	return CheckWith(ctx, fsys, db, nil)
}

// CheckWith is Check with options: with o.Deep it also re-hashes every blob
// file (see recovery.CheckOptions). A nil o is the quick check.
func CheckWith(ctx context.Context, fsys fsio.FS, db *journal.DB, o *recovery.CheckOptions) (*recovery.Report, error) {
	return CheckShared(ctx, fsys, db, o, nil)
}

// CheckShared is CheckWith for a layout on a shared blob directory: peers
// are the root entries of the other layouts sharing it, whose graphs count
// in the refcounts and whose blobs are no orphans.
func CheckShared(ctx context.Context, fsys fsio.FS, db *journal.DB, o *recovery.CheckOptions, peers []layout.Entry) (*recovery.Report, error) {
	if o == nil {
		o = &recovery.CheckOptions{}
	}
	r := &recovery.Report{Problems: []recovery.Problem{}}
	// A directory that is not one is reported, not looked into: with one
	// of blobs/, no blob is checked (the walk, the listing of blobs/ and
	// the recount are skipped); with .ocistore, no journal is expected.
	stateBad, blobsBad, err := notDirectories(fsys, r)
	if err != nil {
		return nil, err
	}
	// What does not depend on index.json is read meanwhile: the listing of
	// blobs/ and the journal.
	listing := make(chan blobListing, 1)
	go func() {
		if blobsBad {
			listing <- blobListing{}
			return
		}
		algs, err := listBlobFiles(fsys)
		listing <- blobListing{algs, err}
	}()
	var journalc chan journalState
	if db != nil {
		journalc = make(chan journalState, 1)
		_, shared := fsys.(*fsio.Shared)
		go func() { journalc <- readJournal(db, shared) }()
	}
	// Both are waited for on every return.
	var list blobListing
	var jst journalState
	listed := false
	wait := func() {
		if !listed {
			list = <-listing
			if journalc != nil {
				jst = <-journalc
			}
			listed = true
		}
	}
	defer wait()
	if b, err := fsio.ReadFile(fsys, layout.LayoutFile, 4096); err != nil {
		add(r, recovery.KindLayoutCorrupt, "", layout.LayoutFile, "%v", err)
	} else if err := layout.CheckLayoutFile(b); err != nil {
		add(r, recovery.KindLayoutCorrupt, "", layout.LayoutFile, "%v", err)
	}
	raw, ix, err := protocol.ReadIndex(fsys)
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		add(r, recovery.KindIndexMissing, "", layout.IndexFile, "index.json does not exist")
	case err != nil:
		add(r, recovery.KindIndexCorrupt, "", layout.IndexFile, "%v", err)
	}

	// The closure, walked once; children are kept for the recount. What it
	// reads from the disk is read ahead on every core first.
	// With a shared blob directory, the closure is that of every layout
	// sharing it (the refcounts count them all; a blob only another
	// layout uses is no orphan).
	walkIx := ix
	if ix != nil && len(peers) > 0 {
		walkIx = ix.With(append(append([]layout.Entry(nil), ix.Entries...), peers...))
	}
	var nodes map[digest.Digest]*node
	if ix != nil {
		r.Images = len(ix.Entries)
	}
	if ix != nil && !blobsBad {
		if nodes, err = readAheadClosure(ctx, fsys, walkIx); err != nil {
			return nil, err
		}
		w := &walker{ctx: ctx, fsys: fsys, r: r, nodes: nodes}
		for _, e := range walkIx.Entries {
			if err := w.walk(e.Desc, 0); err != nil {
				return nil, err
			}
		}
	}
	wait()
	if list.err != nil {
		return nil, list.err
	}
	// The journal is compared with the closure meanwhile; its problems
	// come last.
	var jr recovery.Report
	jdone := make(chan struct{})
	if db != nil {
		go func() {
			defer close(jdone)
			checkJournal(jst, walkIx, raw, nodes, !blobsBad, &jr)
		}()
	} else {
		close(jdone)
	}
	defer func() { <-jdone }()
	files, err := checkBlobFiles(list.algs, nodes, r, ix != nil, o.Deep)
	if err != nil {
		return nil, err
	}
	if o.Deep && !blobsBad {
		known := map[digest.Digest]bool{}
		for _, p := range r.Problems {
			if p.Kind == recovery.KindDigestMismatch {
				known[digest.Digest(p.Digest)] = true
			}
		}
		if err := deepCheck(ctx, fsys, files, known, o, r); err != nil {
			return nil, err
		}
	}
	if ix != nil && !blobsBad {
		elsewhere(fsys, ix, list.algs, r)
	}
	if err := checkLeftovers(fsys, r); err != nil {
		return nil, err
	}
	if db == nil {
		if !stateBad {
			add(r, recovery.KindJournalMissing, "", journalFile, "no journal: the layout was not adopted by ocistore yet")
		}
		return r, nil
	}
	<-jdone
	r.Problems = append(r.Problems, jr.Problems...)
	return r, nil
}

// walker walks the closure of index.json once, reporting what it finds
// in r; nodes keeps what it read of each blob, for the recount.
type walker struct {
	ctx   context.Context
	fsys  fsio.FS
	r     *recovery.Report
	nodes map[digest.Digest]*node
}

func (w *walker) get(d digest.Digest) *node {
	n := w.nodes[d]
	if n == nil {
		n = &node{}
		w.nodes[d] = n
	}
	return n
}

// expand reads a manifest or index and walks its children.
func (w *walker) expand(n *node, d v1.Descriptor, depth int, p string) error {
	if depth > layout.MaxDepth {
		add(w.r, recovery.KindManifestCorrupt, d.Digest, p, "nested deeper than %d: %s", layout.MaxDepth, unknownClosure)
		return nil
	}
	c, err := n.load(w.fsys, d)
	if err != nil && layout.Sniffed(d, err) {
		n.bad, n.failed = err, true // the recount sees the same leaf
		return nil
	}
	if err != nil {
		n.bad, n.failed = err, true
		kind := recovery.KindManifestCorrupt
		if errors.Is(err, errdef.ErrDigestMismatch) {
			kind = recovery.KindDigestMismatch
		}
		add(w.r, kind, d.Digest, p, "%v: %s", err, unknownClosure)
		return nil
	}
	n.kids, n.expanded = c, true
	for _, k := range c.Refs {
		if err := w.walk(k, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// walk checks the blob of d and, for a manifest or index, walks on.
func (w *walker) walk(d v1.Descriptor, depth int) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	n := w.get(d.Digest)
	if n.reached {
		// Another descriptor of the same blob may say another size.
		if d.Size != n.size {
			p := layout.BlobPath(d.Digest)
			if fi, err := n.lstat(w.fsys, d.Digest); err == nil && fi.size != d.Size {
				add(w.r, recovery.KindSizeMismatch, d.Digest, p, "%d bytes on disk, a descriptor says %d", fi.size, d.Size)
			}
		}
		// First met under a leaf media type, now as a manifest: its
		// children are reachable too (the refcounts expand it as well).
		if n.ok && !n.expanded && !n.failed && layout.IsManifest(d.MediaType) {
			return w.expand(n, d, depth, layout.BlobPath(d.Digest))
		}
		return nil
	}
	n.reached = true
	n.size = d.Size
	p := layout.BlobPath(d.Digest)
	fi, err := n.lstat(w.fsys, d.Digest)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		switch {
		case len(d.URLs) > 0: // a foreign layer
		case layout.Parsed(d, depth == 0):
			add(w.r, recovery.KindDangling, d.Digest, p, "referenced (%s, %d bytes) but missing: %s", d.MediaType, d.Size, unknownClosure)
		default:
			add(w.r, recovery.KindDangling, d.Digest, p, "referenced (%s, %d bytes) but missing", d.MediaType, d.Size)
		}
		return nil
	case err != nil:
		add(w.r, recovery.KindNotRegular, d.Digest, p, "%v", err)
		return nil
	case !fi.mode.IsRegular():
		add(w.r, recovery.KindNotRegular, d.Digest, p, "is %s, not a regular file", protocol.KindOf(fi.mode.Type()))
		return nil
	case fi.size != d.Size:
		add(w.r, recovery.KindSizeMismatch, d.Digest, p, "%d bytes on disk, descriptor says %d", fi.size, d.Size)
		return nil
	}
	w.r.Blobs++
	w.r.Bytes += d.Size
	n.ok = true
	if !layout.Parsed(d, depth == 0) {
		if depth == 0 && layout.TooLargeToSniff(d) {
			add(w.r, recovery.KindManifestCorrupt, d.Digest, p, "%s root of %d bytes, over the %d-byte limit of a manifest, is not read: %s", orUnknownType(d.MediaType), d.Size, layout.MaxManifestSize, unknownClosure)
		}
		return nil
	}
	return w.expand(n, d, depth, p)
}

// notDirectories reports the directories of the layout that are not
// directories (protocol.NotDirectories), and says whether .ocistore is one
// of them and whether one of blobs/ and its algorithm directories is.
func notDirectories(fsys fsio.FS, r *recovery.Report) (stateBad, blobsBad bool, err error) {
	bad, err := protocol.NotDirectories(fsys)
	if err != nil {
		return false, false, err
	}
	for _, b := range bad {
		if b.Path == layout.StateDir {
			stateBad = true
			add(r, recovery.KindNotDirectory, "", b.Path, "is %s, not a directory: not looked into (ocistore commands that write or read the journal refuse the layout; fsck --repair moves it aside and adopts the layout again)", protocol.KindOf(b.Mode))
			continue
		}
		blobsBad = true
		add(r, recovery.KindNotDirectory, "", b.Path, "is %s, not a directory: not followed, and no blob is checked (ocistore refuses the layout; fsck --repair moves it to the quarantine folder and makes an empty directory: the images whose blobs were there are then broken)", protocol.KindOf(b.Mode))
	}
	return stateBad, blobsBad, nil
}

// blobDirsBad returns the paths of blobs/ and of its algorithm
// directories that are not directories.
func blobDirsBad(fsys fsio.FS) ([]string, error) {
	bad, err := protocol.NotDirectories(fsys)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, b := range bad {
		if b.Path != layout.StateDir {
			out = append(out, b.Path)
		}
	}
	return out, nil
}

// checkLeftovers reports the temp, owner and trash files a process that is
// gone left in .ocistore (the next open removes them).
func checkLeftovers(fsys fsio.FS, r *recovery.Report) error {
	sfs := stateDirs(fsys, r)
	temps, err := protocol.Temps(sfs)
	if err != nil {
		return err
	}
	for _, t := range temps {
		if strings.HasPrefix(t, protocol.OwnersDir+"/") {
			add(r, recovery.KindTempFile, "", t, "leftover owner file: its owner is gone (its lock is free); the next open removes it")
			continue
		}
		add(r, recovery.KindTempFile, "", t, "leftover temp file")
	}
	trash, err := protocol.Trash(sfs)
	if err != nil {
		return err
	}
	for _, t := range trash {
		add(r, recovery.KindTempFile, "", t, "leftover trash: out of the layout, not yet unlinked by the process that took it out (gone); the next open unlinks it")
	}
	return nil
}

// elsewhere replaces the dangling problems of r by one blobs-elsewhere
// problem, first, when the layout's blob directory holds no blob and most
// root entries dangle (see blobsElsewhere). A layout on a shared blob
// directory was told where its blobs are: its problems stay as they are.
func elsewhere(fsys fsio.FS, ix *layout.Index, algs []algDir, r *recovery.Report) {
	if _, shared := fsys.(*fsio.Shared); shared || hasBlobFile(algs) {
		return
	}
	missing := map[digest.Digest]bool{}
	for _, p := range r.Problems {
		if p.Kind == recovery.KindDangling {
			missing[digest.Digest(p.Digest)] = true
		}
	}
	roots, dangling := rootsDangling(ix, func(d digest.Digest) bool { return missing[d] })
	if !blobsElsewhere(roots, dangling) {
		return
	}
	kept := []recovery.Problem{finding(recovery.KindBlobsElsewhere, "", layout.BlobsDir, elsewhereDetail(algs == nil, roots, dangling, len(missing)))}
	for _, p := range r.Problems {
		if p.Kind != recovery.KindDangling {
			kept = append(kept, p)
		}
	}
	r.Problems = kept
}

// blobsElsewhere is the rule of a blobs-elsewhere problem, given that the
// blob directory holds no blob: there are entries, and more than half of
// those that should have a blob (not foreign, no URLs) have none.
func blobsElsewhere(roots, dangling int) bool { return roots > 0 && 2*dangling > roots }

// rootsDangling counts the entries of ix that should have a blob (no URLs)
// and, of those, the ones missing says have none.
func rootsDangling(ix *layout.Index, missing func(digest.Digest) bool) (roots, dangling int) {
	for _, e := range ix.Entries {
		if len(e.Desc.URLs) > 0 {
			continue
		}
		roots++
		if missing(e.Desc.Digest) {
			dangling++
		}
	}
	return roots, dangling
}

func elsewhereDetail(noDir bool, roots, dangling, blobs int) string {
	state := layout.BlobsDir + "/ holds no blob"
	if noDir {
		state = layout.BlobsDir + "/ does not exist"
	}
	return fmt.Sprintf("%s (the shared blob directory the layout was written to, e.g. by skopeo --dest-shared-blob-dir): %s, and %d of %d entries of index.json have no blob (%d blobs missing in all, not listed one by one)",
		recovery.BlobsElsewhereHint, state, dangling, roots, blobs)
}

// hasBlobFile reports whether the listing of blobs/ holds an entry named
// by a valid digest.
func hasBlobFile(algs []algDir) bool {
	for _, ad := range algs {
		for _, f := range ad.files {
			if _, ok := parseBlobName(ad.entry.Name(), f.Name()); ok {
				return true
			}
		}
	}
	return false
}

// BlobsElsewhere applies the rule of a blobs-elsewhere problem to the
// layout in fsys with index ix without walking it: it lists blobs/ and
// looks up the root entries' blobs only. It returns the problem's detail,
// or "" when the rule does not hold (always on a shared blob directory).
func BlobsElsewhere(fsys fsio.FS, ix *layout.Index) (string, error) {
	if _, shared := fsys.(*fsio.Shared); shared || ix == nil {
		return "", nil
	}
	// blobs/ or one of its directories is not a directory: that is the
	// problem (not-directory), and repair moves it aside first.
	if bad, err := blobDirsBad(fsys); err != nil || len(bad) > 0 {
		return "", err
	}
	algs, err := listBlobFiles(fsys)
	if err != nil {
		return "", err
	}
	if hasBlobFile(algs) {
		return "", nil
	}
	var lerr error
	roots, dangling := rootsDangling(ix, func(d digest.Digest) bool {
		_, err := fsys.Lstat(layout.BlobPath(d))
		if err != nil && !errors.Is(err, fs.ErrNotExist) && lerr == nil {
			lerr = err
		}
		return errors.Is(err, fs.ErrNotExist)
	})
	if lerr != nil {
		return "", lerr
	}
	if !blobsElsewhere(roots, dangling) {
		return "", nil
	}
	return elsewhereDetail(algs == nil, roots, dangling, dangling), nil
}

// unknownClosure ends the report of a manifest that cannot be followed.
const unknownClosure = "what it references is unknown, so ocistore frees no blob until it is fixed or its image removed (rm, or fsck --repair --drop-broken)"

// stateDirs reports the directories of .ocistore that protocol.Temps lists when
// they are not directories (a symlink, in or out of the layout, or a
// file), and returns fsys with those left unlisted: protocol.Temps then finds no
// temp file in them instead of failing, or listing another directory.
// Repair moves them aside.
func stateDirs(fsys fsio.FS, r *recovery.Report) fsio.FS {
	if fi, err := fsys.Lstat(layout.StateDir); err != nil || !fi.IsDir() {
		return fsys // not ours to look into: the journal's check reports it
	}
	skip := map[string]bool{}
	for _, dir := range []string{protocol.IngestDir, protocol.QuarantineDir, protocol.TrashDir, protocol.OwnersDir} {
		fi, err := fsys.Lstat(dir)
		if err != nil || fi.IsDir() {
			continue // missing, or protocol.Temps says why it cannot list it
		}
		add(r, recovery.KindNotDirectory, "", dir, "is %s, not a directory: not looked into", protocol.KindOf(fi.Mode().Type()))
		skip[dir] = true
	}
	if len(skip) == 0 {
		return fsys
	}
	return unlisted{fsys, skip}
}

// unlisted is an FS whose directories in skip read as missing.
type unlisted struct {
	fsio.FS
	skip map[string]bool
}

func (u unlisted) ReadDir(name string) ([]fs.DirEntry, error) {
	if u.skip[name] {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrNotExist}
	}
	return u.FS.ReadDir(name)
}

// blobListing is what listBlobFiles found under blobs/.
type blobListing struct {
	algs []algDir
	err  error
}

// algDir is an entry of blobs/ and, when it is a directory, its entries.
type algDir struct {
	entry fs.DirEntry
	files []fs.DirEntry
}

// listBlobFiles lists blobs/ and each directory in it.
func listBlobFiles(fsys fsio.FS) ([]algDir, error) {
	algs, err := fsys.ReadDir(layout.BlobsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", layout.BlobsDir, err)
	}
	out := make([]algDir, 0, len(algs))
	for _, a := range algs {
		ad := algDir{entry: a}
		if a.IsDir() {
			dir := layout.BlobsDir + "/" + a.Name()
			if ad.files, err = fsys.ReadDir(dir); err != nil {
				return nil, fmt.Errorf("list %s: %w", dir, err)
			}
		}
		out = append(out, ad)
	}
	return out, nil
}

// parseBlobName is layout.ParseBlobPath without go-digest's regular
// expression for the algorithms the layout knows (it accepts the same
// names).
func parseBlobName(alg, name string) (digest.Digest, bool) {
	d := digest.NewDigestFromEncoded(digest.Algorithm(alg), name)
	return d, layout.ValidateDigest(d) == nil
}

// checkBlobFiles goes through the listing of blobs/, reporting orphans
// (when orphans is true) and files not named by a digest. With sizes, it
// returns the regular files named by a digest, with their sizes, for
// hashing.
func checkBlobFiles(algs []algDir, nodes map[digest.Digest]*node, r *recovery.Report, orphans, sizes bool) ([]blobFile, error) {
	reach := func(d digest.Digest) bool { n := nodes[d]; return n != nil && n.reached }
	var out []blobFile
	for _, ad := range algs {
		a := ad.entry
		dir := layout.BlobsDir + "/" + a.Name()
		if !a.IsDir() {
			add(r, recovery.KindUnknownFile, "", dir, "not an algorithm directory")
			continue
		}
		for _, f := range ad.files {
			p := dir + "/" + f.Name()
			d, ok := parseBlobName(a.Name(), f.Name())
			if !ok {
				add(r, recovery.KindUnknownFile, "", p, "not named by a valid digest")
				continue
			}
			if !f.Type().IsRegular() {
				// A reachable one was reported by the walk. GC leaves
				// these alone; repair moves them to quarantine.
				if orphans && !reach(d) {
					add(r, recovery.KindNotRegular, d, p, "is %s, not a regular file (and nothing reaches it)", protocol.KindOf(f.Type()))
				}
				continue
			}
			if orphans && !reach(d) {
				add(r, recovery.KindOrphan, d, p, "no index.json entry reaches this blob")
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

// journalState is what checkJournal compares with the layout, read from
// the journal while the closure is walked.
type journalState struct {
	checkErrs []error // bbolt's consistency check
	pending   []*journal.Record
	last      digest.Digest
	stored    refcount.Map
	// peers are the layouts sharing the blob directory whose index.json
	// changed outside ocistore (their new references are not counted yet).
	peers []protocol.PeerChange
	err   error // reading the journal failed
}

// readJournal reads what checkJournal compares; with shared, the journal
// is a shared blob directory's, and the other layouts' external changes
// are looked for too.
func readJournal(db *journal.DB, shared bool) journalState {
	st := journalState{checkErrs: db.Check(), stored: refcount.Map{}}
	st.err = db.View(func(tx *journal.Tx) error {
		recs, err := tx.Pending()
		if err != nil {
			return err
		}
		st.pending = recs
		st.last = tx.IndexDigest()
		st.stored = make(refcount.Map, tx.RefKeys())
		return tx.ForEachRef(func(d digest.Digest, ref journal.Ref) error {
			st.stored[d] = ref
			return nil
		})
	})
	if shared && st.err == nil {
		// Every layout but this one (whose change the caller sees by its
		// index's digest): this one is listed only when it changed too.
		st.peers, st.err = protocol.PeerChanges(db, "")
	}
	return st
}

// checkJournal compares the journal with the layout; without recount (the
// blobs were not walked) its counts are not compared.
func checkJournal(st journalState, ix *layout.Index, raw []byte, nodes map[digest.Digest]*node, recount bool, r *recovery.Report) {
	for _, e := range st.checkErrs {
		add(r, recovery.KindJournalCorrupt, "", journalFile, "%v", e)
	}
	for _, rec := range st.pending {
		add(r, recovery.KindPending, "", journalFile, "transaction %d (%s) of %s is unfinished: run ocistore recover", rec.ID, rec.Op, rec.Time.Format("2006-01-02T15:04:05Z"))
	}
	if st.err != nil {
		add(r, recovery.KindJournalCorrupt, "", journalFile, "%v", st.err)
		return
	}
	stored, last, pending := st.stored, st.last, len(st.pending)
	if ix == nil || pending > 0 {
		// The refcounts of a pending record already describe its new
		// index: comparing them with the index on disk says nothing more.
		return
	}
	if now := layout.Sum(raw); now != last {
		add(r, recovery.KindExternalChange, now, layout.IndexFile, "index.json changed outside ocistore (journal has %s): the next write recounts", last)
		return
	}
	if len(st.peers) > 0 {
		// Their references are counted from index.json on disk, the
		// stored counts are not yet: the counts cannot be compared.
		for _, c := range st.peers {
			add(r, recovery.KindExternalChange, c.Now, filepath.Join(c.Dir, layout.IndexFile), "the index.json of %s, a layout sharing the blob directory, changed outside ocistore (journal has %s): reference counts not compared; the next write recounts", c.Dir, c.Committed)
		}
		return
	}
	if !recount {
		return
	}
	// The recount expands what the walk expanded, from what it read.
	cached := func(d v1.Descriptor) (layout.Children, error) {
		n := nodes[d.Digest]
		switch {
		case n != nil && n.failed:
			return layout.Children{}, n.bad
		case n == nil || !n.expanded:
			return layout.Children{}, fmt.Errorf("blob %s: %w", d.Digest, errdef.ErrNotFound)
		}
		return n.kids, nil
	}
	want, _ := refcount.RecountSized(ix, cached, len(nodes))
	var diffs, kidDiffs []digest.Digest
	for d, w := range want {
		if stored[d].Count != w.Count {
			diffs = append(diffs, d)
		} else if st := stored[d].Children; st != nil && w.Children != nil && !sameChildren(st, w.Children) {
			kidDiffs = append(kidDiffs, d)
		}
	}
	for d := range stored {
		if _, ok := want[d]; !ok {
			diffs = append(diffs, d)
		}
	}
	sort.Slice(diffs, func(i, j int) bool { return diffs[i] < diffs[j] })
	for _, d := range diffs {
		add(r, recovery.KindRefcount, d, "", "stored count %d, recount %d", stored[d].Count, want[d].Count)
	}
	slices.Sort(kidDiffs)
	for _, d := range kidDiffs {
		st, rd := stored[d].Children, want[d].Children
		i := 0
		for i < min(len(st), len(rd)) && sameChild(st[i], rd[i]) {
			i++
		}
		switch {
		case i < min(len(st), len(rd)):
			add(r, recovery.KindRefcount, d, "", "the journal records child %d of the manifest as %s (%d bytes), the manifest references %s (%d bytes)", i, st[i].Digest, st[i].Size, rd[i].Digest, rd[i].Size)
		default:
			add(r, recovery.KindRefcount, d, "", "the journal records %d children of the manifest, it references %d", len(st), len(rd))
		}
	}
}

// sameChildren reports whether a journal's record of a manifest's children
// is what the manifest references.
func sameChildren(a, b []v1.Descriptor) bool { return slices.EqualFunc(a, b, sameChild) }

// sameChild compares what a journal records of a child: digest, size, media
// type.
func sameChild(x, y v1.Descriptor) bool {
	return x.Digest == y.Digest && x.Size == y.Size && x.MediaType == y.MediaType
}
