package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
)

// DefaultGrace is the grace period of `ocistore gc` and of a repair's
// removal of orphans: a blob file modified more recently may belong to a
// copy that has not written its index.json yet.
const DefaultGrace = time.Hour

// GCOptions tune GC.
type GCOptions struct {
	// Grace keeps blobs whose file was modified less than Grace ago: a blob
	// another process just wrote, and is about to tag without a lease, is
	// not garbage yet. Zero keeps none back.
	Grace time.Duration
	// DryRun reports what would be removed and changes nothing.
	DryRun bool
}

// GCResult describes a GC. Freed lists the blobs removed (or, for a dry
// run, that would be).
type GCResult struct {
	Result
	DryRun  bool `json:"dryRun"`
	Scanned int  `json:"scanned"` // blob files looked at
	Young   int  `json:"young"`   // unreferenced, kept: newer than the grace period
	Leased  int  `json:"leased"`  // unreferenced, kept: held by a live lease
	// Uploads counts the staging files of upload sessions whose lease is
	// gone (expired, or never committed: an abandoned push), removed (or,
	// for a dry run, that would be), and UploadBytes their size.
	Uploads     int   `json:"uploads,omitempty"`
	UploadBytes int64 `json:"uploadBytes,omitempty"`
	// Recovery, for a dry run only, is what the recovery that a real GC
	// does first would do (see PruneResult.Recovery).
	Recovery []recovery.Action `json:"recovery,omitempty"`
}

// gcCandidate is an unreferenced-looking blob file found by the listing.
type gcCandidate struct {
	d     digest.Digest
	size  int64
	young bool // modified within the grace period
}

