package fsck_test

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/internal/fsck"
	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/gen"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/layout"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/recovery"
)

// spyFS records the files opened for reading and what was read from them,
// and can slow reads down to make concurrent readers overlap.
type spyFS struct {
	fsio.FS
	delay time.Duration
	watch func(name string) bool // whose reads count in inFlight

	mu     sync.Mutex
	opened map[string]int
	read   map[string]int64

	inFlight, maxInFlight atomic.Int64
}

func newSpy(t *testing.T, dir string) *spyFS {
	t.Helper()
	fsys, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	return &spyFS{FS: fsys, opened: map[string]int{}, read: map[string]int64{}}
}

func (s *spyFS) Open(name string) (fsio.File, error) {
	f, err := s.FS.Open(name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.opened[name]++
	s.mu.Unlock()
	return &spyFile{File: f, fs: s, name: name}, nil
}

type spyFile struct {
	fsio.File
	fs   *spyFS
	name string
}

func (f *spyFile) Read(p []byte) (int, error) {
	watched := f.fs.watch != nil && f.fs.watch(f.name)
	if watched {
		n := f.fs.inFlight.Add(1)
		for {
			m := f.fs.maxInFlight.Load()
			if n <= m || f.fs.maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(f.fs.delay)
		defer f.fs.inFlight.Add(-1)
	}
	k, err := f.File.Read(p)
	f.fs.mu.Lock()
	f.fs.read[f.name] += int64(k)
	f.fs.mu.Unlock()
	return k, err
}

func openJournal(t *testing.T, dir string) *journal.DB {
	t.Helper()
	db, err := journal.Open(filepath.Join(dir, protocol.JournalFile), journal.Options{ReadOnly: true, LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// manifests returns the blobs of dir that are image manifests.
func manifests(t *testing.T, dir string) map[digest.Digest]bool {
	t.Helper()
	out := map[digest.Digest]bool{}
	for _, d := range blobFiles(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(layout.BlobPath(d))))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), `"schemaVersion"`) { // configs have none
			out[d] = true
		}
	}
	return out
}

// TestQuickReadsNoLayer: the quick check opens index.json, oci-layout and
// each manifest once, and no other blob (configs and layers are checked by
// their size); the deep check reads every blob file to the end, once.
func TestQuickReadsNoLayer(t *testing.T) {
	ctx := context.Background()
	dir := adopted(t, gen.Spec{Images: 12, LayerSize: 4096, BaseSets: 3})
	ms := manifests(t, dir)
	spy := newSpy(t, dir)
	rep, err := fsck.Check(ctx, spy, openJournal(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Images != 12 {
		t.Fatalf("check: %+v", rep)
	}
	for name, n := range spy.opened {
		d, isBlob := strings.CutPrefix(name, "blobs/sha256/")
		switch {
		case !isBlob && (name == layout.IndexFile || name == layout.LayoutFile) && n == 1:
		case isBlob && ms[digest.NewDigestFromEncoded(digest.SHA256, d)] && n == 1:
		default:
			t.Errorf("the quick check opened %s %d times", name, n)
		}
	}
	for d := range ms {
		if spy.opened[layout.BlobPath(d)] != 1 {
			t.Errorf("manifest %s not read once", d)
		}
	}

	spy = newSpy(t, dir)
	rep, err = fsck.CheckWith(ctx, spy, openJournal(t, dir), &recovery.CheckOptions{Deep: true})
	if err != nil || !rep.OK() {
		t.Fatalf("deep check: %v %+v", err, rep)
	}
	for _, d := range blobFiles(t, dir) {
		p := layout.BlobPath(d)
		fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil {
			t.Fatal(err)
		}
		opens := 1
		if ms[d] {
			opens = 2 // walked, then hashed
		}
		if spy.opened[p] != opens || spy.read[p] != fi.Size()*int64(opens) {
			t.Errorf("%s: opened %d times, %d bytes read, want %d and %d", p, spy.opened[p], spy.read[p], opens, fi.Size()*int64(opens))
		}
	}
}

// TestDeepUsesEveryCore: by default the deep check hashes as many blobs at
// once as there are cores (GOMAXPROCS), each through one buffer; --workers
// (Workers) sets another number.
func TestDeepUsesEveryCore(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	ctx := context.Background()
	dir := adopted(t, gen.Spec{Images: 6, LayerSize: 64 << 10, BaseSets: 2})
	ms := manifests(t, dir)
	for _, tc := range []struct{ workers, want int }{{0, 4}, {1, 1}, {3, 3}} {
		spy := newSpy(t, dir)
		// Manifests are read ahead of the walk (on every core too); count
		// the other blobs, which only hashing reads.
		spy.watch = func(name string) bool {
			d, ok := strings.CutPrefix(name, "blobs/sha256/")
			return ok && !ms[digest.NewDigestFromEncoded(digest.SHA256, d)]
		}
		spy.delay = 2 * time.Millisecond
		rep, err := fsck.CheckWith(ctx, spy, nil, &recovery.CheckOptions{Deep: true, Workers: tc.workers})
		if err != nil || rep.Deep == nil || rep.Deep.HashedFiles != rep.Deep.Files {
			t.Fatalf("deep check: %v %+v", err, rep)
		}
		if got := spy.maxInFlight.Load(); got != int64(tc.want) {
			t.Errorf("workers %d: %d blobs read at once, want %d", tc.workers, got, tc.want)
		}
	}
}

// TestDeepMemoryBounded: hashing streams each blob through a fixed buffer:
// a 512 MiB blob (sparse: it costs no disk) makes the deep check allocate
// no more than a small one does, far less than the blob.
func TestDeepMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("hashes 512 MiB")
	}
	ctx := context.Background()
	dir := adopted(t, gen.Spec{Images: 2})
	big := digest.FromString("a big orphan that lies")
	p := filepath.Join(dir, filepath.FromSlash(layout.BlobPath(big)))
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(512 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	fsys, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	rep, err := fsck.CheckWith(ctx, fsys, nil, &recovery.CheckOptions{Deep: true})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if mm := kinds(rep, recovery.KindDigestMismatch); len(mm) != 1 || mm[0].Digest != big.String() || rep.Deep.HashedBytes < 512<<20 {
		t.Fatalf("deep check: %v %+v", rep.Problems, rep.Deep)
	}
	// Every byte allocated, as if none were freed: an upper bound of the
	// most held at once.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("the deep check of a 512 MiB blob allocated %d MiB", alloc>>20)
	}
}
