package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
)

// Dry runs (DESIGN.md §17.3).
//
// A dry run of prune or GC changes no byte: not the journal, not
// index.json, not a blob, not a lock file. It takes no lock, so it never
// waits for a writer and works on a read-only mount and on a handle opened
// ReadOnly. It runs the very plan a real run would, on a private copy of
// the journal as its last commit left it (journal.Options.Snapshot), after
// the recovery a real run would do first, done in that copy only
// (protocol.Env.Dry): what that recovery would do (recount after another
// tool's write, finish an interrupted transaction) is reported, not done.

// withDry runs fn as a writer section would (fn gets the journal and the
// layout after recovery) on a private copy of the journal. It returns what
// the recovery would do.
func (s *Store) withDry(ctx context.Context, fn func(db *journal.DB, cur *protocol.State) error) ([]recovery.Action, error) {
	if err := s.reading(ctx); err != nil {
		return nil, err
	}
	db, err := journal.Open(s.journalPath(), journal.Options{Snapshot: true, LockTimeout: s.opts.LockTimeout, Scope: s.lay.Scope})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	env := s.lay.Env(db, protocol.Env{Log: s.log, Self: s.ownerToken(), Dry: true})
	cur, err := protocol.Run(ctx, env, db, nil)
	if err == nil && s.lay.Scope != "" {
		cur, err = s.lay.Reconcile(ctx, db, env, cur)
	}
	if err != nil {
		return nil, fmt.Errorf("recover (dry run): %w", err)
	}
	acts := cur.Actions
	if db.Created {
		acts = append([]recovery.Action{{Kind: "adopt", Detail: "no journal yet: it would be built, counting every blob index.json reaches"}}, acts...)
	}
	if acts == nil {
		acts = []recovery.Action{}
	}
	if err := fn(db, cur); err != nil {
		return nil, err
	}
	return acts, nil
}

// updateDry is update for a dry run: plan runs on the private copy of
// withDry, and must end it with errDryRun (its result is what plan
// recorded). It returns what the recovery before it would do.
func (s *Store) updateDry(ctx context.Context, op string, plan planFunc) ([]recovery.Action, error) {
	c := &change{ctx: ctx, op: op, plan: plan}
	return s.withDry(ctx, func(db *journal.DB, cur *protocol.State) error {
		p := &planned{cur: cur}
		err := db.Update(func(tx *journal.Tx) error { return s.plan(tx, []*change{c}, []*change{c}, p) })
		switch {
		case errors.Is(err, errDryRun):
			return nil
		case err == nil, errors.Is(err, errNoChange):
			return fmt.Errorf("%s: a dry run's plan did not end as one: %w", op, errdef.ErrInvalidArgument)
		}
		return err
	})
}
