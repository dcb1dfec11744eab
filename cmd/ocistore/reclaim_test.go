package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/store"
)

// dropBlob writes a blob the way another tool would, aged by age.
func dropBlob(t *testing.T, dir string, content string, age time.Duration) digest.Digest {
	t.Helper()
	d := digest.FromString(content)
	p := filepath.Join(dir, "blobs", "sha256", d.Encoded())
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	when := time.Now().Add(-age)
	if err := os.Chtimes(p, when, when); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestGCCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	old := dropBlob(t, f.dir, "old garbage", 2*time.Hour)
	young := dropBlob(t, f.dir, "fresh garbage", 0)
	before := len(blobFiles(t, f.dir))

	// Dry run: lists, removes nothing.
	r := must(t, 0, "-l", f.dir, "gc", "--dry-run", "--format", "json")
	res := decodeJSON[store.GCResult](t, r)
	if !res.DryRun || len(res.Freed) != 1 || res.Freed[0].Digest != old.String() || res.BytesFreed != int64(len("old garbage")) || res.Young != 1 || res.Txn != 0 {
		t.Errorf("dry run: %+v", res)
	}
	if n := len(blobFiles(t, f.dir)); n != before {
		t.Errorf("dry run removed %d files", before-n)
	}
	r = must(t, 0, "-l", f.dir, "gc", "--dry-run")
	wantContains(t, "stdout", r.stdout, "would remove", old.String(), "would remove 1 blob, 11 B", "kept 1 within the grace period")

	// Default grace (1h): the old blob goes, the young one stays.
	r = must(t, 0, "-l", f.dir, "gc")
	wantContains(t, "stdout", r.stdout, "removed", old.String(), "removed 1 blob, 11 B; kept 1 within the grace period")
	if exists(f.blobPath(old)) || !exists(f.blobPath(young)) {
		t.Error("gc with the default grace removed the wrong blobs")
	}
	// No grace: the young one too; the layout is then clean.
	r = must(t, 0, "-l", f.dir, "gc", "--grace", "0s", "--json")
	if res := decodeJSON[store.GCResult](t, r); len(res.Freed) != 1 || res.Freed[0].Digest != young.String() || res.Txn == 0 {
		t.Errorf("gc --grace 0s: %+v", res)
	}
	must(t, 0, "-l", f.dir, "fsck")
	r = must(t, 0, "-l", f.dir, "gc", "--grace", "7d")
	wantContains(t, "stdout", r.stdout, "removed 0 blobs, 0 B")

	// rm then gc: rm already freed the blobs; gc finds nothing.
	must(t, 0, "-l", f.dir, "rm", "b")
	r = must(t, 0, "-l", f.dir, "gc", "--grace", "0s")
	wantContains(t, "stdout", r.stdout, "removed 0 blobs")

	for _, args := range [][]string{
		{"gc", "x"},
		{"gc", "--grace", "soon"},
		{"gc", "--grace", "-1h"},
	} {
		r := cli(t, append([]string{"-l", f.dir}, args...)...)
		if r.code != exitUsage {
			t.Errorf("%v: want exit 2:\n%s", args, r)
		}
	}
	r = must(t, 0, "gc", "-h")
	wantContains(t, "stdout", r.stdout, "Usage: ocistore [global flags] gc [flags] [--format text|json]", "--grace DURATION", "--dry-run", "--json")
	// Not a layout: exit 1, nothing created.
	empty := t.TempDir()
	must(t, 1, "-l", empty, "gc")
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"1h": time.Hour, "30m": 30 * time.Minute, "0s": 0, "7d": 7 * 24 * time.Hour,
		"1.5d": 36 * time.Hour, "2w": 14 * 24 * time.Hour, "720h": 720 * time.Hour,
	} {
		got, err := parseDuration(in)
		if err != nil || got != want {
			t.Errorf("parseDuration(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "x1d", "soon", "1y"} {
		if _, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) succeeded", in)
		}
	}
}

func TestDuCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	dropBlob(t, f.dir, "old garbage", 2*time.Hour)
	dropBlob(t, f.dir, "young garbage", 0)
	r := must(t, 0, "-l", f.dir, "du", "--format", "json")
	u := decodeJSON[store.Usage](t, r)
	// Independently: every blob file, and the graphs of the fixture.
	var files int64
	for _, p := range blobFiles(t, f.dir) {
		files += int64(len(readFile(t, p)))
	}
	ref := map[digest.Digest]int64{}
	for _, d := range []v1.Descriptor{f.a, f.b, f.multi, f.untagged} {
		for k, n := range graphOf(t, f.dir, d) {
			ref[k] = n
		}
	}
	if u.TotalBytes != files || u.ReferencedBytes != total(ref) || u.OrphanBytes != int64(len("old garbage")+len("young garbage")) {
		t.Errorf("du: %+v (files %d, referenced %d)", u, files, total(ref))
	}
	if u.ReclaimableBytes != int64(len("old garbage")) || u.YoungBytes != int64(len("young garbage")) || u.Images != 4 {
		t.Errorf("du: %+v", u)
	}
	// The fixture's tags have no repository part: one group, and the untagged entry.
	if len(u.Repositories) != 2 || u.Repositories[0].Name != "" || u.Repositories[0].Tags != 4 || u.Repositories[1].Name != store.UntaggedRepository {
		t.Errorf("repositories: %+v", u.Repositories)
	}
	r = must(t, 0, "-l", f.dir, "du", "--grace", "0s", "--json")
	if u := decodeJSON[store.Usage](t, r); u.ReclaimableBytes != u.OrphanBytes {
		t.Errorf("du --grace 0s: %+v", u)
	}
	r = must(t, 0, "-l", f.dir, "du")
	wantContains(t, "stdout", r.stdout, "REPOSITORY", "UNIQUE", "SHARED", "<none>", "Total:", "Referenced:", "Orphaned:", "Reclaimable:", "ocistore gc --grace 1h)")
	for _, args := range [][]string{{"du", "x"}, {"du", "--grace", "x"}} {
		if r := cli(t, append([]string{"-l", f.dir}, args...)...); r.code != exitUsage {
			t.Errorf("%v: want exit 2:\n%s", args, r)
		}
	}
	must(t, 1, "-l", t.TempDir(), "du")
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Hour: "1h", 30 * time.Minute: "30m", 90 * time.Minute: "1h30m", 0: "0s", 1500 * time.Millisecond: "1.5s", 48 * time.Hour: "48h"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", d, got, want)
		}
	}
}
