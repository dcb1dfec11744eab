package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/journal"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// chunkReader yields its content a few bytes at a time and never reveals
// its length, like a network stream.
type chunkReader struct {
	b     []byte
	chunk int
	reads int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	r.reads++
	n := min(len(p), r.chunk, len(r.b))
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

// filesIn lists the names in the directory rel of the layout dir (none
// when it does not exist): the ingest directory, the trash.
func filesIn(t *testing.T, dir, rel string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, rel))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestPutBlob(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	good := libDesc(content, v1.MediaTypeImageLayerGzip)
	other := digest.FromString("something else")
	cases := []struct {
		name    string
		desc    v1.Descriptor
		content []byte
		wantErr error
		stored  bool
	}{
		{"ok", good, content, nil, true},
		{"unknown size", v1.Descriptor{Digest: good.Digest, Size: -1}, content, nil, true},
		{"empty blob", libDesc(nil, "x"), nil, nil, true},
		{"wrong digest", v1.Descriptor{Digest: other, Size: good.Size}, content, store.ErrDigestMismatch, false},
		{"wrong digest unknown size", v1.Descriptor{Digest: other, Size: -1}, content, store.ErrDigestMismatch, false},
		{"too short", v1.Descriptor{Digest: good.Digest, Size: good.Size + 1}, content, store.ErrSizeMismatch, false},
		{"too long", v1.Descriptor{Digest: good.Digest, Size: good.Size - 1}, content, store.ErrSizeMismatch, false},
		{"huge announced size", v1.Descriptor{Digest: good.Digest, Size: 1 << 60}, content, store.ErrSizeMismatch, false},
		{"malformed digest", v1.Descriptor{Digest: "sha256:xyz", Size: good.Size}, content, store.ErrInvalidDigest, false},
		{"path escape", v1.Descriptor{Digest: "sha256:../../etc/passwd", Size: good.Size}, content, store.ErrInvalidDigest, false},
		{"unknown algorithm", v1.Descriptor{Digest: "md5:d41d8cd98f00b204e9800998ecf8427e", Size: good.Size}, content, store.ErrInvalidDigest, false},
		{"sha512", v1.Descriptor{Digest: digest.SHA512.FromBytes(content), Size: good.Size}, content, nil, true},
		{"sha512 mismatch", v1.Descriptor{Digest: digest.SHA512.FromString("x"), Size: good.Size}, content, store.ErrDigestMismatch, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := newLib(t)
			r := &chunkReader{b: c.content, chunk: 4093}
			err := l.s.PutBlob(l.ctx, c.desc, r)
			if c.wantErr == nil && err != nil {
				t.Fatalf("PutBlob = %v", err)
			}
			if c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Fatalf("PutBlob = %v, want %v", err, c.wantErr)
			}
			if len(c.content) > 0 && c.stored && r.reads < 2 {
				t.Errorf("content read in %d calls: not streamed", r.reads)
			}
			if c.desc.Digest.Validate() == nil {
				if got := l.has(c.desc.Digest); got != c.stored {
					t.Errorf("blob present = %v, want %v", got, c.stored)
				}
			}
			if left := filesIn(t, l.dir, protocol.IngestDir); len(left) > 0 {
				t.Errorf("ingest temp files left: %v", left)
			}
			if c.stored {
				d := c.desc
				d.Size = int64(len(c.content))
				got, err := libFetchAll(l.ctx, l.s, d)
				if err != nil || !bytes.Equal(got, c.content) {
					t.Errorf("Fetch after PutBlob: %d bytes, %v", len(got), err)
				}
				if ok, err := l.s.Exists(l.ctx, d); !ok || err != nil {
					t.Errorf("Exists = %v, %v", ok, err)
				}
			} else {
				// Nothing of it anywhere under blobs/.
				for p := range testutil.Snapshot(t, l.dir, ".ocistore") {
					if strings.HasPrefix(p, "blobs/") {
						t.Errorf("file %s left by a failed PutBlob", p)
					}
				}
			}
			l.cleanButOrphans()
		})
	}
}

