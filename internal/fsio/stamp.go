package fsio

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"syscall"
)

// Stamp identifies one version of a file cheaply: a rename gives a new
// inode, an in-place rewrite new change times. Equal stamps mean the same
// content for every writer that does not forge timestamps. DESIGN.md §9
// says where the store relies on it (and where a stamp taken too soon
// after a change is not trusted alone).
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

// IsZero reports whether s is no stamp (a file that could not be read).
func (s Stamp) IsZero() bool { return s == Stamp{} }

// MarshalBinary encodes s in 32 bytes, big endian.
func (s Stamp) MarshalBinary() ([]byte, error) {
	b := make([]byte, 32)
	binary.BigEndian.PutUint64(b[0:], s.Ino)
	binary.BigEndian.PutUint64(b[8:], s.Size)
	binary.BigEndian.PutUint64(b[16:], uint64(s.Mtime))
	binary.BigEndian.PutUint64(b[24:], uint64(s.Ctime))
	return b, nil
}

// UnmarshalBinary decodes what MarshalBinary encoded.
func (s *Stamp) UnmarshalBinary(b []byte) error {
	if len(b) != 32 {
		return fmt.Errorf("stamp: %d bytes, want 32", len(b))
	}
	*s = Stamp{
		Ino:   binary.BigEndian.Uint64(b[0:]),
		Size:  binary.BigEndian.Uint64(b[8:]),
		Mtime: int64(binary.BigEndian.Uint64(b[16:])),
		Ctime: int64(binary.BigEndian.Uint64(b[24:])),
	}
	return nil
}
