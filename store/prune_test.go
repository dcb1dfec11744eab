package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// imageWith stores an image whose config has created (when not "") and
// labels, over layers plus own random ones.
func (l *lib) imageWith(created string, labels map[string]string, layers []v1.Descriptor, own int) v1.Descriptor {
	l.t.Helper()
	cfg := map[string]any{"architecture": "amd64", "os": "linux", "n": l.b.Rng.Uint64()}
	if created != "" {
		cfg["created"] = created
	}
	if labels != nil {
		cfg["config"] = map[string]any{"Labels": labels}
	}
	raw, _ := json.Marshal(cfg)
	cd := l.b.Put(raw, v1.MediaTypeImageConfig)
	ls := append([]v1.Descriptor(nil), layers...)
	for i := 0; i < own; i++ {
		ls = append(ls, l.b.Random(100+l.b.Rng.IntN(400)))
	}
	m, _ := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cd, Layers: ls})
	return l.b.Put(m, v1.MediaTypeImageManifest)
}

func day(n int) string { return time.Date(2026, 1, n, 0, 0, 0, 0, time.UTC).Format(time.RFC3339) }

func (l *lib) prune(p store.Policy) *store.PruneResult {
	l.t.Helper()
	res, err := l.s.Prune(l.ctx, p)
	if err != nil {
		l.t.Fatalf("prune %+v: %v", p, err)
	}
	return res
}

// removed lists "name:reason" of a prune's removals, sorted.
func removed(r *store.PruneResult) []string {
	out := []string{}
	for _, im := range r.Removed {
		n := im.Name
		if n == "" {
			n = "<none>"
		}
		out = append(out, n+"/"+im.Reason)
	}
	sort.Strings(out)
	return out
}

func wantRemoved(t *testing.T, r *store.PruneResult, want ...string) {
	t.Helper()
	sort.Strings(want)
	if want == nil {
		want = []string{}
	}
	if got := removed(r); !slices.Equal(got, want) {
		t.Errorf("removed\n got %v\nwant %v", got, want)
	}
}

