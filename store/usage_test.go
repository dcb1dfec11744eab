package store_test

import (
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

func TestRepository(t *testing.T) {
	for name, want := range map[string]string{
		"example.com/app:1.0":          "example.com/app",
		"app:latest":                   "app",
		"latest":                       "",
		"v1.2":                         "",
		"localhost:5000/app":           "",
		"localhost:5000/app:1":         "localhost:5000/app",
		"":                             store.UntaggedRepository,
		"a:b:c":                        "a:b",
		"registry.io/ns/app@sha256:ab": "registry.io/ns/app",
		"app:1@sha256:ab":              "app",
		"@sha256:ab":                   "@sha256",
	} {
		if got := store.Repository(name); got != want {
			t.Errorf("Repository(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestSplitRef: the repository is Repository's; the tag is what follows
// it, or the whole name for a bare tag; an untagged entry has neither.
func TestSplitRef(t *testing.T) {
	for name, want := range map[string][2]string{
		"example.com/app:1.0":          {"example.com/app", "1.0"},
		"app:latest":                   {"app", "latest"},
		"latest":                       {"", "latest"},
		"v1.2":                         {"", "v1.2"},
		"localhost:5000/app":           {"", ""},
		"localhost:5000/app:1":         {"localhost:5000/app", "1"},
		"":                             {"", ""},
		"a:b:c":                        {"a:b", "c"},
		"registry.io/ns/app@sha256:ab": {"registry.io/ns/app", ""},
		"app:1@sha256:ab":              {"app", "1"},
		"ns/app":                       {"", ""},
	} {
		repo, tag := store.SplitRef(name)
		if repo != want[0] || tag != want[1] {
			t.Errorf("SplitRef(%q) = %q, %q; want %q, %q", name, repo, tag, want[0], want[1])
		}
		if name != "" && store.Repository(name) != repo {
			t.Errorf("SplitRef(%q): repository %q, Repository says %q", name, repo, store.Repository(name))
		}
	}
}

func sizesOf(t *testing.T, dir string, ds []digest.Digest) map[digest.Digest]int64 {
	t.Helper()
	out := map[digest.Digest]int64{}
	for _, d := range ds {
		fi, err := os.Stat(testutil.BlobFile(dir, d))
		if err != nil {
			t.Fatal(err)
		}
		out[d] = fi.Size()
	}
	return out
}

// TestUsage compares Usage with a count made here from the blob files:
// images shared by several tags and by two repositories, an index whose
// platforms share a layer, untagged entries, plain tags, and orphans that
// are reclaimable, leased or too young.
func TestUsage(t *testing.T) {
	l := newLib(t)
	base := l.b.Random(4000)
	app1 := l.image([]v1.Descriptor{base}, 2)
	app2 := l.image([]v1.Descriptor{base}, 1)
	l.tag(app1, "reg.io/app:1", "reg.io/app:stable")
	l.tag(app2, "reg.io/app:2", "other:2") // one image, two repositories
	amd, arm := l.image([]v1.Descriptor{base}, 1), l.image([]v1.Descriptor{base}, 1)
	multi := l.b.Index(amd, arm)
	l.tag(multi, "multi:1")
	plain := l.image(nil, 1)
	l.tag(plain, "latest")
	dangling := l.image(nil, 1)
	l.tag(dangling, "tmp")
	if err := l.s.Untag(l.ctx, "tmp"); err != nil {
		t.Fatal(err)
	}
	orphan := l.b.Random(300)
	young := l.b.Random(200)
	lease, err := l.s.Lease(l.ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leased := l.putUnder(lease.Context(l.ctx), []byte("leased blob, 25 bytes....")) // 25 bytes
	l.age(2*time.Hour, orphan.Digest, leased.Digest)

	// The expected figures, from the files.
	type img struct {
		repo string
		d    v1.Descriptor
	}
	imgs := []img{{"reg.io/app", app1}, {"reg.io/app", app2}, {"other", app2}, {"multi", multi}, {"", plain}, {store.UntaggedRepository, dangling}}
	graphs := map[digest.Digest]map[digest.Digest]int64{}
	repoBlobs := map[string]map[digest.Digest]int64{}
	for _, im := range imgs {
		g := sizesOf(t, l.dir, l.graph(im.d))
		graphs[im.d.Digest] = g
		if repoBlobs[im.repo] == nil {
			repoBlobs[im.repo] = map[digest.Digest]int64{}
		}
		for d, n := range g {
			repoBlobs[im.repo][d] = n
		}
	}
	var want store.Usage
	want.Images = 7 // index.json entries, as fsck counts them
	want.Manifests = len(graphs)
	users := map[digest.Digest]int{}
	sizes := map[digest.Digest]int64{}
	for _, g := range graphs {
		for d, n := range g {
			users[d]++
			sizes[d] = n
		}
	}
	for d, n := range sizes {
		want.ReferencedBytes += n
		if users[d] > 1 {
			want.SharedBytes += n
		} else {
			want.UniqueBytes += n
		}
	}
	want.LeasedBytes = 25
	want.YoungBytes = young.Size
	want.ReclaimableBytes = orphan.Size
	want.OrphanBytes = want.LeasedBytes + want.YoungBytes + want.ReclaimableBytes
	want.TotalBytes = want.ReferencedBytes + want.OrphanBytes
	want.Blobs = len(sizes) + 3

	got, err := l.s.Usage(l.ctx, store.UsageOptions{Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	reposGot := got.Repositories
	got.Repositories = nil
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("usage\n got %+v\nwant %+v", *got, want)
	}
	wantImages := map[string]int{"reg.io/app": 3, "other": 1, "multi": 1, "": 1, store.UntaggedRepository: 1}
	if len(reposGot) != len(repoBlobs) {
		t.Fatalf("repositories %+v", reposGot)
	}
	for i, r := range reposGot {
		if i > 0 && reposGot[i-1].Name >= r.Name {
			t.Errorf("repositories not sorted: %+v", reposGot)
		}
		var w store.RepositoryUsage
		w.Name, w.Images, w.Untagged = r.Name, wantImages[r.Name], r.Name == store.UntaggedRepository
		for _, im := range imgs {
			if im.repo == r.Name {
				w.Manifests++
			}
		}
		for d, n := range repoBlobs[r.Name] {
			w.TotalBytes += n
			shared := false
			for other, ob := range repoBlobs {
				if _, ok := ob[d]; ok && other != r.Name {
					shared = true
				}
			}
			if shared {
				w.SharedBytes += n
			} else {
				w.UniqueBytes += n
			}
		}
		if r != w {
			t.Errorf("repository %q\n got %+v\nwant %+v", r.Name, r, w)
		}
	}

	// Usage counts images as fsck does: the entries of index.json.
	if rep, err := l.s.Check(l.ctx, nil); err != nil || rep.Images != got.Images {
		t.Errorf("fsck counts %d images, usage %d (%v)", rep.Images, got.Images, err)
	}

	// What Usage calls reclaimable is what GC removes.
	res := l.gc(store.GCOptions{Grace: time.Hour})
	if res.BytesFreed != want.ReclaimableBytes {
		t.Errorf("gc freed %d, usage said %d reclaimable", res.BytesFreed, want.ReclaimableBytes)
	}
	// And a repository's unique bytes are what deleting it frees.
	del := l.del("reg.io/app:1", "reg.io/app:stable", "reg.io/app:2")
	for _, r := range reposGot {
		if r.Name == "reg.io/app" && del.BytesFreed != r.UniqueBytes {
			t.Errorf("deleting reg.io/app freed %d, usage said %d unique", del.BytesFreed, r.UniqueBytes)
		}
	}

	// A read-only handle measures too; an empty layout is all zeros.
	ro, err := store.Open(l.ctx, l.dir, &store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if u, err := ro.Usage(l.ctx, store.UsageOptions{}); err != nil || u.Images != 4 || u.Manifests != 4 {
		t.Errorf("read-only usage: %+v, %v", u, err)
	}
	e := newLib(t)
	if u, err := e.s.Usage(e.ctx, store.UsageOptions{}); err != nil || u.TotalBytes != 0 || u.Blobs != 0 || len(u.Repositories) != 0 || u.Repositories == nil {
		t.Errorf("empty layout usage: %+v, %v", u, err)
	}
}
