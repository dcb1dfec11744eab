package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	ggcrlayout "github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	cilayout "go.podman.io/image/v5/oci/layout"
	"go.podman.io/image/v5/pkg/blobinfocache/none"
	citypes "go.podman.io/image/v5/types"
	"golang.org/x/sys/unix"
	orasoci "oras.land/oras-go/v2/content/oci"

	"github.com/ocistore/ocistore/store"
)

// A peer is one library driven through its public API. Its handle deletes
// tags one at a time (each call is a complete delete that frees the image's
// blobs) or as a batch (the peer's best path for many).
type peer struct {
	name string
	// api is how the peer deletes, for the report.
	api string
	// batch is how the peer deletes many, for the report.
	batch string
	// opens says whether open builds state (false: it only checks a path).
	opens bool
	open  func(ctx context.Context, dir string) (handle, error)
}

type handle interface {
	deleteOne(ctx context.Context, tag string) error
	deleteBatch(ctx context.Context, tags []string) error
	close() error
}

// reclaimWaiter is a handle that returns from a delete before the space
// is back (ocistore: a large transaction's trash is unlinked in the
// background).
type reclaimWaiter interface {
	waitReclaimed(ctx context.Context) error
}

// resolver is a handle that looks a tag up (ocistore, oras-go).
type resolver interface {
	resolve(ctx context.Context, tag string) error
}

const (
	pOcistore = "ocistore"
	pCImage   = "containers/image"
	pOras     = "oras-go"
	pOrasGC   = "oras-go untag+GC"
	pGGCR     = "go-containerregistry"
)

var peers = []peer{
	{
		name: pOcistore, opens: true,
		api:   "`store.Delete(tag)`",
		batch: "one `store.Delete(refs...)` call: one transaction",
		open: func(ctx context.Context, dir string) (handle, error) {
			s, err := store.Open(ctx, dir, &store.Options{NoCreate: true})
			if err != nil {
				return nil, err
			}
			return ocistoreH{s}, nil
		},
	},
	{
		name:  pCImage,
		api:   "`layout.NewReference(dir, tag).DeleteImage`",
		batch: "none in the API: `DeleteImage` per image",
		open: func(ctx context.Context, dir string) (handle, error) {
			return cimageH{dir}, nil
		},
	},
	{
		name: pOras, opens: true,
		api:   "`Resolve` + `Delete` (AutoGC, AutoSaveIndex: index.json written per delete)",
		batch: "AutoSaveIndex off, `Resolve` + `Delete` (AutoGC) per image, one `SaveIndex`",
		open: func(ctx context.Context, dir string) (handle, error) {
			s, err := orasoci.NewWithContext(ctx, dir)
			if err != nil {
				return nil, err
			}
			return orasH{s}, nil
		},
	},
	{
		name: pOrasGC, opens: true,
		api:   "AutoSaveIndex off, `Untag`, `GC`, `SaveIndex` per delete",
		batch: "AutoSaveIndex off, `Untag` per image, one `GC`, one `SaveIndex`",
		open: func(ctx context.Context, dir string) (handle, error) {
			s, err := orasoci.NewWithContext(ctx, dir)
			if err != nil {
				return nil, err
			}
			s.AutoSaveIndex = false
			return orasGCH{s}, nil
		},
	},
	{
		name:  pGGCR,
		api:   "`RemoveDescriptors(match.Name(tag))`, `GarbageCollect`, `RemoveBlob` per returned hash",
		batch: "one `RemoveDescriptors` matching every tag, one `GarbageCollect`, `RemoveBlob` each",
		open: func(ctx context.Context, dir string) (handle, error) {
			p, err := ggcrlayout.FromPath(dir)
			if err != nil {
				return nil, err
			}
			return ggcrH{p}, nil
		},
	},
}

func peerByName(name string) (*peer, error) {
	for i := range peers {
		if peers[i].name == name {
			return &peers[i], nil
		}
	}
	return nil, fmt.Errorf("unknown peer %q", name)
}

// --- ocistore

type ocistoreH struct{ s *store.Store }

func (h ocistoreH) deleteOne(ctx context.Context, tag string) error {
	_, err := h.s.Delete(ctx, tag)
	return err
}
func (h ocistoreH) deleteBatch(ctx context.Context, tags []string) error {
	_, err := h.s.Delete(ctx, tags...)
	return err
}
func (h ocistoreH) close() error { return h.s.Close() }
func (h ocistoreH) waitReclaimed(ctx context.Context) error {
	return h.s.WaitReclaimed(ctx)
}
func (h ocistoreH) resolve(ctx context.Context, tag string) error {
	_, err := h.s.Resolve(ctx, tag)
	return err
}

// --- containers/image (go.podman.io/image/v5)

type cimageH struct{ dir string }

