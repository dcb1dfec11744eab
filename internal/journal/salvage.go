package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	bolterr "go.etcd.io/bbolt/errors"

	"github.com/ocistore/ocistore/internal/errdef"
)

// Salvaged is what could still be read from a damaged journal: enough to
// finish the transactions it held and to restore index.json, before the
// database is rebuilt from the layout (DESIGN.md §7.4, §14.2).
type Salvaged struct {
	// Pending are the records that still decode, in transaction order.
	Pending []*Record
	// Indexes are the stored copies of index.json that still hash to their
	// key: the last committed one and the new index of each pending record.
	Indexes map[digest.Digest][]byte
	// Committed is the digest of the last committed index.json, "" when
	// it could not be read.
	Committed digest.Digest
	// Schema is the database's schema version, 0 when it could not be
	// read. Above SchemaVersion (Newer), a newer ocistore wrote it.
	Schema uint64
	// Leases are the leases that could be read whole (times and blobs),
	// in id order, expired or not.
	Leases []SalvagedLease
	// LeasesLost is set when leases may have been lost: the leases bucket
	// is missing from a database of a version that has one (or of an
	// unknown version), could not be read, or a lease in it did not
	// decode. The blobs of a lost lease are unknown.
	LeasesLost bool
	// Problems lists what could not be read.
	Problems []error
}

// SalvagedLease is a lease read from a damaged database, with its blobs.
type SalvagedLease struct {
	Lease
	Blobs []digest.Digest
}

// Newer reports whether a newer ocistore wrote the database (its schema
// version is above SchemaVersion): it must be refused, not rebuilt, unless
// the caller was told to rebuild it.
func (s *Salvaged) Newer() bool { return s.Schema > SchemaVersion }

// NewerError is the error for a Newer database at path.
func (s *Salvaged) NewerError(path string) error { return newerError(path, s.Schema) }

// Salvage reads what it can from the open database, skipping what does not
// decode and surviving page corruption (bbolt panics on some; a page beyond
// the end of a truncated file faults): see SalvageFile.
func (d *DB) Salvage() *Salvaged {
	s := &Salvaged{Indexes: map[digest.Digest][]byte{}}
	err := d.View(func(tx *Tx) error {
		salvageTx(tx.tx, s)
		return nil
	})
	if err != nil {
		s.Problems = append(s.Problems, err)
	}
	return s
}

// SalvageFile opens the database at path read-only (shared lock, waiting
// at most lockTimeout) and salvages it. It fails when bbolt cannot open the
// file at all (both meta pages bad, or not a database).
func SalvageFile(path string, lockTimeout time.Duration) (s *Salvaged, err error) {
	if fi, err := os.Lstat(path); err != nil {
		return nil, fmt.Errorf("journal %s: %w", path, err)
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("journal %s: not a regular file: %w", path, errdef.ErrCorrupt)
	}
	if lockTimeout <= 0 {
		lockTimeout = time.Nanosecond
	}
	f, err := lockFile(path, os.O_RDONLY, false, lockTimeout)
	if err != nil {
		return nil, classifyOpenErr(path, err)
	}
	return salvageFrom(f, path)
}

// salvageFrom salvages the journal f, read-only, and closes it: the
// journal at path under its lock, or a private copy of it.
func salvageFrom(f *os.File, path string) (s *Salvaged, err error) {
	// A read-only open reads neither the freelist nor, unless asked to,
	// the pages past the end: it can still read what is left.
	defer func() {
		if err != nil {
			f.Close() // bbolt closed it, unless it panicked (a second Close does nothing)
		}
	}()
	if err := checkFileAt(f, path); err != nil && !errors.Is(err, errTruncated) && !errors.Is(err, errFreelist) {
		return nil, err
	}
	defer recoverCorrupt(path, &err)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	bdb, err := openBolt(path, &bolt.Options{ReadOnly: true, Timeout: time.Nanosecond,
		OpenFile: func(string, int, os.FileMode) (*os.File, error) { return f, nil }})
	if err != nil {
		return nil, classifyOpenErr(path, err)
	}
	defer bdb.Close()
	return (&DB{bolt: bdb, path: path}).Salvage(), nil
}

