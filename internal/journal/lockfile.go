package journal

import (
	"errors"
	"fmt"
	"os"
	"time"

	bolterr "go.etcd.io/bbolt/errors"

	"github.com/ocistore/ocistore/internal/fsio"
)

// Every judgement of a journal file, that it is damaged above all, is made
// under its lock, on the file that is at its path (docs/DESIGN.md §4.1).
//
// bbolt takes its flock only after it opened the file, and ocistore checked
// the file before bbolt saw it (checkFileAt): unlocked, that check could read
// a meta page in the middle of another process's commit and take the live
// journal for a truncated one, which the open then moved aside and rebuilt
// while its writer still held it (two writers, each with its own journal).
// So the file is opened and locked here first, checked under the lock, and
// handed to bbolt, whose own flock on the same open file description is
// then granted at once. And a lock taken on a journal that was moved aside
// (rebuilt) while the open waited is worth nothing: the open checks that
// the file it locked is still the one at the path, and opens it again when
// it is not.

// lockFile opens the journal at path with flag and takes its flock,
// exclusive or shared, waiting up to timeout (zero: forever, as bbolt's
// Options.Timeout), on the file that is at path when it gets it
// (fsio.OpenLocked). A lock it could not get in time is bbolt's
// ErrTimeout, which classifyOpenErr makes ErrLocked.
func lockFile(path string, flag int, exclusive bool, timeout time.Duration) (*os.File, error) {
	f, err := fsio.OpenLocked(path, flag, exclusive, timeout)
	if errors.Is(err, fsio.ErrLockTimeout) {
		return nil, bolterr.ErrTimeout
	}
	if errors.Is(err, fsio.ErrNotRegular) {
		return nil, fmt.Errorf("journal %s: not a regular file: %w", path, err)
	}
	return f, err
}