// failingReader yields b, then fails with err instead of io.EOF.
type failingReader struct {
	b   []byte
	err error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, r.err
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// TestPutBlobLarge: a blob larger than the write-behind step (its writeback
// started while it is written) is stored whole; one whose digest is wrong,
// or whose reader fails after several steps, leaves nothing under blobs/
// and no ingest temp file, and the reader's error is returned.
func TestPutBlobLarge(t *testing.T) {
	content := make([]byte, 2*fsio.WriteBehindEvery+4093)
	for i := range content {
		content[i] = byte(i * 7 / 3)
	}
	good := libDesc(content, v1.MediaTypeImageLayerGzip)
	errReader := errors.New("connection reset mid-blob")
	cases := []struct {
		name    string
		desc    v1.Descriptor
		r       io.Reader
		wantErr error
	}{
		{"ok", good, &chunkReader{b: content, chunk: 1 << 20}, nil},
		{"wrong digest", v1.Descriptor{Digest: digest.FromString("other"), Size: good.Size}, bytes.NewReader(content), store.ErrDigestMismatch},
		{"reader fails", good, &failingReader{b: content[:fsio.WriteBehindEvery*2-1], err: errReader}, errReader},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := newLib(t)
			err := l.s.PutBlob(l.ctx, c.desc, c.r)
			if c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Fatalf("PutBlob = %v, want %v", err, c.wantErr)
			}
			if left := filesIn(t, l.dir, protocol.IngestDir); len(left) > 0 {
				t.Errorf("ingest temp files left: %v", left)
			}
			if c.wantErr == nil {
				got, err := os.ReadFile(testutil.BlobFile(l.dir, good.Digest))
				if err != nil || !bytes.Equal(got, content) {
					t.Fatalf("stored blob: %d bytes, %v", len(got), err)
				}
			} else {
				for p := range testutil.Snapshot(t, l.dir, ".ocistore") {
					if strings.HasPrefix(p, "blobs/") {
						t.Errorf("file %s left by a failed PutBlob", p)
					}
				}
			}
			l.cleanButOrphans()
		})
	}
}

func TestPutBlobAlreadyPresent(t *testing.T) {
	l := newLib(t)
	content := []byte("layer content")
	d := libDesc(content, v1.MediaTypeImageLayer)
	if err := l.s.PutBlob(l.ctx, d, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	p := testutil.BlobFile(l.dir, d.Digest)
	fi1, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	r := &chunkReader{b: content, chunk: 3}
	if err := l.s.PutBlob(l.ctx, d, r); err != nil {
		t.Fatal(err)
	}
	fi2, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if r.reads != 0 {
		t.Errorf("reader consumed (%d reads) for a blob already present", r.reads)
	}
	if fi1.Sys().(*syscall.Stat_t).Ino != fi2.Sys().(*syscall.Stat_t).Ino || !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Error("blob already present was written again")
	}
	// A file of the wrong size under the digest is replaced.
	if err := os.WriteFile(p, []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := l.s.PutBlob(l.ctx, d, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, content) {
		t.Errorf("blob of the wrong size not replaced: %q, %v", got, err)
	}
}

func TestPutBlobCanceled(t *testing.T) {
	l := newLib(t)
	content := bytes.Repeat([]byte("x"), 1<<20)
	d := libDesc(content, v1.MediaTypeImageLayer)
	ctx, cancel := context.WithCancel(l.ctx)
	pr, pw := io.Pipe()
	go func() {
		pw.Write(content[:1<<19])
		cancel()
		pw.Write(content[1<<19:])
		pw.Close()
	}()
	err := l.s.PutBlob(ctx, d, pr)
	pr.Close()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("PutBlob with a canceled context = %v", err)
	}
	if l.has(d.Digest) {
		t.Error("canceled PutBlob left the blob")
	}
	if left := filesIn(t, l.dir, protocol.IngestDir); len(left) > 0 {
		t.Errorf("ingest temp files left: %v", left)
	}
}