// names lists the tags of index.json, sorted ("<none>" for untagged).
func (l *lib) names() []string {
	l.t.Helper()
	imgs, err := l.s.List(l.ctx)
	if err != nil {
		l.t.Fatal(err)
	}
	var out []string
	for _, im := range imgs {
		n := im.Name
		if n == "" {
			n = "<none>"
		}
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// onlyUsedBy returns the blobs of gone's graphs that none of kept's use.
func (l *lib) onlyUsedBy(gone, kept []v1.Descriptor) []digest.Digest {
	l.t.Helper()
	var g, k []digest.Digest
	for _, d := range gone {
		g = append(g, l.graph(d)...)
	}
	for _, d := range kept {
		k = append(k, l.graph(d)...)
	}
	return libMinus(g, k)
}

func sameDigests(a []digest.Digest, b []store.Blob) bool {
	x := map[string]bool{}
	for _, d := range a {
		x[d.String()] = true
	}
	y := map[string]bool{}
	for _, f := range b {
		y[f.Digest] = true
	}
	if len(x) != len(y) {
		return false
	}
	for k := range x {
		if !y[k] {
			return false
		}
	}
	return true
}

// TestPruneKeepLast: the newest N images of each repository stay; ties go
// to the later entry; an image with several tags counts once and keeps all
// its tags; an image also tagged in another repository keeps its blobs;
// names without a tag part form one group; untagged entries are kept by
// none.
func TestPruneKeepLast(t *testing.T) {
	l := newLib(t)
	base := l.b.Random(3000)
	app := make([]v1.Descriptor, 5)
	for i := range app {
		app[i] = l.imageWith(day(i+1), nil, []v1.Descriptor{base}, 2)
	}
	app = append(app, l.imageWith(day(5), nil, []v1.Descriptor{base}, 1)) // ties with app[4]: the later entry is newer
	for i, d := range app {
		l.tag(d, fmt.Sprintf("reg.io/app:%d", i))
	}
	l.tag(app[5], "reg.io/app:latest") // a second tag of the newest image
	l.tag(app[1], "other/x:1")         // app[1] also lives in another repository
	plain := []v1.Descriptor{l.imageWith(day(1), nil, nil, 1), l.imageWith(day(9), nil, nil, 1), l.imageWith(day(3), nil, nil, 1)}
	l.tag(plain[0], "v1")
	l.tag(plain[1], "v2")
	l.tag(plain[2], "v3")
	dangling := l.imageWith(day(1), nil, nil, 1)
	l.tag(dangling, "tmp")
	if err := l.s.Untag(l.ctx, "tmp"); err != nil {
		t.Fatal(err)
	}

	// The untagged entry is not a repository's: keep-last keeps none of it.
	wantFreed := l.onlyUsedBy([]v1.Descriptor{app[0], app[2], app[3], plain[0], dangling}, []v1.Descriptor{app[1], app[4], app[5], plain[1], plain[2]})
	dry := l.prune(store.Policy{KeepLast: 2, DryRun: true})
	res := l.prune(store.Policy{KeepLast: 2})
	wantRemoved(t, res, "reg.io/app:0/keep-last", "reg.io/app:1/keep-last", "reg.io/app:2/keep-last", "reg.io/app:3/keep-last", "v1/keep-last", "<none>/keep-last")
	if !slices.Equal(removed(dry), removed(res)) || !sameDigests(digestsOf(res.Freed), dry.Freed) || dry.BytesFreed != res.BytesFreed || !dry.DryRun || dry.Txn != 0 {
		t.Errorf("dry run differs: %+v\nreal: %+v", dry, res)
	}
	if got, want := l.names(), []string{"other/x:1", "reg.io/app:4", "reg.io/app:5", "reg.io/app:latest", "v2", "v3"}; !slices.Equal(got, want) {
		t.Errorf("left %v, want %v", got, want)
	}
	if !sameDigests(wantFreed, res.Freed) || res.Txn == 0 {
		t.Errorf("freed %v, want %v", res.Freed, wantFreed)
	}
	l.wantBlobs(true, l.graph(app[1])...)
	if res.SizeAfter >= res.SizeBefore || res.SizeBefore-res.SizeAfter != res.BytesFreed {
		t.Errorf("sizes %d -> %d, freed %d", res.SizeBefore, res.SizeAfter, res.BytesFreed)
	}
	l.clean()
	// Nothing left to do: no transaction.
	if res := l.prune(store.Policy{KeepLast: 2}); len(res.Removed) != 0 || res.Txn != 0 {
		t.Errorf("second prune: %+v", res)
	}
	// Keep-last 1.
	res = l.prune(store.Policy{KeepLast: 1})
	wantRemoved(t, res, "reg.io/app:4/keep-last", "v3/keep-last")
	l.clean()
}

func digestsOf(bs []store.Blob) []digest.Digest {
	var out []digest.Digest
	for _, b := range bs {
		out = append(out, digest.Digest(b.Digest))
	}
	return out
}

// TestPruneAge: older-than and until against the config's created, else
// the time the store first saw the image (across a restart); with
// keep-last, only what is both old and not among the newest goes.
func TestPruneAge(t *testing.T) {
	clock := newClock() // 2026-03-01 12:00
	dir := filepath.Join(t.TempDir(), "layout")
	l := libOpenClock(t, dir, clock)
	old1 := l.imageWith(day(1), nil, nil, 1)
	old2 := l.imageWith(day(2), nil, nil, 1)
	recent := l.imageWith("2026-02-28T00:00:00Z", nil, nil, 1)
	l.tag(old1, "app:1")
	l.tag(old2, "app:2")
	l.tag(recent, "app:3")
	undated := l.imageWith("", nil, nil, 1) // no created: first seen now
	l.tag(undated, "app:undated")
	l.s.Close()

	clock.Advance(10 * 24 * time.Hour) // 2026-03-11
	l = libOpenClock(t, dir, clock)
	if err := (&store.Policy{OlderThan: -time.Hour}).Validate(); !errors.Is(err, store.ErrInvalidArgument) {
		t.Errorf("negative older-than: %v", err)
	}
	// 30 days: old1 and old2 (January); recent and undated are younger.
	res := l.prune(store.Policy{OlderThan: 30 * 24 * time.Hour, KeepLast: 3})
	wantRemoved(t, res, "app:1/older-than") // keep-last 3 protects old2 (3rd newest)
	res = l.prune(store.Policy{Until: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)})
	wantRemoved(t, res, "app:2/older-than")
	// undated was first seen 10 days ago: older than 9 days, not 11.
	res = l.prune(store.Policy{OlderThan: 11 * 24 * time.Hour})
	wantRemoved(t, res, "app:3/older-than") // recent: Feb 28 is 11.5 days ago
	res = l.prune(store.Policy{OlderThan: 9 * 24 * time.Hour})
	wantRemoved(t, res, "app:undated/older-than")
	l.clean()
}

// TestPruneAdoptedFirstSeen: images of a layout another tool wrote, whose
// configs have no created, are aged from the adoption.
func TestPruneAdoptedFirstSeen(t *testing.T) {
	dir := t.TempDir()
	blobs := map[digest.Digest][]byte{}
	var entries []v1.Descriptor
	for i := 0; i < 3; i++ {
		entries = append(entries, testutil.Named(testutil.RawImage(blobs, []byte(fmt.Sprintf(`{"n":%d}`, i)), []byte(fmt.Sprintf("layer %d", i))), fmt.Sprintf("app:%d", i)))
	}
	testutil.WriteRawLayout(t, dir, blobs, entries)
	clock := newClock()
	l := libOpenClock(t, dir, clock)
	if res := l.prune(store.Policy{OlderThan: time.Hour}); len(res.Removed) != 0 {
		t.Errorf("just adopted, pruned %v", res.Removed)
	}
	l.s.Close()
	clock.Advance(2 * time.Hour)
	l = libOpenClock(t, dir, clock)
	res := l.prune(store.Policy{OlderThan: time.Hour, KeepLast: 1})
	wantRemoved(t, res, "app:0/older-than", "app:1/older-than") // ties: the last entry is the newest
	l.clean()
}

// TestPruneMaxSize: least recently used first until the budget is met;
// uses are recorded by Resolve and manifest Fetch, batched (no commit per
// read) and persisted by the next transaction or by Close; a budget already
// met removes nothing; a budget below one image removes every candidate,
// and says when keep-last leaves it unmet.
func TestPruneMaxSize(t *testing.T) {
	clock := newClock()
	dir := filepath.Join(t.TempDir(), "layout")
	commits := atomic.Int64{}
	open := func() *lib {
		o := &store.Options{}
		store.SetTestClock(o, clock.Now)
		store.SetTestJournalHook(o, func() { commits.Add(1) })
		s, err := store.Open(context.Background(), dir, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return &lib{t: t, ctx: context.Background(), dir: dir, s: s, b: testutil.NewBuilder(t, s, 9)}
	}
	l := open()
	var imgs []v1.Descriptor
	for i := 0; i < 5; i++ {
		imgs = append(imgs, l.imageWith(day(i+1), nil, nil, 2))
		l.tag(imgs[i], fmt.Sprintf("app:%d", i))
		clock.Advance(time.Minute)
	}
	sizes := map[digest.Digest]int64{}
	for _, d := range imgs {
		sizes[d.Digest] = l.sizeOfImage(d)
	}
	size := func(ds ...v1.Descriptor) int64 {
		var n int64
		for _, d := range ds {
			n += sizes[d.Digest]
		}
		return n
	}
	total := size(imgs...)

	// Use app:0 (Resolve) and app:1 (Fetch of its manifest): they become
	// the most recently used. 200 reads, no commit.
	clock.Advance(time.Hour)
	before := commits.Load()
	for i := 0; i < 100; i++ {
		if _, err := l.s.Resolve(l.ctx, "app:0"); err != nil {
			t.Fatal(err)
		}
		if _, err := libFetchAll(l.ctx, l.s, imgs[1]); err != nil {
			t.Fatal(err)
		}
	}
	if n := commits.Load() - before; n != 0 {
		t.Errorf("%d journal commits for 200 reads", n)
	}
	l.s.Close() // persists the uses
	if n := commits.Load() - before; n != 1 {
		t.Errorf("Close made %d commits, want 1", n)
	}
	l = open()

	// Budget already met.
	if res := l.prune(store.Policy{MaxSize: total}); len(res.Removed) != 0 || res.OverBudget || res.SizeBefore != total {
		t.Errorf("budget met: %+v (total %d)", res, total)
	}
	// Room for three images: app:2 and app:3 (least recently used) go.
	res := l.prune(store.Policy{MaxSize: total - size(imgs[2]) - size(imgs[3]) + 1})
	wantRemoved(t, res, "app:2/max-size", "app:3/max-size")
	if res.OverBudget || res.SizeAfter != total-size(imgs[2], imgs[3]) {
		t.Errorf("budget: %+v", res)
	}
	// Below one image, with keep-last 1: all but the newest go; unmet.
	res = l.prune(store.Policy{MaxSize: 1, KeepLast: 1})
	wantRemoved(t, res, "app:0/max-size", "app:1/max-size")
	if !res.OverBudget || res.SizeAfter != size(imgs[4]) {
		t.Errorf("budget below one image: %+v", res)
	}
	// Without keep-last, the last image goes and the budget is met.
	res = l.prune(store.Policy{MaxSize: 1})
	wantRemoved(t, res, "app:4/max-size")
	if res.OverBudget || res.SizeAfter != 0 {
		t.Errorf("empty: %+v", res)
	}
	l.clean()
}

// TestPruneLRUPersistedByTransaction: uses ride along with the next
// transaction (here a tag), not only with Close.
func TestPruneLRUPersistedByTransaction(t *testing.T) {
	clock := newClock()
	dir := filepath.Join(t.TempDir(), "layout")
	l := libOpenClock(t, dir, clock)
	a, b := l.imageWith(day(1), nil, nil, 1), l.imageWith(day(2), nil, nil, 1)
	l.tag(a, "a:1")
	l.tag(b, "b:1")
	clock.Advance(time.Hour)
	if _, err := l.s.Resolve(l.ctx, "a:1"); err != nil {
		t.Fatal(err)
	}
	l.tag(a, "a:2") // persists the use
	// A second handle (another process) sees it.
	o := &store.Options{}
	store.SetTestClock(o, clock.Now)
	s2, err := store.Open(l.ctx, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	// b:1 (never used) is evicted before a (used), although a:1 comes first
	// in index.json and is older.
	res, err := s2.Prune(l.ctx, store.Policy{MaxSize: l.sizeOfImage(a) + l.sizeOfImage(b) - 1, Refs: []string{"a:*", "b:*"}, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	wantRemoved(t, res, "b:1/max-size")
}

func (l *lib) sizeOfImage(d v1.Descriptor) int64 {
	var n int64
	for _, s := range sizesOf(l.t, l.dir, l.graph(d)) {
		n += s
	}
	return n
}

// TestPruneFilters: ref globs (untagged entries never match), labels k=v
// and k, and bad arguments.
func TestPruneFilters(t *testing.T) {
	l := newLib(t)
	a1 := l.imageWith(day(1), map[string]string{"tier": "cache", "team": "x"}, nil, 1)
	a2 := l.imageWith(day(2), map[string]string{"tier": "prod"}, nil, 1)
	a3 := l.imageWith(day(3), nil, nil, 1)
	b1 := l.imageWith(day(1), map[string]string{"tier": "cache"}, nil, 1)
	l.tag(a1, "reg.io/a:1")
	l.tag(a2, "reg.io/a:2")
	l.tag(a3, "reg.io/a:3")
	l.tag(b1, "reg.io/b:1")
	u := l.imageWith(day(1), nil, nil, 1)
	l.tag(u, "tmp")
	if err := l.s.Untag(l.ctx, "tmp"); err != nil {
		t.Fatal(err)
	}
	until := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC) // everything is older
	wantRemoved(t, l.prune(store.Policy{Until: until, Labels: []string{"tier=cache"}, DryRun: true}), "reg.io/a:1/older-than", "reg.io/b:1/older-than")
	wantRemoved(t, l.prune(store.Policy{Until: until, Labels: []string{"tier=cache", "team"}, DryRun: true}), "reg.io/a:1/older-than")
	wantRemoved(t, l.prune(store.Policy{Until: until, Labels: []string{"tier"}, DryRun: true}), "reg.io/a:1/older-than", "reg.io/a:2/older-than", "reg.io/b:1/older-than")
	wantRemoved(t, l.prune(store.Policy{Until: until, Refs: []string{"reg.io/a:*"}, DryRun: true}), "reg.io/a:1/older-than", "reg.io/a:2/older-than", "reg.io/a:3/older-than")
	wantRemoved(t, l.prune(store.Policy{Until: until, Refs: []string{"*"}, DryRun: true})) // '*' does not cross '/'; untagged never match
	wantRemoved(t, l.prune(store.Policy{Until: until, Refs: []string{"reg.io/b:?", "reg.io/a:3"}}), "reg.io/b:1/older-than", "reg.io/a:3/older-than")
	// No filter: the untagged entry is a candidate too, which keep-last
	// does not protect.
	wantRemoved(t, l.prune(store.Policy{KeepLast: 1}), "reg.io/a:1/keep-last", "<none>/keep-last")
	l.clean()

	for _, p := range []store.Policy{
		{},                                    // no rule
		{Refs: []string{"a:*"}},               // filters only
		{KeepLast: -1},                        // negative
		{MaxSize: -5},                         //
		{KeepLast: 1, Refs: []string{"a:["}},  // bad glob
		{KeepLast: 1, Labels: []string{"=x"}}, // no key
	} {
		if _, err := l.s.Prune(l.ctx, p); !errors.Is(err, store.ErrInvalidArgument) {
			t.Errorf("Prune(%+v) = %v, want ErrInvalidArgument", p, err)
		}
	}
}

// TestReferrerCascade: deleting or pruning an image deletes its referrers
// (and theirs), including the referrers of the platform manifests of a
// deleted index; KeepReferrers keeps them; a prune removes a candidate
// referrer whose subject is gone; referrers are never chosen by a rule.
func TestReferrerCascade(t *testing.T) {
	l := newLib(t)
	img := l.imageWith(day(1), nil, nil, 2)
	l.tag(img, "app:1")
	newer := l.imageWith(day(2), nil, nil, 1)
	l.tag(newer, "app:2")
	sig := l.b.Artifact("application/vnd.dev.cosign.artifact.sig.v1+json", &img, "application/vnd.dev.cosign.simplesigning.v1+json")
	l.tag(sig, "app:sha256-1.sig") // cosign-style tag in the image's repository
	sbom := l.b.Artifact("application/spdx+json", &img, "application/spdx+json")
	l.tag(sbom, "sboms:app-1")
	sigOfSbom := l.b.Artifact("application/vnd.dev.cosign.artifact.sig.v1+json", &sbom, "application/vnd.dev.cosign.simplesigning.v1+json")
	l.tag(sigOfSbom, "sboms:app-1.sig")

	// Keep-last 1 in app: the signature is not an image of app; app:1 goes,
	// and with it the signature, the SBOM and the SBOM's signature.
	dry := l.prune(store.Policy{KeepLast: 1, Refs: []string{"app:*"}, DryRun: true})
	wantRemoved(t, dry, "app:1/keep-last", "app:sha256-1.sig/referrer", "sboms:app-1/referrer", "sboms:app-1.sig/referrer")
	kept := l.prune(store.Policy{KeepLast: 1, Refs: []string{"app:*"}, KeepReferrers: true, DryRun: true})
	wantRemoved(t, kept, "app:1/keep-last")
	res := l.prune(store.Policy{KeepLast: 1, Refs: []string{"app:*"}})
	wantRemoved(t, res, "app:1/keep-last", "app:sha256-1.sig/referrer", "sboms:app-1/referrer", "sboms:app-1.sig/referrer")
	l.wantBlobs(false, sig.Digest, sbom.Digest, sigOfSbom.Digest, img.Digest)
	l.clean()

	// Delete cascades the same way; DeleteWith can keep them.
	sig2 := l.b.Artifact("sig", &newer, "sig")
	l.tag(sig2, "sigs:2")
	kres, err := l.s.DeleteWith(l.ctx, []string{"app:2"}, &store.DeleteOptions{KeepReferrers: true})
	if err != nil || len(kres.Referrers) != 0 {
		t.Fatalf("DeleteWith keep: %+v, %v", kres, err)
	}
	if got := l.names(); !slices.Equal(got, []string{"sigs:2"}) {
		t.Fatalf("left %v", got)
	}
	// A prune takes the referrer whose subject is gone, if it is a candidate.
	wantRemoved(t, l.prune(store.Policy{KeepLast: 5, Refs: []string{"other:*"}}))
	wantRemoved(t, l.prune(store.Policy{KeepLast: 5}), "sigs:2/dangling-referrer")
	l.clean()

	// Referrers of a platform manifest go with the index.
	amd, arm := l.imageWith(day(1), nil, nil, 1), l.imageWith(day(1), nil, nil, 1)
	ix := l.b.Index(amd, arm)
	l.tag(ix, "multi:1")
	psig := l.b.Artifact("sig", &arm, "sig")
	l.tag(psig, "multi:arm.sig")
	also := l.imageWith(day(3), nil, nil, 1)
	l.tag(also, "multi:2")
	asig := l.b.Artifact("sig", &also, "sig")
	l.tag(asig, "multi:2.sig")
	dres := l.del("multi:1")
	if len(dres.Referrers) != 1 || dres.Referrers[0].Name != "multi:arm.sig" {
		t.Errorf("delete cascade: %+v", dres.Referrers)
	}
	if got := l.names(); !slices.Equal(got, []string{"multi:2", "multi:2.sig"}) {
		t.Errorf("left %v", got)
	}
	// A manifest still used elsewhere is not gone: its referrers stay.
	l.tag(also, "multi:3")
	if r := l.del("multi:2"); len(r.Referrers) != 0 {
		t.Errorf("cascade for a manifest still tagged: %+v", r.Referrers)
	}
	l.clean()
}

// TestPruneIsOneTransaction: a prune of many images is one record, one
// index.json write, and reads the manifests of the removed images only.
func TestPruneIsOneTransaction(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	l := libOpen(t, dir, 1)
	base := l.b.Random(1000)
	const n = 200
	for i := 0; i < n; i++ {
		d := l.imageWith(day(1+i%28), nil, []v1.Descriptor{base}, 1)
		l.tag(d, fmt.Sprintf("r%d:%d", i%4, i))
	}
	l.s.Close()
	osfs, err := fsio.OpenOS(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfs := &countingFS{FS: osfs}
	o := &store.Options{}
	store.SetTestFS(o, cfs)
	commits := atomic.Int64{}
	store.SetTestJournalHook(o, func() { commits.Add(1) })
	s, err := store.Open(l.ctx, dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfs.reset()
	commits.Store(0)
	res, err := s.Prune(l.ctx, store.Policy{KeepLast: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != n-20 {
		t.Fatalf("removed %d", len(res.Removed))
	}
	opens, replaces := cfs.counts()
	// Each removed image: its manifest read once (the plan's simulation and
	// the refcounts share a cache). No other manifest.
	if opens > len(res.Removed)+5 {
		t.Errorf("prune of %d images opened %d files", len(res.Removed), opens)
	}
	if replaces != 1 {
		t.Errorf("index.json written %d times", replaces)
	}
	if c := commits.Load(); c != 2 { // the record, then its clearing
		t.Errorf("%d journal commits, want 2", c)
	}
	testutil.MustCheck(t, s)
}

// countingFS counts file opens and replacements.
type countingFS struct {
	fsio.FS
	mu       sync.Mutex
	opens    int
	replaces int
}

func (c *countingFS) Open(name string) (fsio.File, error) {
	c.mu.Lock()
	if strings.HasPrefix(name, "blobs/") {
		c.opens++
	}
	c.mu.Unlock()
	return c.FS.Open(name)
}

func (c *countingFS) ReplaceFile(name, tmpDir string, data []byte, perm fs.FileMode) error {
	c.mu.Lock()
	c.replaces++
	c.mu.Unlock()
	return c.FS.ReplaceFile(name, tmpDir, data, perm)
}

// Rename counts a transaction's index.json, prepared under a temp name
// before its journal commit and renamed over index.json after it.
func (c *countingFS) Rename(oldname, newname string) error {
	if newname == "index.json" {
		c.mu.Lock()
		c.replaces++
		c.mu.Unlock()
	}
	return c.FS.Rename(oldname, newname)
}

func (c *countingFS) reset() {
	c.mu.Lock()
	c.opens, c.replaces = 0, 0
	c.mu.Unlock()
}

func (c *countingFS) counts() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opens, c.replaces
}

// TestLeaseAgainstConcurrentPrune: pullers tag images under leases while
// prunes (keep-last 1 per repository, and a size budget) and GCs run in
// other goroutines. No pull loses a blob; the end state is consistent.
func TestLeaseAgainstConcurrentPrune(t *testing.T) {
	l := newLib(t)
	baseBytes := []byte(strings.Repeat("base layer ", 100))
	const pullers, pulls = 3, 8
	ctx, cancel := context.WithCancel(l.ctx)
	var wg, bg sync.WaitGroup
	errs := make(chan error, 64)
	for g, p := range []store.Policy{{KeepLast: 1}, {MaxSize: 2000, KeepLast: 1}} {
		bg.Add(1)
		go func() {
			defer bg.Done()
			for ctx.Err() == nil {
				if _, err := l.s.Prune(ctx, p); err != nil && ctx.Err() == nil {
					errs <- fmt.Errorf("prune %d: %w", g, err)
					return
				}
				if _, err := l.s.GC(ctx, store.GCOptions{}); err != nil && ctx.Err() == nil {
					errs <- fmt.Errorf("gc: %w", err)
					return
				}
			}
		}()
	}
	for p := 0; p < pullers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < pulls; i++ {
				if err := pull(l.ctx, l.s, baseBytes, p, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	bg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	l.prune(store.Policy{KeepLast: 1})
	if got := len(l.index()); got != pullers {
		t.Errorf("%d images left, want %d (the last pull of each)", got, pullers)
	}
	l.gc(store.GCOptions{})
	l.clean()
}

// TestNoOpChangesNothing: on a layout another tool wrote (its own JSON
// style), a prune that matches nothing, an untag of an untagged entry's
// absent name and a tag that exists already commit no transaction and
// leave index.json byte for byte as it was.
func TestNoOpChangesNothing(t *testing.T) {
	l := newLib(t)
	d := l.imageWith(day(1), nil, nil, 1)
	l.tag(d, "app:1")
	l.s.Close()
	idx := filepath.Join(l.dir, "index.json")
	styled := fmt.Sprintf("{\n  \"schemaVersion\": 2,\n  \"manifests\": [\n    {\"mediaType\": %q, \"digest\": %q, \"size\": %d, \"annotations\": {\"org.opencontainers.image.ref.name\": \"app:1\"}}\n  ]\n}\n",
		d.MediaType, d.Digest, d.Size)
	if err := os.WriteFile(idx, []byte(styled), 0o644); err != nil {
		t.Fatal(err)
	}
	o := &store.Options{}
	commits := atomic.Int64{}
	store.SetTestJournalHook(o, func() { commits.Add(1) })
	s, err := store.Open(l.ctx, l.dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	commits.Store(0)
	res, err := s.Prune(l.ctx, store.Policy{KeepLast: 1, Refs: []string{"nothing:*"}})
	if err != nil || len(res.Removed) != 0 || res.Txn != 0 {
		t.Fatalf("prune matching nothing: %+v, %v", res, err)
	}
	if err := s.Tag(l.ctx, d, "app:1"); err != nil {
		t.Fatal(err)
	}
	if c := commits.Load(); c != 0 {
		t.Errorf("%d journal commits for changes that change nothing", c)
	}
	if b, _ := os.ReadFile(idx); string(b) != styled {
		t.Errorf("index.json rewritten:\n%s", b)
	}
}

// byDigest maps the digest of each entry a prune removed to its reason.
func byDigest(r *store.PruneResult) map[digest.Digest]string {
	out := map[digest.Digest]string{}
	for _, im := range r.Removed {
		out[digest.Digest(im.Digest)] = im.Reason
	}
	return out
}

// untagged tags d with a throw-away name and removes the name: d stays as
// an untagged entry.
func (l *lib) untagged(d v1.Descriptor) {
	l.t.Helper()
	name := "tmp-" + d.Digest.Encoded()[:12]
	l.tag(d, name)
	if err := l.s.Untag(l.ctx, name); err != nil {
		l.t.Fatal(err)
	}
}

// TestPruneUntagged: Policy.Untagged removes every untagged root, as
// podman image prune does: not an untagged entry that a tagged index
// references (a platform manifest also listed in index.json), not an
// untagged referrer whose subject stays; an untagged index goes with the
// untagged entries of its own platforms, and a referrer with its subject.
// Filters still choose the candidates; a lease still keeps its blobs.
func TestPruneUntagged(t *testing.T) {
	l := newLib(t)
	base := l.b.Random(2000)
	t1 := l.imageWith(day(1), nil, []v1.Descriptor{base}, 1)
	l.tag(t1, "app:1")
	l.tag(l.imageWith(day(2), nil, []v1.Descriptor{base}, 1), "app:2")
	u1 := l.imageWith(day(1), nil, []v1.Descriptor{base}, 1)
	u2 := l.imageWith(day(9), map[string]string{"tier": "tmp"}, nil, 2)
	l.untagged(u1)
	l.untagged(u2)
	p1, p2 := l.imageWith(day(1), nil, []v1.Descriptor{base}, 1), l.imageWith(day(1), nil, nil, 1)
	l.tag(l.b.Index(p1, p2), "multi:1")
	l.untagged(p1) // a platform of multi:1, also listed untagged
	uc := l.imageWith(day(1), nil, nil, 1)
	ui := l.b.Index(uc)
	l.untagged(uc)
	l.untagged(ui) // an untagged index over an untagged entry
	sigT := l.b.Artifact("sig", &t1, "sig")
	l.untagged(sigT) // an untagged referrer of a tagged image
	sigU := l.b.Artifact("sig", &u1, "sig")
	l.untagged(sigU) // an untagged referrer of an untagged image
	m := l.manifestOf(u2)
	leased := m.Layers[0]
	lease, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.Add(l.ctx, leased); err != nil {
		t.Fatal(err)
	}

	// Filters: a ref glob never matches an untagged entry; labels do.
	wantRemoved(t, l.prune(store.Policy{Untagged: true, Refs: []string{"*"}, DryRun: true}))
	if got := byDigest(l.prune(store.Policy{Untagged: true, Labels: []string{"tier=tmp"}, DryRun: true})); len(got) != 1 || got[u2.Digest] != store.ReasonUntagged {
		t.Errorf("untagged with a label filter: %v", got)
	}

	want := map[digest.Digest]string{
		u1.Digest: store.ReasonUntagged, u2.Digest: store.ReasonUntagged,
		ui.Digest: store.ReasonUntagged, uc.Digest: store.ReasonUntagged,
		sigU.Digest: store.ReasonReferrer,
	}
	dry := l.prune(store.Policy{Untagged: true, DryRun: true})
	res := l.prune(store.Policy{Untagged: true})
	for what, r := range map[string]*store.PruneResult{"dry run": dry, "prune": res} {
		if got := byDigest(r); !maps.Equal(got, want) {
			t.Errorf("%s removed %v, want %v", what, got, want)
		}
	}
	if !sameDigests(digestsOf(res.Freed), dry.Freed) || res.Txn == 0 {
		t.Errorf("dry run freed %v, the prune %v", dry.Freed, res.Freed)
	}
	imgs, err := l.s.List(l.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, im := range imgs {
		if im.Name == "" {
			left = append(left, im.Descriptor.Digest.String())
		}
	}
	if wantLeft := []string{p1.Digest.String(), sigT.Digest.String()}; !slices.Equal(left, wantLeft) {
		t.Errorf("untagged entries left %v, want p1 and t1's signature %v", left, wantLeft)
	}
	l.wantBlobs(true, leased.Digest, base.Digest, p1.Digest, sigT.Digest)
	l.wantBlobs(false, u1.Digest, u2.Digest, ui.Digest, uc.Digest, sigU.Digest)
	l.clean()
	// Nothing untagged is left to remove.
	if res := l.prune(store.Policy{Untagged: true}); len(res.Removed) != 0 || res.Txn != 0 {
		t.Errorf("second prune: %+v", res)
	}
	if err := lease.Release(l.ctx); err != nil {
		t.Fatal(err)
	}
}

// TestPruneUntaggedDuplicateAndPin: an untagged entry of a manifest that
// is also tagged is no untagged root; a pin stops the untagged rule too.
func TestPruneUntaggedDuplicateAndPin(t *testing.T) {
	blobs := map[digest.Digest][]byte{}
	img := testutil.RawImage(blobs, []byte(`{"n":1}`), []byte("layer 1"))
	dangling := testutil.RawImage(blobs, []byte(`{"n":2}`), []byte("layer 2"))
	dir := testutil.WriteRawLayout(t, t.TempDir(), blobs, []v1.Descriptor{testutil.Named(img, "app:1"), img, dangling})
	l := libOpen(t, dir, 1)
	res := l.prune(store.Policy{Untagged: true})
	if got := byDigest(res); len(got) != 1 || got[dangling.Digest] != store.ReasonUntagged {
		t.Errorf("removed %v, want only the dangling image", got)
	}
	if got := l.index(); len(got) != 2 {
		t.Errorf("index.json %v, want app:1 and its untagged duplicate", got)
	}
	l.clean()

	// A manifest that cannot be followed pins the layout: nothing goes.
	blobs = map[digest.Digest][]byte{}
	dangling = testutil.RawImage(blobs, []byte(`{"n":3}`), []byte("layer 3"))
	broken := []byte(`{"schemaVersion":2,"layers":{"oops":1}}`)
	bd := testutil.Blob(broken, v1.MediaTypeImageManifest)
	blobs[bd.Digest] = broken
	dir = testutil.WriteRawLayout(t, t.TempDir(), blobs, []v1.Descriptor{testutil.Named(bd, "broken:1"), dangling})
	l = libOpen(t, dir, 1)
	res = l.prune(store.Policy{Untagged: true})
	if len(res.Removed) != 0 || res.Pinned == "" || res.Txn != 0 {
		t.Errorf("pinned prune: %+v", res)
	}
	if got := l.index(); len(got) != 2 {
		t.Errorf("index.json %v after a pinned prune", got)
	}
}

// TestPruneUntaggedFirst: the untagged roots go before any tagged image
// under a size budget, and keep-last protects none of them, whatever
// their age or last use.
func TestPruneUntaggedFirst(t *testing.T) {
	clock := newClock()
	l := libOpenClock(t, filepath.Join(t.TempDir(), "layout"), clock)
	old := l.imageWith(day(1), nil, nil, 2)
	l.tag(old, "app:1")
	clock.Advance(time.Hour)
	fresh := l.imageWith(day(9), nil, nil, 2) // newer, and seen later
	l.untagged(fresh)
	clock.Advance(time.Hour)
	if _, err := l.s.Resolve(l.ctx, fresh.Digest.String()); err != nil { // and used last
		t.Fatal(err)
	}
	total := l.sizeOfImage(old) + l.sizeOfImage(fresh)

	res := l.prune(store.Policy{MaxSize: total - 1, DryRun: true})
	if got := byDigest(res); len(got) != 1 || got[fresh.Digest] != store.ReasonMaxSize {
		t.Errorf("max-size evicted %v, want the untagged image first", got)
	}
	res = l.prune(store.Policy{MaxSize: 1, KeepLast: 1, DryRun: true})
	if got := byDigest(res); len(got) != 1 || got[fresh.Digest] != store.ReasonMaxSize || !res.OverBudget {
		t.Errorf("max-size with keep-last 1 evicted %v (over budget %v), want the untagged image, app:1 kept", got, res.OverBudget)
	}
	res = l.prune(store.Policy{OlderThan: 30 * 24 * time.Hour, KeepLast: 1, DryRun: true})
	if got := byDigest(res); len(got) != 1 || got[fresh.Digest] != store.ReasonOlderThan {
		t.Errorf("older-than with keep-last 1 removed %v, want the untagged image, app:1 kept", got)
	}
	res = l.prune(store.Policy{KeepLast: 1})
	if got := byDigest(res); len(got) != 1 || got[fresh.Digest] != store.ReasonKeepLast {
		t.Errorf("keep-last 1 removed %v, want the untagged image", got)
	}
	l.clean()
}
