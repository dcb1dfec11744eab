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
