// Package errdef holds the sentinel errors of ocistore. It imports nothing
// else of the project, so every layer can wrap these and every caller can
// test for them with errors.Is. The public store package re-exports them.
package errdef

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound: a reference, digest or blob does not exist.
	ErrNotFound = errors.New("not found")
	// ErrReferenced: a blob cannot be deleted alone while a manifest of the
	// layout references it.
	ErrReferenced = errors.New("referenced by a manifest")
	// ErrUploadOffset: a chunk of a resumable upload does not start where
	// the upload ends.
	ErrUploadOffset = errors.New("upload offset mismatch")
	// ErrInvalidDigest: a digest is malformed, uses an unknown algorithm or
	// tries to escape the blob directory.
	ErrInvalidDigest = errors.New("invalid digest")
	// ErrDigestMismatch: content does not hash to the digest it was stored or announced under.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: content is not of the size its descriptor says.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrCorrupt: a layout or journal file cannot be parsed or breaks the format.
	ErrCorrupt = errors.New("corrupt")
	// ErrJournalNewer: the journal was written by a newer ocistore (its
	// format version is above the one this build reads). It is refused,
	// never rebuilt, and left as it is: it does not wrap ErrCorrupt.
	ErrJournalNewer = errors.New("journal written by a newer ocistore")
	// ErrLocked: another process holds the layout's writer lock.
	ErrLocked = errors.New("locked by another process")
	// ErrDurability marks an error of an fsync or of a journal commit: the
	// state on disk is unknown, and the handle that saw it must be poisoned
	// (DESIGN.md §3.1).
	ErrDurability = errors.New("durability failure")
	// ErrPoisoned: an earlier fsync or journal commit failed; the handle refuses
	// writes until it is closed and opened again.
	ErrPoisoned = errors.New("store handle poisoned by an earlier durability failure; reopen it")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store closed")
	// ErrConflict: another tool changed index.json during a transaction: its
	// index stands, and the transaction's record is dropped with a recount
	// of the file (at once, or by the next recovery for a GC). Blobs taken
	// into the trash that the file reaches are put back; blobs unlinked in
	// place before the change was seen stay unlinked (DESIGN.md §4.3, §9.2).
	ErrConflict = errors.New("index.json changed by another tool during the transaction")
	// ErrReadOnly: a write on a store opened read-only.
	ErrReadOnly = errors.New("store opened read-only")
	// ErrInvalidArgument: a caller passed something unusable (empty reference, bad tag).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrMissingDependency: a manifest refers to a blob that is not in the layout.
	ErrMissingDependency = errors.New("missing dependency")
	// ErrTooLarge: a file is larger than the limit for its kind.
	ErrTooLarge = errors.New("too large")
	// ErrIncomplete: a transaction failed after its change took effect (its
	// new index.json was in place, or is journaled to be put there by
	// recovery): the change happened, but its cleanup (unlinking the blobs
	// it freed, clearing its record) is pending until recovery runs
	// (`ocistore recover`, or the next open or writer). Any other error of
	// a write means that nothing changed (DESIGN.md §4.3).
	ErrIncomplete = errors.New("change made, cleanup pending")
	// ErrNotLayout: a directory holds files but is not an OCI image layout.
	ErrNotLayout = errors.New("not an OCI image layout")
	// ErrLayoutMissing: the layout's directory does not exist (and the
	// caller did not ask for it to be created). It wraps ErrNotLayout, so
	// a test for ErrNotLayout matches it too.
	ErrLayoutMissing = fmt.Errorf("layout directory does not exist: %w", ErrNotLayout)
	// ErrRefused: a repair would remove every image of a layout, or act on
	// a layout whose blobs seem to live elsewhere (a shared blob directory
	// it was not told about), and was not forced. Nothing was changed.
	ErrRefused = errors.New("refused without force")
)
