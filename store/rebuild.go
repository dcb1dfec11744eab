package store

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
)

// RebuildPin is how long nothing is freed (by a transaction, GC or prune)
// after the journal was rebuilt without the leases of the one it replaced
// (they could not be read): a lease's blobs are unknown then, so any
// unreferenced blob may be one of them. There is no maximum lease length;
// a day covers the leases operations take for themselves (an hour,
// renewed while they run) and the pulls of a cache. A lease longer than
// that, lost with its journal, protects nothing after it.
const RebuildPin = 24 * time.Hour

// journalRebuild is the new journal while it is built, before it takes
// the damaged one's place.
const journalRebuild = JournalPath + ".rebuild"

// rebuiltJournal says what rebuildJournal kept.
type rebuiltJournal struct {
	aside  string    // where the damaged journal is now
	leases int       // leases put back
	pinned time.Time // nothing is freed before (zero: no pin)
}

// rebuildJournal replaces the damaged journal (why it is) by a new one
// that holds the leases salv read from it (nil: nothing could be read),
// and, when leases may have been lost, a pin: nothing is freed for
// RebuildPin. The layout's state (refcounts, committed index, image
// metadata) is not copied: recovery counts it from the layout. The writer
// lock is not held (the damaged journal could not be opened).
//
// The new journal is built aside (journalRebuild) and synced before the
// damaged one is renamed to journal.db.corrupt-<time> and the new one
// into its place: a crash before that rename leaves the damaged journal,
// which the next open rebuilds again; after it, finishRebuild completes
// the second rename. The leases are never missing from a journal in use.
func (s *Store) rebuildJournal(why error, salv *journal.Salvaged) (rebuiltJournal, error) {
	var out rebuiltJournal
	if err := s.fsys.Remove(journalRebuild); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return out, fmt.Errorf("%w (removing %s: %v)", why, journalRebuild, err)
	}
	db, err := journal.Open(filepath.Join(s.stateRoot, journalRebuild), journal.Options{LockTimeout: s.opts.LockTimeout})
	if err != nil {
		return out, fmt.Errorf("%w (building a new journal: %v)", why, err)
	}
	now := s.now()
	lost := salv == nil || salv.LeasesLost || salv.Newer()
	err = db.Update(func(tx *journal.Tx) error {
		if salv != nil {
			for _, l := range salv.Leases {
				if l.Expired(now) {
					continue
				}
				if err := tx.PutLease(l.Lease); err != nil {
					return err
				}
				if err := tx.AddLeaseBlobs(l.ID, l.Blobs...); err != nil {
					return err
				}
				out.leases++
			}
		}
		if lost {
			out.pinned = now.Add(RebuildPin)
			return tx.SetPinnedUntil(now, out.pinned)
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return rebuiltJournal{}, s.check(fmt.Errorf("build a new journal: %w", err))
	}
	if err := s.fsys.SyncDir(layout.StateDir); err != nil {
		return rebuiltJournal{}, s.poison(&fsio.SyncError{Path: layout.StateDir, Err: err})
	}
	if out.aside, err = s.moveJournalAside(why); err != nil {
		return rebuiltJournal{}, err
	}
	if err := s.finishRebuild(); err != nil {
		return rebuiltJournal{}, err
	}
	if out.leases > 0 {
		s.log.Warn("journal rebuilt: the leases that could be read are kept", "leases", out.leases)
	}
	if lost {
		s.log.Warn("journal rebuilt without all its leases: nothing is freed until the pin ends", "until", out.pinned)
	}
	return out, nil
}

// finishRebuild puts the journal rebuildJournal built in place when a crash
// left it aside with no journal (after the damaged one was moved away).
func (s *Store) finishRebuild() error {
	if _, err := s.fsys.Lstat(JournalPath); !errors.Is(err, fs.ErrNotExist) {
		return nil // there is a journal (or the open reports why not)
	}
	if fi, err := s.fsys.Lstat(journalRebuild); err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if err := s.fsys.Rename(journalRebuild, JournalPath); err != nil {
		return fmt.Errorf("journal: put the rebuilt one in place: %w", err)
	}
	if err := s.fsys.SyncDir(layout.StateDir); err != nil {
		return s.poison(&fsio.SyncError{Path: layout.StateDir, Err: err})
	}
	return nil
}

// newerJournalOf is newerJournal for the store's journal, which is not
// opened when it, or .ocistore, is not what it should be (a symlink out of
// the layout is never followed: the open that follows reports it).
func (s *Store) newerJournalOf(lockTimeout time.Duration) error {
	if bad, _ := journalNotRegular(s.fsys); bad != "" {
		return nil
	}
	return newerJournal(s.journalPath(), lockTimeout)
}

// newerJournal returns an error wrapping ErrJournalNewer when a newer
// ocistore wrote the journal at path, damaged or not (a damaged one is
// salvaged read-only for its version); nil otherwise, whatever else may be
// wrong with it (the caller's own open reports that). It changes nothing
// and waits at most lockTimeout for a writer (negative: not at all, and a
// journal a writer holds passes).
func newerJournal(path string, lockTimeout time.Duration) error {
	db, err := journal.Open(path, journal.Options{ReadOnly: true, LockTimeout: lockTimeout})
	switch {
	case err == nil:
		return db.Close()
	case errors.Is(err, errdef.ErrJournalNewer):
		return err
	case errors.Is(err, errdef.ErrCorrupt):
		if salv, _ := journal.SalvageFile(path, lockTimeout); salv != nil && salv.Newer() {
			return salv.NewerError(path)
		}
	}
	return nil
}
