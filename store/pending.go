package store

import (
	"errors"
	"path/filepath"
	"time"

	"github.com/ocistore/ocistore/internal/errdef"
	ij "github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/journal"
)

// PendingRecords reads the unfinished transaction records of the layout in
// dir (there are none between the transactions of a healthy store) without
// opening it as a store, so without running recovery: what `ocistore
// journal` shows. A layout ocistore has not adopted has no journal:
// ErrNotFound (one on a shared blob directory whose journal does not know
// it yet has no record). It reads the journal as its last commit left it,
// without waiting for a writer (see journal.Read; lockTimeout, zero for
// DefaultLockTimeout, bounds the wait of its rare fallback).
func PendingRecords(dir string, lockTimeout time.Duration) ([]journal.Record, error) {
	if lockTimeout == 0 {
		lockTimeout = DefaultLockTimeout
	}
	c, err := journal.Read(dir, lockTimeout)
	if errors.Is(err, errdef.ErrNotFound) {
		if shared, _ := protocol.SharedBlobDirOf(dir); shared != "" {
			return nil, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return c.Pending, nil
}

// InFlight reports whether a writer (this process's or another's) holds
// the journal of the layout in dir now: a pending record PendingRecords
// returns is then likely a transaction in flight, not one a crash
// interrupted. It does not wait and takes no lock that outlives it.
func InFlight(dir string) (bool, error) {
	root := dir
	shared, err := protocol.SharedBlobDirOf(dir)
	if err != nil {
		return false, err
	}
	if shared != "" {
		root = shared
	}
	if !protocol.JournalAtIsRegular(root) {
		return false, nil // never opened through a symlink; fsck reports it
	}
	return ij.Busy(filepath.Join(root, protocol.JournalFile))
}