func (h cimageH) deleteOne(ctx context.Context, tag string) error {
	ref, err := cilayout.NewReference(h.dir, tag)
	if err != nil {
		return err
	}
	return ref.DeleteImage(ctx, nil)
}
func (h cimageH) deleteBatch(ctx context.Context, tags []string) error {
	for _, t := range tags {
		if err := h.deleteOne(ctx, t); err != nil {
			return err
		}
	}
	return nil
}
func (h cimageH) close() error { return nil }

// --- oras-go: Delete with AutoGC

type orasH struct{ s *orasoci.Store }

func (h orasH) deleteOne(ctx context.Context, tag string) error {
	d, err := h.s.Resolve(ctx, tag)
	if err != nil {
		return err
	}
	return h.s.Delete(ctx, d)
}
func (h orasH) deleteBatch(ctx context.Context, tags []string) error {
	h.s.AutoSaveIndex = false
	for _, t := range tags {
		if err := h.deleteOne(ctx, t); err != nil {
			return err
		}
	}
	return h.s.SaveIndex()
}
func (h orasH) close() error { return nil }
func (h orasH) resolve(ctx context.Context, tag string) error {
	_, err := h.s.Resolve(ctx, tag)
	return err
}

// --- oras-go: Untag + GC. GC drops untagged manifests from the store's
// state but does not write index.json: SaveIndex must follow it, or the
// untagged entries stay in index.json pointing at unlinked blobs.

type orasGCH struct{ s *orasoci.Store }

func (h orasGCH) deleteOne(ctx context.Context, tag string) error {
	return h.deleteBatch(ctx, []string{tag})
}
func (h orasGCH) deleteBatch(ctx context.Context, tags []string) error {
	for _, t := range tags {
		if err := h.s.Untag(ctx, t); err != nil {
			return err
		}
	}
	if err := h.s.GC(ctx); err != nil {
		return err
	}
	return h.s.SaveIndex()
}
func (h orasGCH) close() error { return nil }

// --- go-containerregistry

type ggcrH struct{ p ggcrlayout.Path }

func (h ggcrH) deleteOne(ctx context.Context, tag string) error {
	return h.deleteBatch(ctx, []string{tag})
}
func (h ggcrH) deleteBatch(ctx context.Context, tags []string) error {
	set := make(map[string]bool, len(tags))
	for _, t := range tags {
		set[t] = true
	}
	if err := h.p.RemoveDescriptors(func(d v1.Descriptor) bool { return set[d.Annotations[ocispec.AnnotationRefName]] }); err != nil {
		return err
	}
	garbage, err := h.p.GarbageCollect()
	if err != nil {
		return err
	}
	for _, g := range garbage {
		if err := h.p.RemoveBlob(g); err != nil {
			return err
		}
	}
	return nil
}
func (h ggcrH) close() error { return nil }

// --- ingest: each peer's blob-writing call, and the machine's limit

// putFunc writes size bytes of r as the blob dg. The parallel case calls it
// from several goroutines at once: it must be safe for that.
type putFunc func(ctx context.Context, dg digest.Digest, size int64, r io.Reader) error

// ingesters prepare (untimed) a peer's handle on the layout dir and return
// its blob-writing call.
var ingesters = map[string]func(ctx context.Context, dir string) (putFunc, func(), error){
	pLimitHash: func(ctx context.Context, dir string) (putFunc, func(), error) {
		return func(ctx context.Context, dg digest.Digest, size int64, r io.Reader) error {
			return hashOnly(dg, size, r)
		}, func() {}, nil
	},
	pLimitDisk: func(ctx context.Context, dir string) (putFunc, func(), error) {
		return func(ctx context.Context, dg digest.Digest, size int64, r io.Reader) error {
			return writeOnly(dir, dg, size, r, 0)
		}, func() {}, nil
	},
	pLimitDiskWB: func(ctx context.Context, dir string) (putFunc, func(), error) {
		return func(ctx context.Context, dg digest.Digest, size int64, r io.Reader) error {
			return writeOnly(dir, dg, size, r, writeBehindEvery)
		}, func() {}, nil
	},
	pOcistore: func(ctx context.Context, dir string) (putFunc, func(), error) {
		s, err := store.Open(ctx, dir, nil)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, dg digest.Digest, size int64, r io.Reader) error {
			return s.PutBlob(ctx, ocispec.Descriptor{MediaType: mtLayer, Digest: dg, Size: size}, r)
		}, func() { s.Close() }, nil
	},
	pOras: func(ctx context.Context, dir string) (putFunc, func(), error) {
		s, err := orasoci.NewWithContext(ctx, dir)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, dg digest.Digest, size int64, r io.Reader) error {
			return s.Push(ctx, ocispec.Descriptor{MediaType: mtLayer, Digest: dg, Size: size}, r)
		}, func() {}, nil
	},
	pGGCR: func(ctx context.Context, dir string) (putFunc, func(), error) {
		if err := os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, dg digest.Digest, size int64, r io.Reader) error {
			h, err := v1.NewHash(dg.String())
			if err != nil {
				return err
			}
			return ggcrlayout.Path(dir).WriteBlob(h, io.NopCloser(r))
		}, func() {}, nil
	},
	pCImage: func(ctx context.Context, dir string) (putFunc, func(), error) {
		ref, err := cilayout.NewReference(dir, "")
		if err != nil {
			return nil, nil, err
		}
		d, err := ref.NewImageDestination(ctx, nil)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, dg digest.Digest, size int64, r io.Reader) error {
			// No digest given: c/image then hashes while writing (given a
			// digest, it trusts it unverified), the work the others do.
			info, err := d.PutBlob(ctx, r, citypes.BlobInfo{Size: size}, none.NoCache, false)
			if err != nil {
				return err
			}
			if info.Digest != dg {
				return fmt.Errorf("containers/image stored %s, want %s", info.Digest, dg)
			}
			return nil
		}, func() { d.Close() }, nil
	},
}

