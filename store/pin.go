package store

import (
	"fmt"
	"time"

	"github.com/ocistore/ocistore/journal"
)

// pinReason returns why nothing may be freed at now, "" when freeing is
// allowed. The places that unlink blobs (a transaction's commit, GC,
// prune through the transaction, repair's drop of broken entries) ask it
// in the journal transaction that plans the unlinks; when it says no, the
// blobs stay as orphans for a later GC.
//
// A journal rebuilt without the leases of the one it replaced (they could
// not be read) is pinned for RebuildPin: the blobs of an unknown lease are
// unknown.
func pinReason(tx *journal.Tx, now time.Time) string {
	if until, since := tx.PinnedUntil(); now.Before(until) {
		return fmt.Sprintf("journal rebuilt at %s without its leases; nothing is freed until %s",
			since.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
	}
	return ""
}
