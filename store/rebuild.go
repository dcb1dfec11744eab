package store

import (
	"time"

	"github.com/ocistore/ocistore/internal/protocol"
)

// RebuildPin is how long nothing is freed (by a transaction, GC or prune)
// after the journal was rebuilt without the leases of the one it replaced
// (they could not be read): a lease's blobs are unknown then, so any
// unreferenced blob may be one of them. A day covers the leases operations
// take for themselves (an hour, renewed while they run) and the pulls of a
// cache.
const RebuildPin = 24 * time.Hour

// protocol.RebuildJournal pins for RebuildPin: this fails to compile when
// they differ.
const _ = uint64(RebuildPin-protocol.RebuildPin) + uint64(protocol.RebuildPin-RebuildPin)