// The machine's limit for an ingest is the slower of two measurements, each
// run alone: one core hashing the bytes with sha256 (no disk), and the disk
// writing and fsyncing them (no hash). A peer that hashes and writes at
// once cannot beat the slower of the two; one that does them one after
// the other takes about their sum. The disk is measured two ways, and its
// limit is the faster: written, then fsynced (as `dd conv=fsync`); and
// with its writeback started every writeBehindEvery bytes as they are
// written (sync_file_range), so that the disk writes while the rest is
// produced (as ocistore's ingest does).
const (
	pLimitHash   = "limit: sha256, one core"
	pLimitDisk   = "limit: write + fsync"
	pLimitDiskWB = "limit: write + fsync, early writeback"
)

// writeBehindEvery is the disk limit's writeback step: ocistore's
// (fsio.WriteBehindEvery, which this module does not import: the limits
// use no code of the peers').
const writeBehindEvery = 8 << 20

// hashBuf is the hash limit's read size: small enough that the bytes the
// generator just wrote are still in the CPU's cache when sha256 reads them.
const hashBuf = 32 << 10

// hashOnly hashes size bytes of r with sha256 on this goroutine (one core),
// hashBuf bytes at a time, and checks the digest: no disk.
func hashOnly(dg digest.Digest, size int64, r io.Reader) error {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, hashBuf))
	if err != nil {
		return err
	}
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != dg || n != size {
		return fmt.Errorf("hash limit: got %s/%d, want %s/%d", got, n, dg, size)
	}
	return nil
}

// writeBuf is the disk limit's write size: small enough that the bytes the
// generator just wrote are still in the CPU's cache when write(2) copies
// them (1 MiB writes measured slower on this machine).
const writeBuf = 32 << 10

// writeOnly is the disk's part of an ingest: size bytes of r written to a
// temp file in the layout's blobs/sha256, writeBuf bytes at a time, the file
// fsynced, renamed to dg's name, the directory fsynced. No hash: dg is
// trusted. every > 0 starts the writeback of each every bytes written
// (sync_file_range, SYNC_FILE_RANGE_WRITE) before the fsync.
func writeOnly(dir string, dg digest.Digest, size int64, r io.Reader, every int64) error {
	bdir := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(bdir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(bdir, ".limit-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	var w io.Writer = struct{ io.Writer }{f} // no ReadFrom: writeBuf-sized writes
	if every > 0 {
		w = &writeback{f: f, every: every}
	}
	n, err := io.CopyBuffer(w, r, make([]byte, writeBuf))
	if err == nil && n != size {
		err = fmt.Errorf("disk limit: wrote %d bytes, want %d", n, size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(f.Name(), filepath.Join(bdir, dg.Encoded())); err != nil {
		return err
	}
	d, err := os.Open(bdir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeback writes to f and starts the writeback of each every bytes.
type writeback struct {
	f                *os.File
	every            int64
	written, started int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if w.written-w.started >= w.every {
		if serr := unix.SyncFileRange(int(w.f.Fd()), w.started, w.written-w.started, unix.SYNC_FILE_RANGE_WRITE); serr != nil && err == nil {
			err = serr
		}
		w.started = w.written
	}
	return n, err
}

// fsyncs says, per peer, what it makes durable (read from each version's
// source for the versions in go.mod).
var fsyncs = map[string]string{
	pOcistore: "yes: journal commit, temp index.json, layout dir, each touched blobs dir, ingested blob and its dir",
	pCImage:   "ingested blob files only (`PutBlob`); never index.json, never a directory; DeleteImage: none",
	pOras:     "none (index.json by `os.WriteFile`; blobs unsynced)",
	pOrasGC:   "none",
	pGGCR:     "none",
}

func shortPeer(name string) string { return strings.ReplaceAll(name, " ", "\u00a0") }
