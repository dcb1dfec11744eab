package store

import (
	"context"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
)

// SetTestFS makes Open use f instead of the real file system (tests only).
func SetTestFS(o *Options, f fsio.FS) { o.fs = f }

// SetTestJournalHook makes the journal call fn after each durable change.
func SetTestJournalHook(o *Options, fn func()) { o.journalHook = fn }

// SetTestClock makes the store read the time from now.
func SetTestClock(o *Options, now func() time.Time) { o.now = now }

// HoldWriter takes the store's writer mutex, as a transaction in flight
// would, until release is called: changes made meanwhile queue for group
// commit.
func HoldWriter(s *Store) (release func()) {
	s.wmu.Lock()
	return s.wmu.Unlock
}

// QueuedChanges is the number of changes waiting for group commit.
func QueuedChanges(s *Store) int {
	s.group.Lock()
	defer s.group.Unlock()
	return len(s.group.queue)
}

// SetTestSharedFS makes Open, with SharedBlobDir set, use layout and blobs
// instead of the real directories (tests only).
func SetTestSharedFS(o *Options, layout, blobs fsio.FS) { o.sharedFS = [2]fsio.FS{layout, blobs} }

// SetTestTrashMin makes transactions of n blobs or more take them
// through the trash (protocol.Env.TrashMin; crash tests).
func SetTestTrashMin(o *Options, n int) { o.trashMin = n }

// SetTestCommitHook passes fn to the journal as its CommitHook (fault
// tests: a failed journal commit, code run right after one).
func SetTestCommitHook(o *Options, fn func(tx *journal.Tx) (after func() error, err error)) {
	o.commitHook = fn
}

// SetTestSyncReclaim makes the store unlink its trash in the call that
// fills it instead of in the background (crash tests).
func SetTestSyncReclaim(o *Options) { o.syncReclaim = true }

// SetTestReserveSize makes the store's space reserve n bytes instead of
// the size reserveWant computes (crash tests: a small reserve keeps the
// snapshots of an in-memory file system cheap).
func SetTestReserveSize(o *Options, n int64) { o.reserveSize = n }

// FinishCrafted journals a record that leaves index.json as it is and lists
// unlink, then finishes it as a transaction does after writing its index
// (protocol.Finish): the last guard against unlinking a blob the journal
// still counts, reached by no plan (a plan never lists one).
func FinishCrafted(ctx context.Context, s *Store, unlink []digest.Digest) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	db, cur, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer db.Close()
	rec := journal.Record{Op: "crafted", Time: time.Now().UTC(), OldIndex: cur.Digest, NewIndex: cur.Digest, Unlink: unlink}
	if err := db.Update(func(tx *journal.Tx) error { return tx.AddPending(&rec, cur.Bytes) }); err != nil {
		return err
	}
	return protocol.Finish(s.env(), db, &rec, fsio.StampFile(s.lay.FS, layout.IndexFile), crash.BlobUnlinked)
}
