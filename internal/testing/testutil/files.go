package testutil

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// WalkRel walks the tree under dir as filepath.WalkDir does, calling fn
// with the path of each entry relative to dir, slash-separated ("." for dir
// itself), and its path p; an error of the walk stops it and is returned,
// as is an error of fn (filepath.SkipDir skips a directory).
func WalkRel(dir string, fn func(rel, p string, d fs.DirEntry) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		return fn(filepath.ToSlash(rel), p, d)
	})
}

// CopyFile copies the regular file src to dst, which must not exist yet,
// with the permissions perm.
func CopyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	syscall.ForkLock.RLock() // see writeUnforked
	defer syscall.ForkLock.RUnlock()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// writeUnforked writes a file that a test may watch (WatchFiles) while no
// child process can be forked: a child of a parallel test would close the
// inherited descriptor at its exec, after the watch started, which the
// watch reports as a write nobody made. CopyFile does the same.
func writeUnforked(path string, b []byte, perm fs.FileMode) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	return os.WriteFile(path, b, perm)
}
