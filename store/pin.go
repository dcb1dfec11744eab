package store

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/journal"
)

// pinReason returns why nothing may be freed at now (docs/DESIGN.md §8.2), "" when freeing is
// allowed. The places that unlink blobs (a transaction's commit, GC,
// prune through the transaction, repair's drop of broken entries) ask it
// in the journal transaction that plans the unlinks; when it says no, the
// blobs stay as orphans for a later GC. Two things pin:
//
//   - A journal rebuilt without the leases of the one it replaced (they
//     could not be read) is pinned for RebuildPin: the blobs of an unknown
//     lease are unknown.
//   - Unknown means pinned: while a live manifest or index cannot be
//     followed (too large, unreadable, malformed, nested too deep), any
//     blob could be in its closure. The pin lifts once every closure is
//     known again (the image fixed, removed, or dropped by fsck --repair
//     --drop-broken).
func pinReason(tx *journal.Tx, now time.Time) string {
	if until, since := tx.PinnedUntil(); now.Before(until) {
		return fmt.Sprintf("journal rebuilt at %s without its leases; nothing is freed until %s",
			since.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
	}
	if tx.UnknownRefs() == 0 {
		return ""
	}
	if !tx.UnknownCounted() {
		return "the journal has not counted which manifests cannot be followed yet; nothing is freed until it has"
	}
	unknown, err := tx.UnknownClosures()
	if err != nil {
		return fmt.Sprintf("the refcounts cannot be read (%v); nothing is freed", err)
	}
	return unknownReason(unknown)
}

// unknownReason describes the unknown closures for a person.
func unknownReason(unknown map[digest.Digest]string) string {
	ds := make([]digest.Digest, 0, len(unknown))
	for d := range unknown {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	const show = 3
	var b strings.Builder
	fmt.Fprintf(&b, "%d manifest(s) of the layout cannot be followed, so what they reference is unknown and nothing is freed", len(ds))
	for i, d := range ds {
		if i == show {
			fmt.Fprintf(&b, "; and %d more", len(ds)-show)
			break
		}
		fmt.Fprintf(&b, "; %s: %s", d, unknown[d])
	}
	b.WriteString(" (fix or remove those images: ocistore rm, or fsck --repair --drop-broken)")
	return b.String()
}
