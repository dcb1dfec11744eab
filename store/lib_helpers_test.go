package store_test

// Helpers of the library tests (the lib*_test.go files). Names carry a lib
// prefix so that they cannot collide with the crash tests' helpers.

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// lib is one open store in a fresh directory, with an image builder.
type lib struct {
	t   *testing.T
	ctx context.Context
	dir string
	s   *store.Store
	b   *testutil.Builder
}

func newLib(t *testing.T) *lib {
	t.Helper()
	return libOpen(t, filepath.Join(t.TempDir(), "layout"), 1)
}

// libOpen opens (creating or adopting) the layout in dir.
func libOpen(t *testing.T, dir string, seed uint64) *lib {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return &lib{t: t, ctx: ctx, dir: dir, s: s, b: testutil.NewBuilder(t, s, seed)}
}

// image stores a new OCI image (sharing layers, plus own random layers).
func (l *lib) image(shared []v1.Descriptor, own int) v1.Descriptor {
	l.t.Helper()
	return l.b.Manifest(shared, own)
}

// tag tags d, failing the test on error.
func (l *lib) tag(d v1.Descriptor, names ...string) {
	l.t.Helper()
	if err := l.s.Tag(l.ctx, d, names...); err != nil {
		l.t.Fatalf("tag %v: %v", names, err)
	}
}

// del deletes refs, failing the test on error.
func (l *lib) del(refs ...string) *store.Result {
	l.t.Helper()
	res, err := l.s.Delete(l.ctx, refs...)
	if err != nil {
		l.t.Fatalf("delete %v: %v", refs, err)
	}
	return res
}

// index returns index.json's entries as "name=digest" (name empty when untagged), in order.
func (l *lib) index() []string {
	l.t.Helper()
	imgs, err := l.s.List(l.ctx)
	if err != nil {
		l.t.Fatalf("list: %v", err)
	}
	out := make([]string, 0, len(imgs))
	for _, im := range imgs {
		out = append(out, im.Name+"="+im.Descriptor.Digest.String())
	}
	return out
}

// indexFile returns the bytes of index.json.
func (l *lib) indexFile() []byte {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.dir, "index.json"))
	if err != nil {
		l.t.Fatal(err)
	}
	return b
}

func (l *lib) has(d digest.Digest) bool {
	l.t.Helper()
	return testutil.HasBlob(l.t, l.dir, d)
}

// graph is every blob of d's graph, read from disk.
func (l *lib) graph(d v1.Descriptor) []digest.Digest {
	l.t.Helper()
	return testutil.Graph(l.t, l.dir, d)
}

// wantBlobs fails unless each digest's blob is present (present=true) or gone.
func (l *lib) wantBlobs(present bool, ds ...digest.Digest) {
	l.t.Helper()
	for _, d := range ds {
		if got := l.has(d); got != present {
			l.t.Errorf("blob %s present=%v, want %v", d, got, present)
		}
	}
}

// clean fails unless fsck finds nothing at all.
func (l *lib) clean() {
	l.t.Helper()
	testutil.MustCheck(l.t, l.s)
}

// cleanButOrphans fails on any fsck problem other than an orphan blob (one
// put but never tagged).
func (l *lib) cleanButOrphans() {
	l.t.Helper()
	for _, p := range testutil.Problems(l.t, l.s, recovery.KindOrphan) {
		l.t.Errorf("fsck: %s", p)
	}
}

// refs is the stored reference counts.
func (l *lib) refs() map[digest.Digest]uint64 {
	l.t.Helper()
	return testutil.Refcounts(l.t, l.dir)
}

// libProblems filters fsck problems of one kind.
func libProblems(ps []recovery.Problem, kind string) []recovery.Problem {
	var out []recovery.Problem
	for _, p := range ps {
		if p.Kind == kind {
			out = append(out, p)
		}
	}
	return out
}

// libMinus returns a without the digests in b.
func libMinus(a, b []digest.Digest) []digest.Digest {
	var out []digest.Digest
	for _, d := range a {
		if !slices.Contains(b, d) {
			out = append(out, d)
		}
	}
	return out
}

// libFetchAll reads a whole blob through Fetch, returning the reader's error.
func libFetchAll(ctx context.Context, s *store.Store, d v1.Descriptor) ([]byte, error) {
	rc, err := s.Fetch(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, err = io.Copy(&buf, rc)
	return buf.Bytes(), err
}

// libDesc is the sha256 descriptor of content.
func libDesc(content []byte, mt string) v1.Descriptor { return testutil.Blob(content, mt) }
