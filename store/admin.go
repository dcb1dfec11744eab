package store

import (
	"context"
	"fmt"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsck"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
)

// Recover takes the writer lock and runs recovery (it also runs on Open and
// before every transaction). It returns what it did, including what the
// recovery run by Open did.
func (s *Store) Recover(ctx context.Context) (acts []recovery.Action, err error) {
	err = s.freeing(ctx, "recover", false, func() error {
		acts, err = s.recoverNow(ctx)
		return err
	})
	return acts, err
}

func (s *Store) recoverNow(ctx context.Context) ([]recovery.Action, error) {
	var acts []recovery.Action
	err := s.withWriter(ctx, sectionJournal, func(db *journal.DB, _ *protocol.State) error {
		st, err := protocol.Run(ctx, s.envFor(db), db, nil)
		if err != nil {
			return s.check(err)
		}
		acts = append(append(acts, s.opened...), st.Actions...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("recover: %w", err)
	}
	return acts, nil
}

// Check checks the layout's invariants (docs/DESIGN.md §6, §14.1: the blob
// files are the closure of index.json plus leased blobs; the refcounts match
// a recount; no record is pending) under the writer lock, so that no
// transaction is half done while it looks. It changes nothing. A nil o is
// the quick check; o.Deep also re-hashes every blob.
func (s *Store) Check(ctx context.Context, o *recovery.CheckOptions) (*recovery.Report, error) {
	if err := s.readable(); err != nil {
		return nil, err
	}
	if s.opts.ReadOnly {
		if s.lay.Scope != "" {
			return nil, fmt.Errorf("check: a read-only check of a layout with a shared blob directory: %w", errdef.ErrInvalidArgument)
		}
		var opts recovery.CheckOptions
		if o != nil {
			opts = *o
		}
		opts.LockTimeout = s.opts.LockTimeout
		return fsck.CheckDir(ctx, s.lay.Dir, &opts)
	}
	var rep *recovery.Report
	err := s.withWriter(ctx, sectionCheck, func(db *journal.DB, _ *protocol.State) error {
		var peers []layout.Entry
		if s.lay.Scope != "" {
			var err error
			if peers, err = s.lay.PeerEntries(db); err != nil {
				return err
			}
		}
		var err error
		if rep, err = fsck.CheckShared(ctx, s.lay.FS, db, o, peers); err != nil {
			return err
		}
		if err := fsck.DropLeasedOrphans(rep, db, s.now()); err != nil {
			return fmt.Errorf("leases: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	return rep, nil
}

// CheckDir checks the layout in dir as it is, without opening it as a
// store: no recovery runs first, so an interrupted transaction shows as a
// pending record. It changes nothing, and takes a shared lock on the
// journal, waiting up to o.LockTimeout for a writer. The blobs of a layout
// on a shared blob directory are looked for there: the one its marker
// names, or o.SharedBlobDir for a layout ocistore has not adopted yet.
func CheckDir(ctx context.Context, dir string, o *recovery.CheckOptions) (*recovery.Report, error) {
	return fsck.CheckDir(ctx, dir, o)
}
