package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ocistore/ocistore/internal/errdef"
	"github.com/ocistore/ocistore/internal/fsio"
)

// Readers' copies (DESIGN.md §17.1).
//
// bbolt commits by writing the pages of the new version where the current
// one does not live (pages that no committed version still needs), then one
// of its two meta pages, which points at them. A copy of the file taken
// while neither meta page changed is therefore the last committed version,
// whole: the pages it needs were written before that meta page and are not
// rewritten until a later commit, which would change a meta page. Readers
// that must never wait for a writer (fsck, du, journal, dry runs) open such
// a copy (Options.Snapshot).

// snapshotTries is how many copies a snapshot takes before it waits for
// the writer instead: each retry means a commit landed during the copy.
const snapshotTries = 20

// openSnapshot returns a memory file holding the journal at path as its
// last commit left it. When the writer commits during every one of
// snapshotTries copies, it takes the readers' shared lock, waiting up to
// lockTimeout, and copies under it.
func openSnapshot(path string, lockTimeout time.Duration) (*os.File, error) {
	mem, err := fsio.CopyStable(path, metaHead(path), snapshotTries)
	if errors.Is(err, fsio.ErrUnstable) {
		mem, err = fsio.CopyLocked(context.Background(), path, lockTimeout)
		if errors.Is(err, fsio.ErrHeld) {
			err = fmt.Errorf("%w: %w", errdef.ErrLocked, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("journal %s: snapshot: %w", path, err)
	}
	return mem, nil
}

// metaHead is the length of the two meta pages at the start of the
// journal at path: two pages of the size its first meta page gives, or,
// when that page cannot be read (torn by a commit in progress), of the
// largest page size bbolt uses.
func metaHead(path string) int64 {
	const largest = 64 << 10
	f, err := os.Open(path)
	if err != nil {
		return 2 * largest
	}
	defer f.Close()
	if m, ok := readMeta(f, 0); ok && m.pageSize <= largest {
		return 2 * int64(m.pageSize)
	}
	return 2 * largest
}

// Busy reports whether a writer (another open of the journal read-write,
// in this process or another) holds the journal at path now. It does not
// wait and keeps no lock.
func Busy(path string) (bool, error) { return fsio.Busy(path) }

// LastTxID is the id of the last commit of the journal at path, as its
// valid meta pages say, read without a lock; 0 when it has none (missing,
// empty or unreadable). Two reads that return the same id saw no commit
// in between.
func LastTxID(path string) uint64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	if m := bestMeta(f); m != nil {
		return m.txid
	}
	return 0
}