// salvageTx reads each bucket in its own recover, so that a bad page in
// one does not lose the others.
func salvageTx(tx *bolt.Tx, s *Salvaged) {
	try := func(what string, fn func()) {
		defer func() {
			if r := recover(); r != nil {
				s.Problems = append(s.Problems, fmt.Errorf("%s: %w: panic: %v", what, errdef.ErrCorrupt, r))
			}
		}()
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		fn()
	}
	try("meta", func() {
		if m := tx.Bucket(bMeta); m != nil {
			if v := m.Get(kSchema); len(v) == 8 {
				s.Schema = binary.BigEndian.Uint64(v)
			}
			if d := digest.Digest(m.Get(kIndex)); d.Validate() == nil {
				s.Committed = d
			}
		}
	})
	s.LeasesLost = true // until every lease is read
	try("leases", func() { s.LeasesLost = !salvageLeases(tx, s) })
	try("pending", func() {
		b := tx.Bucket(bPending)
		if b == nil {
			return
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			r, err := Decode(v)
			if err != nil {
				s.Problems = append(s.Problems, fmt.Errorf("pending record %x: %w", k, err))
				continue
			}
			s.Pending = append(s.Pending, r)
		}
	})
	sort.Slice(s.Pending, func(i, j int) bool { return s.Pending[i].ID < s.Pending[j].ID })
	try("indexes", func() {
		b := tx.Bucket(bIndexes)
		if b == nil {
			return
		}
		raw := map[string][]byte{}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v == nil { // a whole copy in a bucket of its own
				v = copies{b}.get(k)
			}
			raw[string(k)] = bytes.Clone(v)
		}
		get := func(k []byte) []byte { return raw[string(k)] }
		keys := make([]string, 0, len(raw))
		for k := range raw {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			d := digest.Digest(k)
			v, err := resolveIndex(get, d)
			if err != nil || d.Validate() != nil || d.Algorithm().FromBytes(v) != d {
				s.Problems = append(s.Problems, fmt.Errorf("stored index %q does not hash to its key: %w", k, errdef.ErrCorrupt))
				continue
			}
			s.Indexes[d] = v
		}
	})
}

// salvageLeases reads every lease that decodes whole into s.Leases and
// reports whether none was lost.
func salvageLeases(tx *bolt.Tx, s *Salvaged) bool {
	lb := tx.Bucket(bLeases)
	if lb == nil {
		// Version 1 had no leases; a database whose version is unknown
		// may have had some.
		if s.Schema == 0 || s.Schema >= 2 {
			s.Problems = append(s.Problems, fmt.Errorf("no leases bucket: %w", errdef.ErrCorrupt))
			return false
		}
		return true
	}
	whole := true
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		b := lb.Bucket(k)
		if v != nil || b == nil {
			s.Problems = append(s.Problems, fmt.Errorf("lease %q: not a bucket: %w", k, errdef.ErrCorrupt))
			whole = false
			continue
		}
		l, err := decodeLease(k, b)
		if err != nil {
			s.Problems = append(s.Problems, err)
			whole = false
			continue
		}
		sl := SalvagedLease{Lease: l}
		ok := true
		bc := b.Bucket(bLeaseBlobs).Cursor()
		for d, _ := bc.First(); d != nil; d, _ = bc.Next() {
			if digest.Digest(d).Validate() != nil {
				s.Problems = append(s.Problems, fmt.Errorf("lease %q: blob %q: %w", k, d, errdef.ErrCorrupt))
				ok = false
				break
			}
			sl.Blobs = append(sl.Blobs, digest.Digest(d))
		}
		if !ok || ValidLeaseID(l.ID) != nil {
			whole = false
			continue
		}
		s.Leases = append(s.Leases, sl)
	}
	return whole
}

var (
	// errTruncated: the file is shorter than its meta page says it is.
	errTruncated = errors.New("truncated")
	// errFreelist: the freelist page is damaged.
	errFreelist = errors.New("bad freelist page")
)

