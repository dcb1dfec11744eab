package store

import (
	"time"

	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
)

// journalPath is the journal's file: in the layout, or in the shared blob
// directory.
func (s *Store) journalPath() string { return s.lay.JournalPath() }

// journalOptions are the options of every read-write open of the journal.
func (s *Store) journalOptions(timeout time.Duration) journal.Options {
	return journal.Options{LockTimeout: timeout, AfterCommit: s.opts.journalHook, CommitHook: s.opts.commitHook, Scope: s.lay.Scope}
}

// envFor is env for recovery under the lock db holds: with a shared blob
// directory, recovery counts the other layouts' references too.
func (s *Store) envFor(db *journal.DB) protocol.Env { return s.lay.Env(db, s.env()) }
