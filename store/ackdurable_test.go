package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/testing/errorfs"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// TestPresentBlobAckDurable: a blob found present in blobs/ is acknowledged
// by itself, before any manifest references it: by PutBlob (a registry's
// 201 for a monolithic push) or MountBlob (its 201 for a cross-repository
// mount). Its name must then survive a power cut on its own. The writer
// that renamed it in may not have synced the directory: it died there (as
// here: its sync fails, which poisons its handle), or is still between the
// two (a concurrent push of the same blob). Found by the power cuts under
// `ocistore serve` (internal/testing/powercut, TestPowerCutServe, case
// race/mount): a mount answered 201 while a push of the same blob was
// paused between its rename and its directory sync, and the cut took the
// blob back. PutBlob of a present blob returned without a sync too, and
// only a manifest's commit made the name durable (TestPresentBlobNameMadeDurable).
func TestPresentBlobAckDurable(t *testing.T) {
	for _, how := range []string{"put", "mount"} {
		t.Run(how, func(t *testing.T) {
			ctx := context.Background()
			dir, mem, efs, open := memStore(t)
			layer := bytes.Repeat([]byte("a layer whose writer died before its directory was synced\n"), 200)
			ld := v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.SHA512.FromBytes(layer), Size: int64(len(layer))}
			h := efs.Add(errorfs.Rule{Op: errorfs.OpSyncDir, Path: "blobs/sha512", Nth: 1, Err: errEIO})
			dead := open()
			if err := dead.PutBlob(ctx, ld, bytes.NewReader(layer)); !errors.Is(err, store.ErrDurability) || h.Fired() != 1 {
				t.Fatalf("put blob whose directory sync fails: %v (fired %d)", err, h.Fired())
			}
			dead.Close()

			s := open()
			defer s.Close()
			switch how {
			case "put":
				if err := s.PutBlob(ctx, ld, bytes.NewReader(layer)); err != nil {
					t.Fatalf("put the blob that is present: %v", err)
				}
			case "mount":
				if ok, err := s.MountBlob(ctx, v1.Descriptor{Digest: ld.Digest, Size: -1}); err != nil || !ok {
					t.Fatalf("mount the blob that is present: %v, %v", ok, err)
				}
			}
			// Acknowledged: the power goes before any manifest uses it.
			scratch, cut := cutPower(t, mem, dir)
			o2 := &store.Options{LockTimeout: -1}
			store.SetTestFS(o2, cut)
			s2, err := store.Open(ctx, scratch, o2)
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if ok, err := s2.Exists(ctx, ld); err != nil || !ok {
				t.Fatalf("the blob acknowledged by %s is gone after the power cut: %v, %v", how, ok, err)
			}
		})
	}
	t.Run("absent", func(t *testing.T) {
		ctx := context.Background()
		s, err := store.Open(ctx, t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if ok, err := s.MountBlob(ctx, v1.Descriptor{Digest: digest.FromString("nowhere"), Size: -1}); err != nil || ok {
			t.Fatalf("mount of an absent blob: %v, %v", ok, err)
		}
		d := testutil.Blob([]byte("here"), v1.MediaTypeImageLayer)
		if err := s.PutBlob(ctx, d, bytes.NewReader([]byte("here"))); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.MountBlob(ctx, v1.Descriptor{Digest: d.Digest, Size: 5}); err != nil || ok {
			t.Fatalf("mount with the wrong size: %v, %v", ok, err)
		}
		if ok, err := s.MountBlob(ctx, v1.Descriptor{Digest: d.Digest, Size: 4}); err != nil || !ok {
			t.Fatalf("mount: %v, %v", ok, err)
		}
	})
}

// syncRecorder is the real file system, noting the directories synced.
type syncRecorder struct {
	*fsio.OS
	mu   sync.Mutex
	dirs []string
}

func (r *syncRecorder) SyncDir(name string) error {
	r.mu.Lock()
	r.dirs = append(r.dirs, name)
	r.mu.Unlock()
	return r.OS.SyncDir(name)
}

func (r *syncRecorder) synced() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.dirs...)
}

// TestUploadCommitPresentSyncs: an upload whose blob is found present when
// it commits (another writer renamed it in, and this handle cannot tell
// whether its directory was synced since) syncs the blob directory before
// the commit returns (a registry answers it with 201), as PutBlob does
// (TestPresentBlobAckDurable). Uploads need a real file system (memfs
// cannot open a file for reading and writing): the sync is observed, not a
// power cut.
func TestUploadCommitPresentSyncs(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	if s, err := store.Open(ctx, dir, nil); err != nil {
		t.Fatal(err)
	} else {
		s.Close()
	}
	osfs, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	rec := &syncRecorder{OS: osfs}
	o := &store.Options{}
	store.SetTestFS(o, rec)
	s, err := store.Open(ctx, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	data := bytes.Repeat([]byte("renamed in by another writer, its directory not synced\n"), 100)
	d := digest.FromBytes(data)
	u, err := s.NewUpload(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Write(ctx, 0, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	// Another writer's blob appears, after anything this handle synced.
	time.Sleep(10 * time.Millisecond)
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", d.Encoded()), data, 0o644); err != nil {
		t.Fatal(err)
	}
	before := len(rec.synced())
	if _, err := u.Commit(ctx, v1.Descriptor{Digest: d, Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	synced := false
	for _, p := range rec.synced()[before:] {
		synced = synced || p == "blobs/sha256"
	}
	if !synced {
		t.Fatalf("the commit of an upload whose blob was present returned without syncing blobs/sha256 (synced: %v)", rec.synced()[before:])
	}
	if _, err := os.Stat(filepath.Join(dir, ".ocistore", "ingest", "uploads", u.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the staged copy stays after the commit: %v", err)
	}
}
