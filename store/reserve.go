package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/layout"
)

// The space reserve (fsio.ReserveFile, .ocistore/reserve): a file of
// allocated blocks, next to the journal, that holds back the space the
// operations that free space need when the file system is full. On a full
// file system every write fails, and with it every transaction: the
// journal's commit (bbolt grows its file sparsely, so a page past the last
// one written needs a new block), the temp file of index.json, the replay
// of a pending record by recovery on open. So:
//
//   - A read-write Open makes the reserve when it is missing, or grows it
//     when it is smaller than reserveWant, if the file system has room for
//     it and as much again (hysteresis: a reserve just released on a full
//     disk is not taken back by the next open). Without the room, the open
//     goes on without it (and logs it).
//   - Delete, Prune, GC and Recover (and Repair) free space: when the file
//     system has less space available than the reserve's size, they unlink
//     the reserve before they start; when they fail for want of space
//     (ENOSPC, EDQUOT) anyway, they unlink it and run again, once. An Open
//     whose recovery fails for want of space does the same.
//   - Once they have freed space, and at Close (after the trash is
//     unlinked), the reserve is made again, under the same condition.
//
// A missing reserve is no problem for fsck: the next open makes it again.

// Sizes of the reserve: twice index.json (the temp file of its rewrite and
// the journal's copy of it) plus reserveSlack for the journal's growth
// (the record, the refcount and image pages a transaction rewrites), at
// least fsio.ReserveMin, rounded up to a MiB (so that a growing index.json
// does not grow the reserve at every open).
const reserveSlack = 1 << 20

// reserveWant is the size the reserve should have.
func (s *Store) reserveWant() int64 {
	if s.opts.reserveSize > 0 {
		return s.opts.reserveSize
	}
	var idx int64
	if fi, err := s.lay.FS.Lstat(layout.IndexFile); err == nil && fi.Mode().IsRegular() {
		idx = fi.Size()
	}
	want := max(fsio.ReserveMin, 2*idx+reserveSlack)
	const mib = 1 << 20
	return (want + mib - 1) / mib * mib
}

// ensureReserve makes or grows the reserve when it is smaller than
// reserveWant and the file system has room for what it lacks and a whole
// reserve more. It never fails: what stops it is logged.
func (s *Store) ensureReserve() {
	if s.opts.ReadOnly {
		return
	}
	s.reserve.Lock()
	defer s.reserve.Unlock()
	want := s.reserveWant()
	have := fsio.ReserveBytes(s.lay.FS)
	if have >= want {
		return
	}
	if avail, ok := fsio.Available(s.lay.FS); ok && avail-(want-have) < want {
		if !s.reserve.warned {
			s.reserve.warned = true
			s.log.Warn("file system nearly full: no space reserve made (rm, prune, gc and recover still run)",
				"path", fsio.ReserveFile, "reserve", have, "want", want, "available", avail)
		}
		return
	}
	made, err := fsio.MakeReserve(s.lay.FS, want)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
	case err != nil:
		s.log.Warn("space reserve not made", "path", fsio.ReserveFile, "err", err)
	case made:
		s.reserve.warned = false
		s.log.Debug("space reserve made", "path", fsio.ReserveFile, "bytes", want)
	}
}

// releaseReserve unlinks the reserve and returns the bytes it held.
func (s *Store) releaseReserve(why string, cause error) int64 {
	s.reserve.Lock()
	defer s.reserve.Unlock()
	return releaseReserveIn(s.lay.FS, s.log, why, cause)
}

func releaseReserveIn(fsys fsio.FS, log *slog.Logger, why string, cause error) int64 {
	n, err := fsio.ReleaseReserve(fsys)
	if err != nil {
		log.Warn("cannot release the space reserve", "path", fsio.ReserveFile, "err", err)
	}
	if n > 0 {
		attrs := []any{"op", why, "path", fsio.ReserveFile, "bytes", n}
		if cause != nil {
			attrs = append(attrs, "err", cause)
		}
		log.Warn("file system full: space reserve released", attrs...)
	}
	return n
}

// lowOnSpace reports whether the file system of the journal has less
// space available than the reserve's size: a transaction might not fit.
func (s *Store) lowOnSpace() bool {
	avail, ok := fsio.Available(s.lay.FS)
	return ok && avail < s.reserveWant()
}

// freeing runs op, an operation that frees space (dry: one that only
// reports what it would free), with the reserve released first when space
// is low, and released and op run again when op fails for want of space;
// then it makes the reserve again if there is room.
//
// An op that failed after its journal commit (the record is pending: its
// index.json could not be written) is not run again, which would plan
// against what recovery makes of the first attempt (a Delete would find
// its references gone): recovery finishes it, and the error says so.
func (s *Store) freeing(ctx context.Context, what string, dry bool, op func() error) error {
	if dry || s.opts.ReadOnly {
		return op()
	}
	if s.lowOnSpace() {
		s.releaseReserve(what, nil)
	}
	err := op()
	if err != nil && fsio.NoSpace(err) && s.writable() == nil {
		journaled := what != "recover" && s.hasPending()
		if s.releaseReserve(what, err) > 0 {
			if !journaled {
				err = op()
			} else if _, rerr := s.recoverNow(ctx); rerr != nil {
				err = fmt.Errorf("%w (its journal record is pending; recovery failed too: %v)", err, rerr)
			} else {
				return fmt.Errorf("%w (after its journal commit: recovery finished the transaction once the space reserve was released)", err)
			}
		}
	}
	if err == nil {
		s.ensureReserve()
	}
	return err
}

// hasPending reports whether the journal holds a pending record.
func (s *Store) hasPending() bool {
	recs, err := PendingRecords(s.lay.Dir, s.opts.LockTimeout)
	return err == nil && len(recs) > 0
}

// openFreeing is Open's recovery run with the same rescue: an open whose
// recovery fails for want of space (a pending record whose index.json
// must be written again) releases the reserve and runs once more.
func (s *Store) openFreeing(ctx context.Context) error {
	err := s.open(ctx)
	if err != nil && !s.opts.ReadOnly && fsio.NoSpace(err) && s.releaseReserve("open", err) > 0 {
		err = s.open(ctx)
	}
	if err == nil {
		s.ensureReserve()
	}
	return err
}