// GC removes the blob files that nothing reachable from index.json uses
// (left by another tool, by an ingest whose manifest was never tagged, by a
// crash, or kept by a lease that has ended), unless a live lease holds them
// or they are younger than the grace period. It lists blobs/<alg>/ and
// reads no blob content: the journal's reference counts say what is used.
//
// It is one journal transaction like every other deletion: a record
// listing the blobs (index.json unchanged), then the unlinks and one sync
// per blob directory, then the record is cleared. Recovery finishes an
// interrupted GC, checking again that each blob is unreferenced.
func (s *Store) GC(ctx context.Context, o GCOptions) (*GCResult, error) {
	var res *GCResult
	err := s.freeing(ctx, "gc", o.DryRun, func() (err error) {
		res, err = s.gc(ctx, o)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	return res, nil
}

// errRollback makes a journal Update commit nothing.
var errRollback = errors.New("rollback")

func (s *Store) gc(ctx context.Context, o GCOptions) (*GCResult, error) {
	if o.Grace < 0 {
		o.Grace = 0
	}
	var res *GCResult
	collect := func(db *journal.DB, cur *protocol.State) error {
		var err error
		res, err = s.collect(ctx, db, cur, o)
		return err
	}
	if o.DryRun {
		acts, err := s.withDry(ctx, collect)
		if err != nil {
			return nil, err
		}
		res.Recovery = acts
		return res, nil
	}
	err := s.withWriter(ctx, sectionIndex, collect)
	return res, err
}

// collect is GC under the writer lock, on the layout after recovery.
func (s *Store) collect(ctx context.Context, db *journal.DB, cur *protocol.State, o GCOptions) (*GCResult, error) {
	start := time.Now()
	now := s.now()
	res := &GCResult{DryRun: o.DryRun}
	cands, err := s.listBlobs(ctx, now.Add(-o.Grace), res)
	if err != nil {
		return nil, err
	}

	uploads, err := s.listUploads()
	if err != nil {
		return nil, err
	}

	var rec journal.Record
	var swept []journal.Lease
	var unlink []gcCandidate
	var abandoned []fs.DirEntry
	err = db.Update(func(tx *journal.Tx) error {
		var err error
		if swept, err = s.sweepLeases(tx, now); err != nil {
			return err
		}
		if abandoned, err = s.abandonedUploads(tx, uploads, now); err != nil {
			return err
		}
		leased, err := tx.Leased(now)
		if err != nil {
			return err
		}
		for _, c := range cands {
			r, err := tx.GetRef(c.d)
			if err != nil {
				return err
			}
			switch {
			case r.Count > 0:
			case leased[c.d] || s.inUse(c.d):
				res.Leased++
			case c.young:
				res.Young++
			default:
				unlink = append(unlink, c)
			}
		}
		if len(unlink) > 0 {
			if res.Pinned = pinReason(tx, now); res.Pinned != "" {
				unlink = nil
			}
		}
		if o.DryRun {
			return errRollback
		}
		if len(unlink) == 0 {
			return nil // commits the sweep, if any
		}
		rec = journal.Record{Op: "gc", Time: now.UTC(), OldIndex: cur.Digest, NewIndex: cur.Digest}
		for _, c := range unlink {
			rec.Unlink = append(rec.Unlink, c.d)
		}
		return tx.AddPending(&rec, cur.Bytes)
	})
	if err != nil && !errors.Is(err, errRollback) {
		return nil, s.check(err)
	}
	if !o.DryRun {
		s.logSwept(swept)
	}
	s.removeUploads(abandoned, o.DryRun, res)
	for _, c := range unlink {
		res.Freed = append(res.Freed, Blob{Digest: c.d.String(), Size: c.size})
		res.BytesFreed += c.size
	}
	if res.Pinned != "" {
		s.log.Warn("gc: nothing freed", "why", res.Pinned)
	}
	if o.DryRun || len(unlink) == 0 {
		return res, nil
	}
	crash.Point(crash.TxnJournaled)
	// index.json is not rewritten: the record's new index is the one on
	// disk, so Finish (steps 4 and 5) is all there is to do.
	if err := protocol.Finish(s.env(), db, &rec, cur.Stamp, crash.BlobUnlinked); err != nil {
		return nil, s.check(err)
	}
	res.Txn = rec.ID
	s.log.Info("gc", attrTxn, rec.ID, "removed", len(unlink), "bytes", res.BytesFreed, "leased", res.Leased, "young", res.Young, "took", time.Since(start))
	return res, nil
}

// listUploads lists the staging files of upload sessions.
func (s *Store) listUploads() ([]fs.DirEntry, error) {
	ents, err := s.lay.FS.ReadDir(protocol.UploadsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", protocol.UploadsDir, err)
	}
	return ents, nil
}

// abandonedUploads returns the staging files of ents whose session's lease
// is gone at now. The lease is committed before its file is made, so a
// file without a live lease is never one a session still writes (a
// session that expired while its writer still ran fails its commit), but
// for one this handle is committing: a commit ends the lease before it
// renames the file. Names that are not a session's are left alone.
func (s *Store) abandonedUploads(tx *journal.Tx, ents []fs.DirEntry, now time.Time) ([]fs.DirEntry, error) {
	var out []fs.DirEntry
	for _, e := range ents {
		if !e.Type().IsRegular() || validUploadID(e.Name()) != nil || s.uploadIsCommitting(e.Name()) {
			continue
		}
		l, ok, err := tx.GetLease(e.Name())
		if err != nil {
			return nil, err
		}
		if !ok || l.Expired(now) {
			out = append(out, e)
		}
	}
	return out, nil
}

// removeUploads removes the staging files of abandoned upload sessions
// and counts them in res. No sync: a file that comes back after a crash
// is removed by the next GC.
func (s *Store) removeUploads(ents []fs.DirEntry, dryRun bool, res *GCResult) {
	for _, e := range ents {
		var size int64
		if fi, err := e.Info(); err == nil {
			size = fi.Size()
		}
		if !dryRun {
			name := uploadPath(e.Name())
			if err := s.lay.FS.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.log.Warn("gc: cannot remove an abandoned upload", "path", name, "err", err)
				continue
			}
		}
		res.Uploads++
		res.UploadBytes += size
	}
	if res.Uploads > 0 && !dryRun {
		s.log.Info("gc: abandoned uploads removed", "uploads", res.Uploads, "bytes", res.UploadBytes)
	}
}

// listBlobs lists the blob files of the layout, marking those modified
// after cutoff young, and counts them in res. Files not named by a digest,
// and anything that is not a regular file, are left alone.
func (s *Store) listBlobs(ctx context.Context, cutoff time.Time, res *GCResult) ([]gcCandidate, error) {
	algs, err := s.lay.FS.ReadDir(layout.BlobsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", layout.BlobsDir, err)
	}
	var out []gcCandidate
	for _, a := range algs {
		if !a.IsDir() {
			continue
		}
		dir := layout.BlobsDir + "/" + a.Name()
		files, err := s.lay.FS.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", dir, err)
		}
		// The names are checked and the files stated on every core, in
		// parts that keep the listing's order (400,000 stats and digest
		// checks took 2.7 s on one).
		parts := make([][]gcCandidate, runtime.GOMAXPROCS(0))
		errs := make([]error, len(parts))
		per := (len(files) + len(parts) - 1) / len(parts)
		var wg sync.WaitGroup
		for i := range parts {
			part := files[min(i*per, len(files)):min((i+1)*per, len(files))]
			wg.Go(func() { parts[i], errs[i] = statBlobs(ctx, dir, a.Name(), part, cutoff) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		n := len(out)
		for _, p := range parts {
			n += len(p)
		}
		out = slices.Grow(out, n-len(out))
		for _, p := range parts {
			res.Scanned += len(p)
			out = append(out, p...)
		}
	}
	return out, nil
}

// statBlobs is listBlobs for part of the listing of dir, the blob
// directory of alg.
func statBlobs(ctx context.Context, dir, alg string, files []fs.DirEntry, cutoff time.Time) ([]gcCandidate, error) {
	out := make([]gcCandidate, 0, len(files))
	for i, f := range files {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if !f.Type().IsRegular() {
			continue
		}
		d, ok := layout.ParseBlobPath(alg, f.Name())
		if !ok {
			continue
		}
		fi, err := f.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile (by another tool)
		}
		if err != nil {
			return nil, fmt.Errorf("stat %s/%s: %w", dir, f.Name(), err)
		}
		out = append(out, gcCandidate{d: d, size: fi.Size(), young: fi.ModTime().After(cutoff)})
	}
	return out, nil
}

// DeleteBlob removes the blob d, which no manifest of the layout may
// reference (ErrReferenced; with a shared blob directory, no manifest of
// any layout that shares it): the blob delete of the distribution API. It
// is an explicit deletion, so it takes d out of every lease that holds it
// (an upload's, whose client now deletes what it pushed). Like GC, it is
// one journal transaction (a record naming the blob, the unlink and the
// directory's sync, the record cleared), and a pin (see GCResult.Pinned)
// refuses it (ErrRefused). It returns the blob's size; ErrNotFound when the
// layout does not hold it.
func (s *Store) DeleteBlob(ctx context.Context, d digest.Digest) (int64, error) {
	if err := layout.ValidateDigest(d); err != nil {
		return 0, fmt.Errorf("delete blob: %w", err)
	}
	var size int64
	err := s.freeing(ctx, "delete-blob", false, func() error {
		return s.withWriter(ctx, sectionIndex, func(db *journal.DB, cur *protocol.State) (err error) {
			size, err = s.deleteBlob(db, cur, d)
			return err
		})
	})
	if err != nil {
		return 0, fmt.Errorf("delete blob %s: %w", d, err)
	}
	return size, nil
}

func (s *Store) deleteBlob(db *journal.DB, cur *protocol.State, d digest.Digest) (int64, error) {
	p := layout.BlobPath(d)
	fi, err := s.lay.FS.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%s: %w", p, errdef.ErrNotFound)
	}
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file: %w", p, errdef.ErrCorrupt)
	}
	now := s.now()
	rec := journal.Record{Op: "delete-blob", Time: now.UTC(), OldIndex: cur.Digest, NewIndex: cur.Digest, Unlink: []digest.Digest{d}}
	err = db.Update(func(tx *journal.Tx) error {
		r, err := tx.GetRef(d)
		if err != nil {
			return err
		}
		if r.Count > 0 {
			return fmt.Errorf("blob %s: %d reference(s): %w", d, r.Count, errdef.ErrReferenced)
		}
		if why := pinReason(tx, now); why != "" {
			return fmt.Errorf("blob %s: %s: %w", d, why, errdef.ErrRefused)
		}
		if err := tx.UnleaseBlob(d); err != nil {
			return err
		}
		return tx.AddPending(&rec, cur.Bytes)
	})
	if err != nil {
		return 0, s.check(err)
	}
	// What this handle knows of its leases must not say d is in them.
	s.leaseMu.Lock()
	for _, k := range s.leaseMu.known {
		delete(k.blobs, d)
	}
	s.leaseMu.Unlock()
	crash.Point(crash.TxnJournaled)
	if err := protocol.Finish(s.env(), db, &rec, cur.Stamp, crash.BlobUnlinked); err != nil {
		return 0, s.check(err)
	}
	s.log.Info("blob deleted", attrTxn, rec.ID, attrDigest, d, "size", fi.Size())
	return fi.Size(), nil
}
