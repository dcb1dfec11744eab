package store

import (
	"errors"
	"time"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/journal"
)

// PendingRecords reads the unfinished transaction records of the layout in
// dir (there are none between the transactions of a healthy store) without
// opening it as a store, so without running recovery: what `ocistore
// journal` shows. A layout ocistore has not adopted has no journal:
// ErrNotFound (one on a shared blob directory whose journal does not know
// it yet has no record). It waits up to lockTimeout for a writer (zero:
// DefaultLockTimeout).
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