// checkFileAt reads the two meta pages of a bbolt file and checks that the
// file is as long as the valid meta with the highest transaction id says
// (pages up to its high-water mark). bbolt itself does not check this: it
// maps the missing pages and panics or faults when it reads them. A file
// with no valid meta page is left for bbolt to refuse. An empty or missing
// file passes.
func checkFileAt(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	best := bestMeta(f)
	if best == nil {
		return nil
	}
	if need := int64(best.pgid) * int64(best.pageSize); fi.Size() < need {
		return fmt.Errorf("journal %s: %w: %w: %d bytes, its meta page (txn %d) needs %d",
			path, errdef.ErrCorrupt, errTruncated, fi.Size(), best.txid, need)
	}
	// bbolt panics on a freelist page that is not one.
	if best.freelist != noFreelist {
		var hdr [16]byte
		if best.freelist >= best.pgid {
			return fmt.Errorf("journal %s: %w: %w %d: beyond the last page %d", path, errdef.ErrCorrupt, errFreelist, best.freelist, best.pgid)
		}
		if _, err := f.ReadAt(hdr[:], int64(best.freelist)*int64(best.pageSize)); err != nil {
			return fmt.Errorf("journal %s: %w: %w %d: %v", path, errdef.ErrCorrupt, errFreelist, best.freelist, err)
		}
		if flags := binary.LittleEndian.Uint16(hdr[8:]); flags != freelistPageFlag {
			return fmt.Errorf("journal %s: %w: %w %d: flags %#x", path, errdef.ErrCorrupt, errFreelist, best.freelist, flags)
		}
		// Its ids must fit in its pages: a count of 0xFFFF means the first
		// id slot holds the count.
		count, overflow := uint64(binary.LittleEndian.Uint16(hdr[10:])), uint64(binary.LittleEndian.Uint32(hdr[12:]))
		room := (overflow+1)*uint64(best.pageSize) - 16
		if count == 0xFFFF {
			var c [8]byte
			if _, err := f.ReadAt(c[:], int64(best.freelist)*int64(best.pageSize)+16); err != nil {
				return fmt.Errorf("journal %s: %w: %w %d: %v", path, errdef.ErrCorrupt, errFreelist, best.freelist, err)
			}
			count, room = binary.LittleEndian.Uint64(c[:]), room-8
		}
		if best.freelist+overflow >= best.pgid || count > room/8 {
			return fmt.Errorf("journal %s: %w: %w %d: %d ids in %d pages", path, errdef.ErrCorrupt, errFreelist, best.freelist, count, overflow+1)
		}
	}
	return nil
}

// metaPage holds the fields of a bbolt meta page that checkFileAt needs.
// bestMeta is the valid meta page of f with the highest txid, nil when
// neither is valid.
func bestMeta(f io.ReaderAt) *metaPage {
	var best *metaPage
	m0, ok0 := readMeta(f, 0)
	if ok0 {
		best = &m0
	}
	// Page 1 is one page after page 0, whose size only a valid meta tells.
	sizes := []uint32{4096, 16384, 65536}
	if ok0 {
		sizes = []uint32{m0.pageSize}
	}
	for _, ps := range sizes {
		if m1, ok := readMeta(f, int64(ps)); ok {
			if best == nil || m1.txid > best.txid {
				best = &m1
			}
			break
		}
	}
	return best
}

type metaPage struct {
	pageSize uint32
	freelist uint64
	pgid     uint64
	txid     uint64
}

// bbolt's meta page: a 16-byte page header, then magic, version, page
// size, flags (u32 each), root bucket (2 x u64), freelist, high-water mark
// and txid (u64 each), then an FNV-64a checksum of everything before it,
// all in the machine's byte order (little endian on every platform Go
// supports here but s390x and ppc64).
const (
	metaOffset  = 16
	metaSumLen  = 56
	boltMagic   = 0xED0CDAED
	boltVersion = 2

	freelistPageFlag = 0x10
	noFreelist       = ^uint64(0)
)

func readMeta(f io.ReaderAt, off int64) (metaPage, bool) {
	var b [metaSumLen + 8]byte
	if _, err := f.ReadAt(b[:], off+metaOffset); err != nil {
		return metaPage{}, false
	}
	le := binary.LittleEndian
	h := fnv.New64a()
	h.Write(b[:metaSumLen])
	if le.Uint32(b[0:]) != boltMagic || le.Uint32(b[4:]) != boltVersion || le.Uint64(b[metaSumLen:]) != h.Sum64() {
		return metaPage{}, false
	}
	m := metaPage{pageSize: le.Uint32(b[8:]), freelist: le.Uint64(b[32:]), pgid: le.Uint64(b[40:]), txid: le.Uint64(b[48:])}
	if m.pageSize < 512 || m.pageSize&(m.pageSize-1) != 0 {
		return metaPage{}, false
	}
	return m, true
}

// openBolt is bolt.Open, with a panic or memory fault while bbolt reads a
// damaged file turned into an error wrapping errdef.ErrCorrupt.
// A panic can leave the file open, and locked, until the garbage collector
// finalizes it: checkFileAt refuses the damage known to make bbolt panic
// before it is opened, so this is the last line of defence only.
func openBolt(path string, o *bolt.Options) (bdb *bolt.DB, err error) {
	defer func() {
		if r := recover(); r != nil {
			bdb, err = nil, fmt.Errorf("%w: panic: %v", bolterr.ErrInvalid, r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return bolt.Open(path, 0o644, o)
}