func TestFetch(t *testing.T) {
	l := newLib(t)
	content := []byte("the quick brown fox jumps over the lazy dog")
	d := l.b.Put(content, v1.MediaTypeImageLayer)
	got, err := libFetchAll(l.ctx, l.s, d)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("Fetch = %q, %v", got, err)
	}

	cases := []struct {
		name    string
		desc    v1.Descriptor
		open    error // from Fetch itself
		read    error // from the reader, at the end
		corrupt func(p string)
	}{
		{name: "missing", desc: libDesc([]byte("nope"), ""), open: store.ErrNotFound},
		{name: "malformed digest", desc: v1.Descriptor{Digest: "sha256:nothex", Size: 1}, open: store.ErrInvalidDigest},
		{name: "escape", desc: v1.Descriptor{Digest: "sha256:../../../etc/passwd", Size: 1}, open: store.ErrInvalidDigest},
		{name: "descriptor too small", desc: v1.Descriptor{Digest: d.Digest, Size: d.Size - 1}, read: store.ErrSizeMismatch},
		{name: "descriptor too large", desc: v1.Descriptor{Digest: d.Digest, Size: d.Size + 1}, read: store.ErrSizeMismatch},
		{name: "bit flipped on disk", desc: d, read: store.ErrDigestMismatch, corrupt: func(p string) {
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 1
			os.WriteFile(p, b, 0o644)
		}},
		{name: "truncated on disk", desc: d, read: store.ErrSizeMismatch, corrupt: func(p string) {
			os.Truncate(p, 10)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.corrupt != nil {
				p := testutil.BlobFile(l.dir, d.Digest)
				c.corrupt(p)
				defer os.WriteFile(p, content, 0o644)
			}
			rc, err := l.s.Fetch(l.ctx, c.desc)
			if c.open != nil {
				if !errors.Is(err, c.open) {
					t.Fatalf("Fetch = %v, want %v", err, c.open)
				}
				return
			}
			if err != nil {
				t.Fatalf("Fetch = %v", err)
			}
			defer rc.Close()
			_, err = io.ReadAll(rc)
			if !errors.Is(err, c.read) {
				t.Fatalf("reading = %v, want %v", err, c.read)
			}
			if !strings.Contains(err.Error(), d.Digest.String()) {
				t.Errorf("error %q does not name the digest", err)
			}
		})
	}
}

func TestExists(t *testing.T) {
	l := newLib(t)
	d := l.b.Random(100)
	d512 := l.b.Put([]byte("sha512 blob"), v1.MediaTypeImageLayer)
	_ = d512
	l.b.Alg = digest.SHA512
	d512 = l.b.Put([]byte("sha512 blob"), v1.MediaTypeImageLayer)
	cases := []struct {
		name string
		desc v1.Descriptor
		want bool
		err  error
	}{
		{"present", d, true, nil},
		{"sha512", d512, true, nil},
		{"absent", libDesc([]byte("absent"), ""), false, nil},
		{"wrong size", v1.Descriptor{Digest: d.Digest, Size: d.Size + 1}, false, nil},
		{"malformed", v1.Descriptor{Digest: "sha256:12", Size: 1}, false, store.ErrInvalidDigest},
		{"escape", v1.Descriptor{Digest: "sha256:../../index.json", Size: 1}, false, store.ErrInvalidDigest},
	}
	for _, c := range cases {
		got, err := l.s.Exists(l.ctx, c.desc)
		if got != c.want || !errors.Is(err, c.err) {
			t.Errorf("%s: Exists = %v, %v; want %v, %v", c.name, got, err, c.want, c.err)
		}
	}
}

