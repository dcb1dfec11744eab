package fsio

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Owners of temp files (DESIGN.md §12).
//
// Whoever writes files that only it may remove while it lives (an ingest's
// temp file, the files a transaction put in the trash) names them after a
// token of its own and, for as long as it lives, holds an exclusive lock
// on its owner file, <dir>/<token> (NewOwner). A cleaner judges the owner
// gone only when it can take that lock itself, or when the owner file does
// not exist: the owner makes it, locks it and checks that the name is still
// the file it locked before it names any file after its token, and keeps it
// until it has none left; a token is 128 random bits, never used twice.
//
// The lock is a flock on an open file description: the kernel drops it when
// the last descriptor is closed, which a process's end does whatever ends it
// (SIGKILL included), and it holds across PID namespaces (a container that
// shares the layout), where a process ID means nothing. On NFS, Linux
// emulates flock with byte-range locks of the server (NLM or NFSv4): they
// hold across the clients of one server, but a client that loses its
// lease or a server that loses its locks on a restart may let a cleaner
// take the lock of an owner that is alive. The journal's writer lock is a
// flock on the same file system, so nothing here asks more of it than
// ocistore already does.

// ErrHeld: the lock of a file is held by another open file description
// (FS.Lock): its owner is alive.
var ErrHeld = errors.New("locked by another")

// FileLock is a lock taken by FS.Lock.
type FileLock interface {
	// Unlock releases the lock.
	Unlock() error
}

// TokenLen is the length of an owner's token: 128 random bits in hex.
const TokenLen = 32

// IsToken reports whether s is an owner's token: TokenLen lowercase hex
// digits.
func IsToken(s string) bool {
	if len(s) != TokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Owner is a live owner of temp files: its owner file, locked.
type Owner struct {
	fsys  FS
	name  string
	token string
	lock  FileLock
}

// ownerTries bounds the tokens NewOwner draws: another one is drawn only
// when a cleaner took the new owner file's lock first (it judged it an
// owner's that is gone, in the instant between its creation and the lock).
const ownerTries = 8

// NewOwner makes a new owner file in the directory dir (made first when
// missing; its parent must exist) and holds its lock until Release. It
// syncs dir once: that is not needed for safety (a crash that loses the
// owner file leaves files with no owner file, which count as an owner's
// that is gone, as they are), but it keeps the entry out of what any later
// crash may lose, so that the crash states of every later step (the crash
// tests enumerate them) are no more than without it. A failed sync is a
// SyncError.
func NewOwner(fsys FS, dir string) (*Owner, error) {
	if _, err := MkdirDurable(fsys, dir); err != nil {
		return nil, err
	}
	var err error
	for range ownerTries {
		tok := newToken()
		name := dir + "/" + tok
		var l FileLock
		l, err = fsys.Lock(name, true)
		switch {
		case err == nil:
			if err := fsys.SyncDir(dir); err != nil {
				err = &SyncError{Path: dir, Err: err}
				return nil, errors.Join(err, fsys.Remove(name), l.Unlock())
			}
			return &Owner{fsys: fsys, name: name, token: tok, lock: l}, nil
		case errors.Is(err, ErrHeld):
			// A cleaner has it: that token is spent. A cleaner that
			// removes files removes it too; fsck does not.
			if rerr := fsys.Remove(name); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				return nil, rerr
			}
		case errors.Is(err, fs.ErrNotExist):
			// Removed by a cleaner before our lock, or dir is gone:
			// the next try says which.
		default:
			return nil, err
		}
	}
	return nil, fmt.Errorf("make an owner file in %s: %w", dir, err)
}

func newToken() string {
	var b [TokenLen / 2]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// Token is the owner's token: its files' names start with it.
func (o *Owner) Token() string { return o.token }

// Release removes the owner file and drops its lock: from then on, files
// named after the token are any cleaner's to remove. The removal is not
// synced: an owner file that a crash brings back is not locked, so its
// owner counts as gone.
func (o *Owner) Release() error {
	err := o.fsys.Remove(o.name)
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return errors.Join(err, o.lock.Unlock())
}

// osLock is a flock held on an open file of the OS.
type osLock struct{ f *os.File }

func (l osLock) Unlock() error { return l.f.Close() }

// Lock implements FS.Lock with flock(2). A file that cannot be opened for
// writing (a read-only mount, no permission) is locked through a
// descriptor open for reading, which serves everywhere but on NFS (whose
// emulation of flock needs write access for an exclusive lock: there, the
// error is returned).
func (o *OS) Lock(name string, create bool) (FileLock, error) {
	flags := syscall.O_RDWR
	if create {
		flags |= syscall.O_CREAT | syscall.O_EXCL
	}
	f, fi, err := o.openAt(name, flags, 0o644)
	if !create && (errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES)) {
		f, fi, err = o.openAt(name, syscall.O_RDONLY, 0)
	}
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			err = ErrHeld
		}
		return nil, &fs.PathError{Op: "flock", Path: name, Err: err}
	}
	// Between the open and the lock, a cleaner that held the lock may
	// have removed the name: a lock on a file nobody can find is worth
	// nothing.
	if now, err := o.root.Lstat(name); err != nil || !os.SameFile(fi, now) {
		f.Close()
		return nil, &fs.PathError{Op: "flock", Path: name, Err: fs.ErrNotExist}
	}
	return osLock{f}, nil
}

// Lock locks a file of the layout or of the shared blob directory.
func (s *Shared) Lock(name string, create bool) (FileLock, error) {
	f, rel := s.route(name)
	return f.Lock(rel, create)
}
