package store_test

// Helpers of the store tests in every build (the crash tests, built with
// the tag crashpoints, use them too): a fixture layout of images sharing
// base layers, its tags and files, fsck, copies.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// fixture builds a layout of images sharing base layers; returns tag -> digest.
func fixture(t *testing.T, dir string) map[string]string {
	ctx := context.Background()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := testutil.NewBuilder(t, s, 1)
	base := []v1.Descriptor{b.Random(100), b.Random(200)}
	for i := 0; i < 6; i++ {
		m := b.Manifest(base, 2)
		b.Tag(m, fmt.Sprintf("img%d", i))
	}
	// Two tags on one manifest, and a nested index sharing a manifest.
	m := b.Manifest(base, 1)
	b.Tag(m, "twin-a", "twin-b")
	inner := b.Manifest(base[:1], 1)
	b.Tag(b.Index(inner, b.Manifest(nil, 1)), "multi")
	b.Tag(inner, "inner")
	return tags(t, dir)
}

func tags(t *testing.T, dir string) map[string]string {
	t.Helper()
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	defer s.Close()
	return listTags(t, s)
}

// files lists every file under dir except the journal's.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() || strings.HasPrefix(rel, ".ocistore") {
			return nil
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// checkClean runs fsck on the layout as it is and fails on any problem,
// except orphans when allowOrphans (an interrupted ingest leaves blobs that
// only GC removes).
func checkClean(t *testing.T, dir string, allowOrphans bool) {
	t.Helper()
	rep, err := store.CheckDir(context.Background(), dir, nil)
	if err != nil {
		t.Fatalf("fsck: %v", err)
	}
	for _, p := range rep.Problems {
		if allowOrphans && p.Kind == recovery.KindOrphan {
			continue
		}
		t.Errorf("fsck after recovery: %s", p)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput()
	if err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

func without(m map[string]string, keys ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for _, k := range keys {
		delete(out, k)
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func blobSize(t *testing.T, dir, d string) int64 {
	alg, hex, _ := strings.Cut(d, ":")
	fi, err := os.Stat(filepath.Join(dir, "blobs", alg, hex))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
