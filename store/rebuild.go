package store

import "github.com/ocistore/ocistore/internal/protocol"

// RebuildPin is how long nothing is freed (by a transaction, GC or prune)
// after the journal was rebuilt without the leases of the one it replaced
// (see protocol.RebuildPin).
const RebuildPin = protocol.RebuildPin
