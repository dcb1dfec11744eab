package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/refcount"
	"github.com/ocistore/ocistore/journal"
	"github.com/ocistore/ocistore/recovery"
)

// Blob is a blob a transaction freed.
type Blob struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// Result describes a committed transaction.
type Result struct {
	Txn        uint64 `json:"txn,omitempty"` // journal record id; 0 when nothing changed
	Freed      []Blob `json:"freed"`         // blobs unlinked, in unlink order
	BytesFreed int64  `json:"bytesFreed"`
}

// planFunc computes the new index entries from the current ones. It must not
// modify cur.
type planFunc func(cur *layout.Index) ([]layout.Entry, error)

// update runs one journal transaction (DESIGN.md §3): plan under the writer
// lock, journal commit, index.json, unlinks, clear.
func (s *Store) update(ctx context.Context, op string, plan planFunc) (*Result, error) {
	if err := s.writable(); err != nil {
		return nil, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writable(); err != nil { // closed or poisoned while we waited
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := time.Now()
	db, cur, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer db.Close()

	// 1. Plan.
	entries, err := plan(cur.Index)
	if err != nil {
		return nil, err
	}
	next := cur.Index.With(entries)
	newBytes := next.Marshal()
	newDigest := layout.Sum(newBytes)
	if newDigest == cur.Digest {
		return &Result{}, nil
	}
	added, removed := diffRoots(cur.Index.Entries, entries)

	// 2. Journal commit: refcounts and the record in one bbolt transaction.
	var rec journal.Record
	var freed []v1.Descriptor
	var swept []journal.Lease
	err = db.Update(func(tx *journal.Tx) error {
		now := s.now()
		var err error
		if swept, err = s.sweepLeases(tx, now); err != nil {
			return err
		}
		c := &refcount.Counter{T: tx, Load: layout.LoadChildren(s.fsys), Present: s.present}
		for _, d := range added {
			if err := c.Inc(d); err != nil {
				return err
			}
		}
		for _, d := range removed {
			if err := c.Dec(d); err != nil {
				return err
			}
		}
		// Blobs a live lease holds stay, unreferenced, until it ends (GC).
		if freed, err = withoutLeased(tx, c.Freed, now); err != nil {
			return err
		}
		rec = journal.Record{Op: op, Time: time.Now().UTC(), OldIndex: cur.Digest, NewIndex: newDigest, Deltas: c.Deltas}
		for _, f := range freed {
			rec.Unlink = append(rec.Unlink, f.Digest)
		}
		return tx.AddPending(&rec, newBytes)
	})
	if err != nil {
		return nil, s.check(err)
	}
	s.logSwept(swept)
	crash.Point(crash.TxnJournaled)
	present := map[digest.Digest]bool{}
	for _, f := range freed {
		if _, err := s.fsys.Lstat(layout.BlobPath(f.Digest)); err == nil {
			present[f.Digest] = true
		}
	}

	// 3-5. index.json, unlinks, clear.
	stamp, err := recovery.Apply(s.env(), db, &rec, newBytes)
	if err != nil {
		return nil, s.check(err)
	}
	s.snap.Store(&snapshot{ix: next, raw: newBytes, digest: newDigest, stamp: stamp})

	res := &Result{Txn: rec.ID}
	for _, f := range freed {
		if !present[f.Digest] {
			continue // never on disk (a foreign layer): nothing was freed
		}
		res.Freed = append(res.Freed, Blob{Digest: f.Digest.String(), Size: f.Size})
		res.BytesFreed += f.Size
	}
	s.log.Debug("transaction committed", "op", op, attrTxn, rec.ID, "freed", len(freed), "bytes", res.BytesFreed, "took", time.Since(start))
	return res, nil
}

// withoutLeased returns freed without the blobs that leases live at now hold.
func withoutLeased(tx *journal.Tx, freed []v1.Descriptor, now time.Time) ([]v1.Descriptor, error) {
	if len(freed) == 0 {
		return nil, nil
	}
	leased, err := tx.Leased(now)
	if err != nil || len(leased) == 0 {
		return freed, err
	}
	out := make([]v1.Descriptor, 0, len(freed))
	for _, f := range freed {
		if !leased[f.Digest] {
			out = append(out, f)
		}
	}
	return out, nil
}

// present checks that a leaf blob that becomes referenced is on disk with the
// right size. Descriptors with URLs (foreign layers) may be absent.
func (s *Store) present(d v1.Descriptor) error {
	p := layout.BlobPath(d.Digest)
	fi, err := s.fsys.Lstat(p)
	if err != nil {
		if len(d.URLs) > 0 && errorsIsNotExist(err) {
			return nil
		}
		return fmt.Errorf("blob %s (%s): %w", d.Digest, p, errdef.ErrMissingDependency)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("blob %s (%s) is not a regular file: %w", d.Digest, p, errdef.ErrCorrupt)
	}
	if fi.Size() != d.Size {
		return fmt.Errorf("blob %s (%s): %d bytes on disk, descriptor says %d: %w", d.Digest, p, fi.Size(), d.Size, errdef.ErrSizeMismatch)
	}
	return nil
}

func errorsIsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// diffRoots compares two entry lists as multisets of root descriptors.
func diffRoots(old, new []layout.Entry) (added, removed []v1.Descriptor) {
	count := map[string]int{}
	for _, e := range old {
		count[e.Desc.Digest.String()]++
	}
	for _, e := range new {
		k := e.Desc.Digest.String()
		if count[k] > 0 {
			count[k]--
			continue
		}
		added = append(added, e.Desc)
	}
	for _, e := range old {
		k := e.Desc.Digest.String()
		if count[k] > 0 {
			count[k]--
			removed = append(removed, e.Desc)
		}
	}
	return added, removed
}
