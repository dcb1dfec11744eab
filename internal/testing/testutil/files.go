package testutil

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
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
