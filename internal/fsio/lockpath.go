package fsio

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockPoll is how often OpenLocked tries a lock that is held again
// (bbolt's own retry interval).
const lockPoll = 50 * time.Millisecond

// ErrLockTimeout: OpenLocked could not take the lock in time.
var ErrLockTimeout = errors.New("lock held by another open")

// OpenLocked opens the file at path (an absolute path: the journal, which
// bbolt reads and writes itself) with flag, never following a symlink, and
// takes its flock, exclusive or shared, waiting up to timeout (zero:
// forever). It returns the file once it holds the lock on the file that is
// at path then: while it waits the path is opened again at each try, and a
// file that was renamed away or replaced between the open and the lock (a
// journal rebuilt meanwhile) is let go and the path opened again, so the
// lock is never one on a file nobody opens by its path any more. A lock
// not taken in time is ErrLockTimeout.
func OpenLocked(path string, flag int, exclusive bool, timeout time.Duration) (*os.File, error) {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		f, err := os.OpenFile(path, flag|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			if errors.Is(err, syscall.ELOOP) {
				return nil, &os.PathError{Op: "open", Path: path, Err: ErrNotRegular}
			}
			return nil, err
		}
		for {
			err = syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
			if err != syscall.EINTR {
				break
			}
		}
		if err == nil {
			same, serr := samePath(f, path)
			if serr != nil {
				f.Close()
				return nil, serr
			}
			if same {
				return f, nil
			}
			f.Close() // renamed away or replaced: the path again
			continue
		}
		f.Close()
		if err != syscall.EWOULDBLOCK {
			return nil, &os.PathError{Op: "flock", Path: path, Err: err}
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return nil, fmt.Errorf("%s: %w", path, ErrLockTimeout)
		}
		wait := lockPoll
		if !deadline.IsZero() {
			wait = min(wait, time.Until(deadline))
		}
		time.Sleep(max(wait, 0))
	}
}

// samePath reports whether f is the file at path now (a path with no file
// is not: the caller opens it again).
func samePath(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	now, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, now), nil
}
