package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
)

// TestSharedBlobDirCLI: three layouts on one --shared-blob-dir, from the
// command line: rm in one layout frees a blob only when no layout uses it;
// the layouts remember the directory (no flag needed after the first
// command); fsck of each is clean, and so is fsck --repair.
func TestSharedBlobDirCLI(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	shared := filepath.Join(root, "shared")
	dirs := []string{filepath.Join(root, "x"), filepath.Join(root, "y"), filepath.Join(root, "z")}
	for _, d := range dirs {
		must(t, 0, "--shared-blob-dir", shared, "-l", d, "init")
	}
	// Images through the library: a base layer in every layout, one
	// manifest tagged in x and y. The layouts are opened without options:
	// their marker names the shared directory.
	ctx := context.Background()
	sx := testutil.Open(t, dirs[0])
	b := testutil.NewBuilder(t, sx, 7)
	base := b.Random(500)
	m := b.Manifest([]v1.Descriptor{base}, 1)
	mz := b.Manifest([]v1.Descriptor{base}, 1)
	if err := sx.Tag(ctx, m, "app:1"); err != nil {
		t.Fatal(err)
	}
	sx.Close()
	for _, tg := range []struct {
		dir  string
		d    v1.Descriptor
		name string
	}{{dirs[1], m, "app:1"}, {dirs[2], mz, "other:1"}} {
		s := testutil.Open(t, tg.dir)
		if err := s.Tag(ctx, tg.d, tg.name); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	blob := func(d v1.Descriptor) string { return filepath.Join(shared, "sha256", d.Digest.Encoded()) }

	r := must(t, 0, "-l", dirs[0], "rm", "app:1")
	wantContains(t, "stdout", r.stdout, "freed 0 blobs")
	if !exists(blob(m)) {
		t.Fatal("rm in x freed the manifest y still tags")
	}
	r = must(t, 0, "--shared-blob-dir", shared, "-l", dirs[1], "rm", "app:1")
	if exists(blob(m)) {
		t.Errorf("the last rm of the manifest left it:\n%s", r.stdout)
	}
	if !exists(blob(base)) {
		t.Error("the base layer z still uses was freed")
	}
	for _, d := range dirs {
		must(t, 0, "-l", d, "fsck")
		if _, err := os.Lstat(filepath.Join(d, "blobs")); err == nil {
			t.Errorf("%s has a blobs directory", d)
		}
	}
	// x uses nothing now: what is left is z's, not orphans.
	r = must(t, 0, "-l", dirs[0], "du")
	wantContains(t, "stdout", r.stdout, "Other layouts:   1.4 KiB", "Orphaned:        0 B", "Reclaimable:     0 B")
	r = must(t, 0, "-l", dirs[1], "journal")
	wantContains(t, "stdout", r.stdout, "no pending")
	r = must(t, 0, "-l", dirs[2], "ls")
	wantContains(t, "stdout", r.stdout, "other:1")
	r = must(t, 0, "-l", dirs[2], "fsck", "--repair")
	wantContains(t, "stdout", r.stdout, "nothing to repair")
	must(t, 0, "-l", dirs[2], "rm", "other:1")
	if exists(blob(base)) {
		t.Error("the base layer outlived its last user")
	}
	must(t, 0, "-l", dirs[2], "fsck")
}
