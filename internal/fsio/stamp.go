package fsio

import (
	"io/fs"
	"syscall"
)

// Stamp identifies one version of a file cheaply: a rename gives a new
// inode, an in-place rewrite new change times. Equal stamps mean the same
// content for every writer that does not forge timestamps.
type Stamp struct {
	Ino, Size    uint64
	Mtime, Ctime int64
}

// StampOf returns the stamp of fi.
func StampOf(fi fs.FileInfo) Stamp {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Stamp{Size: uint64(fi.Size()), Mtime: fi.ModTime().UnixNano()}
	}
	return Stamp{Ino: st.Ino, Size: uint64(st.Size), Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano()}
}

// StampFile returns the stamp of name (zero when it cannot be read).
func StampFile(fsys FS, name string) Stamp {
	fi, err := fsys.Lstat(name)
	if err != nil {
		return Stamp{}
	}
	return StampOf(fi)
}
