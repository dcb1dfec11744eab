package store

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/journal"
)

// pinReason says why no blob may be freed now, or "" when freeing is
// allowed. Unknown means pinned: while a live manifest or index cannot be
// followed (too large, unreadable, malformed, nested too deep), any blob
// could be in its closure, so nothing is freed. Blobs a transaction would
// have freed then stay on disk, unreferenced, for a GC once every closure
// is known again (the image fixed, removed, or dropped by fsck --repair
// --drop-broken).
func pinReason(tx *journal.Tx, now time.Time) string {
	_ = now
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