func manifestJSON(t *testing.T, cfg v1.Descriptor, layers ...v1.Descriptor) []byte {
	t.Helper()
	b, err := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPutManifest(t *testing.T) {
	l := newLib(t)
	cfg := l.b.Put([]byte(`{"os":"linux"}`), v1.MediaTypeImageConfig)
	layer := l.b.Random(300)
	missing := libDesc([]byte("never stored"), v1.MediaTypeImageLayer)
	foreign := libDesc([]byte("windows base layer"), "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
	foreign.URLs = []string{"https://example.com/layer"}

	t.Run("tags in one call", func(t *testing.T) {
		raw := manifestJSON(t, cfg, layer)
		before := l.indexFile()
		d, err := l.s.PutManifest(l.ctx, v1.MediaTypeImageManifest, raw, "v1", "latest")
		if err != nil {
			t.Fatal(err)
		}
		if d.Digest != digest.FromBytes(raw) || d.Size != int64(len(raw)) || d.MediaType != v1.MediaTypeImageManifest {
			t.Errorf("descriptor %+v", d)
		}
		for _, n := range []string{"v1", "latest"} {
			got, err := l.s.Resolve(l.ctx, n)
			if err != nil || got.Digest != d.Digest {
				t.Errorf("Resolve(%s) = %v, %v", n, got.Digest, err)
			}
		}
		if bytes.Equal(before, l.indexFile()) {
			t.Error("index.json unchanged")
		}
		l.cleanButOrphans()
	})
	t.Run("untagged", func(t *testing.T) {
		raw := manifestJSON(t, cfg)
		n := len(l.index())
		d, err := l.s.PutManifest(l.ctx, v1.MediaTypeImageManifest, raw)
		if err != nil {
			t.Fatal(err)
		}
		if !l.has(d.Digest) || len(l.index()) != n {
			t.Error("PutManifest without names must store the blob and leave index.json alone")
		}
	})
	t.Run("foreign layer may be absent", func(t *testing.T) {
		raw := manifestJSON(t, cfg, layer, foreign)
		if _, err := l.s.PutManifest(l.ctx, v1.MediaTypeImageManifest, raw, "foreign"); err != nil {
			t.Fatal(err)
		}
		l.cleanButOrphans()
	})
	errCases := []struct {
		name string
		mt   string
		raw  []byte
		want error
	}{
		{"missing layer", v1.MediaTypeImageManifest, manifestJSON(t, cfg, layer, missing), store.ErrMissingDependency},
		{"missing config", v1.MediaTypeImageManifest, manifestJSON(t, missing, layer), store.ErrMissingDependency},
		{"layer of the wrong size", v1.MediaTypeImageManifest, manifestJSON(t, cfg, v1.Descriptor{MediaType: layer.MediaType, Digest: layer.Digest, Size: layer.Size + 1}), store.ErrMissingDependency},
		{"missing child manifest", v1.MediaTypeImageIndex, mustJSON(t, v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{{MediaType: v1.MediaTypeImageManifest, Digest: missing.Digest, Size: missing.Size}}}), store.ErrMissingDependency},
		{"not a manifest type", v1.MediaTypeImageLayer, manifestJSON(t, cfg, layer, layer), store.ErrInvalidArgument},
		{"media type disagrees with content", v1.MediaTypeImageIndex, manifestJSON(t, cfg, layer, layer, layer), store.ErrInvalidArgument},
		{"garbage", v1.MediaTypeImageManifest, []byte("{not json"), store.ErrCorrupt},
		{"bad child digest", v1.MediaTypeImageManifest, []byte(`{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../x","size":1}}`), store.ErrInvalidDigest},
		{"invalid tag", v1.MediaTypeImageManifest, manifestJSON(t, cfg, layer), store.ErrInvalidArgument},
	}
	for _, c := range errCases {
		t.Run(c.name, func(t *testing.T) {
			before := l.indexFile()
			names := []string{"broken"}
			if c.name == "invalid tag" {
				names = []string{"bad\nname"}
			}
			_, err := l.s.PutManifest(l.ctx, c.mt, c.raw, names...)
			if !errors.Is(err, c.want) {
				t.Fatalf("PutManifest = %v, want %v", err, c.want)
			}
			if !bytes.Equal(before, l.indexFile()) {
				t.Error("index.json changed")
			}
			if c.name != "invalid tag" && l.has(digest.FromBytes(c.raw)) {
				t.Error("a rejected manifest was stored")
			}
		})
	}
	l.cleanButOrphans()
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCloseDuringPutBlob: Close while a PutBlob is streaming waits for it;
// the ingest either completes or fails with ErrClosed, and never leaves its
// temp file behind.
func TestCloseDuringPutBlob(t *testing.T) {
	l := newLib(t)
	content := bytes.Repeat([]byte("y"), 1<<20)
	d := libDesc(content, v1.MediaTypeImageLayer)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- l.s.PutBlob(l.ctx, d, pr) }()
	if _, err := pw.Write(content[:1000]); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- l.s.Close() }()
	if _, err := pw.Write(content[1000:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	err := <-done
	if err := <-closed; err != nil {
		t.Fatalf("Close = %v", err)
	}
	switch {
	case err == nil:
		if !l.has(d.Digest) {
			t.Error("PutBlob succeeded but the blob is not there")
		}
	case errors.Is(err, store.ErrClosed):
		if l.has(d.Digest) {
			t.Error("PutBlob failed but left the blob")
		}
	default:
		t.Errorf("PutBlob during Close = %v, want success or ErrClosed", err)
	}
	if left := filesIn(t, l.dir, protocol.IngestDir); len(left) > 0 {
		t.Errorf("ingest temp files left: %v", left)
	}
	if err := l.s.PutBlob(l.ctx, d, bytes.NewReader(content)); !errors.Is(err, store.ErrClosed) {
		t.Errorf("PutBlob after Close = %v", err)
	}
}

// TestReadersHonourContext: every reader fails at once with a context that
// is already done, and a blob being read stops once its context ends.
func TestReadersHonourContext(t *testing.T) {
	l := newLib(t)
	d := l.image(nil, 1)
	l.tag(d, "app:1")
	layer := l.b.Put(bytes.Repeat([]byte("x"), 1<<16), v1.MediaTypeImageLayer)

	done, cancel := context.WithCancel(context.Background())
	cancel()
	checks := map[string]func() error{
		"Fetch":         func() error { _, err := l.s.Fetch(done, layer); return err },
		"FetchManifest": func() error { _, err := l.s.FetchManifest(done, d); return err },
		"Exists":        func() error { _, err := l.s.Exists(done, layer); return err },
		"Resolve":       func() error { _, err := l.s.Resolve(done, "app:1"); return err },
		"List":          func() error { _, err := l.s.List(done); return err },
		"Walk":          func() error { return l.s.Walk(done, d, func(store.GraphNode) error { return nil }) },
		"Usage":         func() error { _, err := l.s.Usage(done, store.UsageOptions{}); return err },
	}
	for name, call := range checks {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v, want context.Canceled", name, err)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	r, err := l.s.Fetch(ctx, layer)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Read(make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(r); !errors.Is(err, context.Canceled) {
		t.Fatalf("reading on after the context ended = %v, want context.Canceled", err)
	}
}

// TestLockWaitHonoursContext: a writer, and Open, waiting for another
// process's writer lock give up when their context ends, long before the
// lock timeout, and change nothing.
func TestLockWaitHonoursContext(t *testing.T) {
	l := newLib(t)
	d := l.image(nil, 1)
	l.tag(d, "app:1")
	l.s.Close()
	o := &store.Options{LockTimeout: 5 * time.Second}
	s, err := store.Open(context.Background(), l.dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	before := testutil.Snapshot(t, l.dir)

	// Another process's writer: the journal's file lock, held.
	held, err := journal.Open(filepath.Join(l.dir, protocol.JournalFile), journal.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Tag(ctx, d, "app:2"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Tag behind a held lock, its context ending = %v, want context.DeadlineExceeded (not the lock timeout)", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if _, err := store.Open(ctx2, l.dir, o); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open behind a held lock, its context ending = %v, want context.DeadlineExceeded", err)
	}
	held.Close()
	testutil.AssertNothingRemoved(t, before, testutil.Snapshot(t, l.dir))
	if _, err := s.Resolve(context.Background(), "app:2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the cancelled Tag tagged: %v", err)
	}
}
