package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/gen"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
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
	res := decodeJSON[gcOutput](t, r)
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
	if res := decodeJSON[gcOutput](t, r); len(res.Freed) != 1 || res.Freed[0].Digest != young.String() || res.Txn == 0 {
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
	// Not a layout: exit 6, nothing created.
	empty := t.TempDir()
	must(t, exitNotLayout, "-l", empty, "gc")
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
	u := decodeJSON[duOutput](t, r)
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
	if u.ReclaimableBytes != int64(len("old garbage")) || u.YoungBytes != int64(len("young garbage")) || u.Images != 5 || u.Manifests != 4 {
		t.Errorf("du: %+v", u)
	}
	// Images are what fsck counts: the entries of index.json.
	if rep := decodeJSON[recovery.Report](t, cli(t, "-l", f.dir, "fsck", "--json")); rep.Images != u.Images {
		t.Errorf("fsck counts %d images, du %d", rep.Images, u.Images)
	}
	// The fixture's tags have no repository part: one group, and the untagged entry.
	if len(u.Repositories) != 2 || u.Repositories[0].Repository == nil || *u.Repositories[0].Repository != "" || u.Repositories[0].Untagged ||
		u.Repositories[0].Images != 4 || u.Repositories[0].Manifests != 3 ||
		u.Repositories[1].Repository != nil || !u.Repositories[1].Untagged || u.Repositories[1].Images != 1 {
		t.Errorf("repositories: %+v", u.Repositories)
	}
	r = must(t, 0, "-l", f.dir, "du", "--grace", "0s", "--json")
	if u := decodeJSON[duOutput](t, r); u.ReclaimableBytes != u.OrphanBytes {
		t.Errorf("du --grace 0s: %+v", u)
	}
	r = must(t, 0, "-l", f.dir, "du")
	wantContains(t, "stdout", r.stdout, "REPOSITORY", "IMAGES", "MANIFESTS", "UNIQUE", "SHARED", "<none>", "5 images (4 manifests)", "Total:", "Referenced:", "Orphaned:", "Reclaimable:", "ocistore gc --grace 1h)")
	for _, args := range [][]string{{"du", "x"}, {"du", "--grace", "x"}} {
		if r := cli(t, append([]string{"-l", f.dir}, args...)...); r.code != exitUsage {
			t.Errorf("%v: want exit 2:\n%s", args, r)
		}
	}
	must(t, exitNotLayout, "-l", t.TempDir(), "du")
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Hour: "1h", 30 * time.Minute: "30m", 90 * time.Minute: "1h30m", 0: "0s", 1500 * time.Millisecond: "1.5s", 48 * time.Hour: "48h"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

// pruneFixture: app:1..4 (app:4 newest: same created, later entries are
// newer), db:1, a signature of app:1 tagged sigs:1.
func pruneFixture(t *testing.T) (dir string, app []v1.Descriptor, sig v1.Descriptor) {
	t.Helper()
	dir = t.TempDir()
	s, err := store.Open(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := testutil.NewBuilder(t, s, 11)
	base := b.Random(1500)
	for i := 1; i <= 4; i++ {
		d := b.Manifest([]v1.Descriptor{base}, 1)
		b.Tag(d, fmt.Sprintf("app:%d", i))
		app = append(app, d)
	}
	b.Tag(b.Manifest(nil, 1), "db:1")
	sig = b.Artifact("application/vnd.dev.cosign.artifact.sig.v1+json", &app[0], "application/vnd.dev.cosign.simplesigning.v1+json")
	b.Tag(sig, "sigs:1")
	return dir, app, sig
}

func TestPruneCommand(t *testing.T) {
	t.Parallel()
	dir, app, sig := pruneFixture(t)
	ls := func() string { return must(t, 0, "-l", dir, "ls").stdout }
	before := ls()

	for _, args := range [][]string{
		{"prune"},                          // no rule
		{"prune", "--filter", "ref=app:*"}, // filters only
		{"prune", "--keep-last", "0"},      //
		{"prune", "--keep-last", "x"},      //
		{"prune", "--older-than", "-1h"},   //
		{"prune", "--max-size", "12XB"},    //
		{"prune", "--max-size", "0"},       //
		{"prune", "--keep-last", "1", "--filter", "bogus=1"},
		{"prune", "--keep-last", "1", "--filter", "until=yesterday-ish"},
		{"prune", "--keep-last", "1", "--filter", "ref=app:["},
		{"prune", "--keep-last", "1", "--filter", "label="},
		{"prune", "--keep-last", "1", "extra-arg"},
	} {
		r := cli(t, append([]string{"-l", dir}, args...)...)
		if r.code != exitUsage {
			t.Errorf("%v: want exit 2:\n%s", args, r)
		}
		if len(args) == 1 {
			wantContains(t, "prune with no rule", r.stderr, "--keep-last, --older-than", "--untagged")
		}
	}
	if ls() != before {
		t.Fatal("a refused prune changed the layout")
	}

	// Dry run, JSON: keep 2 of app; app:1's signature goes with it.
	r := must(t, 0, "-l", dir, "prune", "--keep-last", "2", "--filter", "ref=app:*", "--dry-run", "--format", "json")
	res := decodeJSON[pruneOutput](t, r)
	got := map[string]string{}
	for _, im := range res.Removed {
		got[im.name()] = im.Reason
	}
	want := map[string]string{"app:1": store.ReasonKeepLast, "app:2": store.ReasonKeepLast, "sigs:1": store.ReasonReferrer}
	if !res.DryRun || res.Txn != 0 || len(got) != 3 || got["app:1"] != want["app:1"] || got["app:2"] != want["app:2"] || got["sigs:1"] != want["sigs:1"] || res.BytesFreed <= 0 {
		t.Errorf("dry run: %+v", res)
	}
	if ls() != before {
		t.Fatal("a dry run changed the layout")
	}
	r = must(t, 0, "-l", dir, "prune", "--keep-last", "2", "--filter", "ref=app:*", "--dry-run")
	wantContains(t, "stdout", r.stdout, "would remove", "app:1", "keep-last", "sigs:1", "referrer", "would remove 3 references; would free")

	// For real, keeping the referrers.
	r = must(t, 0, "-l", dir, "prune", "--keep-last", "2", "--filter", "ref=app:*", "--keep-referrers")
	wantContains(t, "stdout", r.stdout, "removed", "app:1", app[0].Digest.String(), "app:2", "removed 2 references; freed")
	wantNotContains(t, "stdout", r.stdout, "sigs:1")
	must(t, 0, "-l", dir, "inspect", "sigs:1")
	must(t, 2, "-l", dir, "inspect", "app:1")
	must(t, 0, "-l", dir, "fsck")
	// The signature's subject is gone: a prune that matches it takes it.
	r = must(t, 0, "-l", dir, "prune", "--keep-last", "5", "--json")
	if res := decodeJSON[pruneOutput](t, r); len(res.Removed) != 1 || res.Removed[0].name() != "sigs:1" || res.Removed[0].Reason != store.ReasonDanglingReferrer || res.Txn == 0 {
		t.Errorf("dangling referrer: %+v", res)
	}
	if exists(filepath.Join(dir, "blobs", "sha256", sig.Digest.Encoded())) {
		t.Error("the signature's blob is still there")
	}
	// Created before 2025-12-31: none (the configs say 2026-01-01).
	r = must(t, 0, "-l", dir, "prune", "--filter", "until=2025-12-31", "--json")
	if res := decodeJSON[pruneOutput](t, r); len(res.Removed) != 0 || res.Txn != 0 {
		t.Errorf("until before every image: %+v", res)
	}
	// A budget below one image, keeping the newest of each repository.
	r = must(t, 0, "-l", dir, "prune", "--max-size", "1", "--keep-last", "1")
	wantContains(t, "stdout", r.stdout, "app:3", "max-size", "over budget")
	if res := decodeJSON[pruneOutput](t, must(t, 0, "-l", dir, "prune", "--max-size", "1", "--json")); res.OverBudget || res.SizeAfter != 0 || len(res.Removed) != 2 {
		t.Errorf("prune to nothing: %+v", res)
	}
	must(t, 0, "-l", dir, "fsck")
	r = must(t, 0, "prune", "-h")
	wantContains(t, "stdout", r.stdout, "--keep-last N", "--older-than", "--max-size", "--filter KEY=VALUE", "--keep-referrers", "--dry-run")
}

func TestRmReferrers(t *testing.T) {
	t.Parallel()
	dir, _, sig := pruneFixture(t)
	r := must(t, 0, "-l", dir, "rm", "app:1", "--keep-referrers")
	wantNotContains(t, "stdout", r.stdout, "referrer")
	must(t, 0, "-l", dir, "inspect", "sigs:1")
	dir, _, sig = pruneFixture(t)
	r = must(t, 0, "-l", dir, "rm", "app:1")
	wantContains(t, "stdout", r.stdout, "removed app:1\n", "removed referrer sigs:1 ("+sig.Digest.String()+")")
	must(t, 2, "-l", dir, "inspect", "sigs:1")
	must(t, 0, "-l", dir, "fsck")
}

func TestParseSizeTime(t *testing.T) {
	for in, want := range map[string]int64{
		"12345": 12345, "1K": 1024, "1KiB": 1024, "1kb": 1000, "20GiB": 20 << 30, "500MB": 500e6, "1.5G": 3 << 29, "2T": 2 << 40, "7 B": 7,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "12XB", "1e3", "-1", "99999999999T"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2026-01-02T03:04:05Z":      time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		"2026-01-02T03:04:05+02:00": time.Date(2026, 1, 2, 1, 4, 5, 0, time.UTC),
		"2026-01-02":                time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC),
		"2026-01-02T03:04:05":       time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		"1700000000":                time.Unix(1700000000, 0),
		"24h":                       now.Add(-24 * time.Hour),
		"7d":                        now.Add(-7 * 24 * time.Hour),
	} {
		if got, err := parseTime(in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseTime(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "soon", "2026-13-01", "-1h"} {
		if _, err := parseTime(in, now); err == nil {
			t.Errorf("parseTime(%q) succeeded", in)
		}
	}
	var p store.Policy
	for _, f := range []string{"ref=a:*", "reference=b:*", "label=k=v", "label=k", "until=2026-01-01"} {
		if err := addFilter(&p, f, now); err != nil {
			t.Errorf("addFilter(%q): %v", f, err)
		}
	}
	if len(p.Refs) != 2 || len(p.Labels) != 2 || p.Labels[0] != "k=v" || p.Until.IsZero() {
		t.Errorf("policy %+v", p)
	}
	for _, f := range []string{"ref", "ref=", "color=red"} {
		if err := addFilter(&p, f, now); err == nil {
			t.Errorf("addFilter(%q) succeeded", f)
		}
	}
}

// TestLeaseAcrossProcesses: a lease taken by one process (a cache that
// embeds the store) protects its blobs from gc and prune run by another
// (cron), until it is released.
func TestLeaseAcrossProcesses(t *testing.T) {
	t.Parallel()
	dir, app, _ := pruneFixture(t)
	ctx := context.Background()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lease, err := s.Lease(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pulled := []byte("a layer a pull wrote, not tagged yet")
	pd := testutil.Blob(pulled, v1.MediaTypeImageLayerGzip)
	if err := s.PutBlob(lease.Context(ctx), pd, bytes.NewReader(pulled)); err != nil {
		t.Fatal(err)
	}
	// The pull also reuses app:1's own layer, which the prune below frees.
	var m v1.Manifest
	if err := json.Unmarshal(readFile(t, filepath.Join(dir, "blobs", "sha256", app[0].Digest.Encoded())), &m); err != nil {
		t.Fatal(err)
	}
	own := m.Layers[len(m.Layers)-1]
	if err := lease.Add(ctx, own); err != nil {
		t.Fatal(err)
	}

	r := must(t, 0, "-l", dir, "gc", "--grace", "0s", "--json")
	if res := decodeJSON[gcOutput](t, r); len(res.Freed) != 0 || res.Leased != 1 {
		t.Errorf("gc under a lease: %+v", res)
	}
	r = must(t, 0, "-l", dir, "prune", "--keep-last", "3", "--filter", "ref=app:*", "--json")
	res := decodeJSON[pruneOutput](t, r)
	if len(res.Removed) != 2 { // app:1 and its signature
		t.Errorf("prune: %+v", res)
	}
	for _, f := range res.Freed {
		if f.Digest == own.Digest.String() {
			t.Error("prune freed a leased layer")
		}
	}
	for _, d := range []digest.Digest{pd.Digest, own.Digest} {
		if !exists(filepath.Join(dir, "blobs", "sha256", d.Encoded())) {
			t.Errorf("leased blob %s removed by another process", d)
		}
	}
	must(t, 0, "-l", dir, "fsck") // leased blobs are not orphans
	r = must(t, 0, "-l", dir, "du", "--grace", "0s", "--json")
	if u := decodeJSON[duOutput](t, r); u.LeasedBytes != int64(len(pulled))+own.Size || u.ReclaimableBytes != 0 {
		t.Errorf("du under a lease: %+v", u)
	}

	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r = must(t, 0, "-l", dir, "gc", "--grace", "0s", "--json")
	if res := decodeJSON[gcOutput](t, r); len(res.Freed) != 2 {
		t.Errorf("gc after release: %+v", res)
	}
	must(t, 0, "-l", dir, "fsck")
}

// TestPruneEmptiesTrash: a prune large enough to take its blobs out
// through .ocistore/trash leaves the trash empty when the command exits,
// the blobs gone and fsck clean (which reports the trash a gone process
// left). The store unlinks the trash in the background and Close waits for
// it; store's TestCloseWaitsForTrash checks the wait itself, which this
// end-to-end run cannot tell from a fast unlinking.
func TestPruneEmptiesTrash(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "layout")
	st, err := gen.Write(dir, gen.Spec{Images: 60, Repos: 2, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	before := blobCount(t, dir)
	r := must(t, 0, "-l", dir, "prune", "--keep-last", "1", "--json")
	res := decodeJSON[pruneOutput](t, r)
	if len(res.Removed) != st.Images-2 || len(res.Freed) < protocol.DefaultTrashMin {
		t.Fatalf("pruned %d images, %d blobs; want %d images and at least %d blobs (the trash path)", len(res.Removed), len(res.Freed), st.Images-2, protocol.DefaultTrashMin)
	}
	if after := blobCount(t, dir); after != before-len(res.Freed) {
		t.Errorf("%d blob files after freeing %d of %d", after, len(res.Freed), before)
	}
	ents, err := os.ReadDir(filepath.Join(dir, protocol.TrashDir))
	if err != nil || len(ents) != 0 {
		t.Errorf("trash after the command: %d files, %v", len(ents), err)
	}
	must(t, 0, "-l", dir, "fsck")
}

func blobCount(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestRepairGrace: fsck --repair keeps the orphans gc would keep (younger
// than an hour by default): a copy by another tool that has written its
// blobs but not yet its index.json loses nothing to a repair run then.
// --grace 0s removes them.
func TestRepairGrace(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	young := dropBlob(t, f.dir, "a layer skopeo is copying", time.Minute)
	old := dropBlob(t, f.dir, "a layer left a day ago", 24*time.Hour)
	r := cli(t, "-l", f.dir, "fsck", "--repair")
	if r.code != exitOK || !strings.Contains(r.stdout, "notice: orphan "+young.String()) { // left, a notice
		t.Fatalf("fsck --repair with a young orphan: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(f.blobPath(young)); err != nil {
		t.Errorf("the young orphan was removed: %v", err)
	}
	if _, err := os.Stat(f.blobPath(old)); !os.IsNotExist(err) {
		t.Errorf("the old orphan is left: %v", err)
	}
	must(t, 0, "-l", f.dir, "fsck", "--repair", "--grace", "0s")
	if _, err := os.Stat(f.blobPath(young)); !os.IsNotExist(err) {
		t.Errorf("--grace 0s left the young orphan: %v", err)
	}
}

// TestPruneUntaggedCommand: --untagged removes every untagged entry but
// one that a tagged index lists; the untagged entries are the first a size
// budget removes, and --keep-last keeps none of them.
func TestPruneUntaggedCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	s, err := store.Open(ctx, f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, f.amd64, "amd64"); err != nil { // a platform of multi, listed too
		t.Fatal(err)
	}
	if err := s.Untag(ctx, "amd64"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	untaggedOnly := func(r result, reason string) {
		t.Helper()
		res := decodeJSON[pruneOutput](t, r)
		if len(res.Removed) != 1 || res.Removed[0].Digest != f.untagged.Digest.String() || !res.Removed[0].Untagged ||
			res.Removed[0].Ref != nil || res.Removed[0].Repository != nil || res.Removed[0].Tag != nil || res.Removed[0].Reason != reason {
			t.Errorf("removed %+v, want only the untagged entry (%s)", res.Removed, reason)
		}
	}
	ls := must(t, 0, "-l", f.dir, "ls").stdout
	// A budget one byte short: the untagged entry goes, not a (used least
	// recently: first seen first).
	u := decodeJSON[duOutput](t, must(t, 0, "-l", f.dir, "du", "--json"))
	untaggedOnly(must(t, 0, "-l", f.dir, "prune", "--max-size", fmt.Sprint(u.ReferencedBytes-1), "--dry-run", "--json"), store.ReasonMaxSize)
	// Keep-last protects none of them.
	r := must(t, 0, "-l", f.dir, "prune", "--keep-last", "5", "--dry-run", "--json")
	untaggedOnly(r, store.ReasonKeepLast)
	if got := must(t, 0, "-l", f.dir, "ls").stdout; got != ls {
		t.Fatalf("a dry run changed the layout:\n%s", got)
	}
	r = must(t, 0, "-l", f.dir, "prune", "--untagged", "--dry-run")
	wantContains(t, "stdout", r.stdout, "would remove   <none>   "+f.untagged.Digest.String()+"   untagged", "would remove 1 reference")
	untaggedOnly(must(t, 0, "-l", f.dir, "prune", "--untagged", "--json"), store.ReasonUntagged)
	// What is left untagged is multi's platform, which stays.
	var left []string
	for _, row := range decodeJSON[[]lsRow](t, must(t, 0, "-l", f.dir, "ls", "--json")) {
		if row.Untagged {
			left = append(left, row.Digest)
		}
	}
	if len(left) != 1 || left[0] != f.amd64.Digest.String() {
		t.Errorf("untagged entries left: %v, want multi's amd64 platform", left)
	}
	if res := decodeJSON[pruneOutput](t, must(t, 0, "-l", f.dir, "prune", "--untagged", "--json")); len(res.Removed) != 0 || res.Txn != 0 {
		t.Errorf("second prune --untagged: %+v", res)
	}
	must(t, 0, "-l", f.dir, "fsck")
	wantContains(t, "help", must(t, 0, "prune", "-h").stdout, "--untagged", "Untagged entries go first")
}
