package store

import (
	"time"

	"github.com/ocistore/ocistore/internal/fsio"
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

// SetTestSyncReclaim makes the store unlink its trash in the call that
// fills it instead of in the background (crash tests).
func SetTestSyncReclaim(o *Options) { o.syncReclaim = true }

// SetTestReserveSize makes the store's space reserve n bytes instead of
// the size reserveWant computes (crash tests: a small reserve keeps the
// snapshots of an in-memory file system cheap).
func SetTestReserveSize(o *Options, n int64) { o.reserveSize = n }
