package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/registry"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// The tests of pull, push and copy run against a real registry (Debian's
// docker-registry, started by internal/testing/registry on 127.0.0.1) and
// use skopeo to put images in and read them back: nothing leaves
// 127.0.0.1.

// image is an image built in a layout: its manifest and every blob.
type image struct {
	desc  v1.Descriptor
	blobs []v1.Descriptor // config and layers
}

// imageBuilder writes images whose layers are gzipped tars (what skopeo
// copies to a registry as they are) into a layout through the store.
type imageBuilder struct {
	t   *testing.T
	s   *store.Store
	bld *testutil.Builder
}

func newImageBuilder(t *testing.T, dir string, seed uint64) *imageBuilder {
	t.Helper()
	s := testutil.Open(t, dir)
	t.Cleanup(func() { s.Close() })
	return &imageBuilder{t: t, s: s, bld: testutil.NewBuilder(t, s, seed)}
}

// layer stores a gzipped tar of one random file of n bytes.
func (b *imageBuilder) layer(n int) (v1.Descriptor, digest.Digest) {
	var tarball, gz bytes.Buffer
	tw := tar.NewWriter(&tarball)
	file := b.bld.Bytes(n)
	if err := tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: int64(n), Typeflag: tar.TypeReg}); err != nil {
		b.t.Fatal(err)
	}
	tw.Write(file)
	tw.Close()
	zw := gzip.NewWriter(&gz)
	zw.Write(tarball.Bytes())
	zw.Close()
	return b.bld.Put(gz.Bytes(), v1.MediaTypeImageLayerGzip), digest.FromBytes(tarball.Bytes())
}

// manifest stores an image of nLayers layers of size bytes each, for
// platform p (nil: linux/amd64), untagged.
func (b *imageBuilder) manifest(nLayers, size int, p *v1.Platform) image {
	b.t.Helper()
	if p == nil {
		p = &v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	var im image
	var layers []v1.Descriptor
	var diffIDs []digest.Digest
	for range nLayers {
		l, diff := b.layer(size)
		layers = append(layers, l)
		diffIDs = append(diffIDs, diff)
	}
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := b.bld.Put(mustJSON(b.t, v1.Image{Created: &created, Platform: *p,
		RootFS: v1.RootFS{Type: "layers", DiffIDs: diffIDs}}), v1.MediaTypeImageConfig)
	im.blobs = append([]v1.Descriptor{cfg}, layers...)
	im.desc = b.bld.Put(mustJSON(b.t, v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers}), v1.MediaTypeImageManifest)
	return im
}

// index stores an index over the images, each with its platform.
func (b *imageBuilder) index(ims ...image) v1.Descriptor {
	b.t.Helper()
	var ms []v1.Descriptor
	for _, im := range ims {
		ms = append(ms, im.desc)
	}
	return b.bld.Put(mustJSON(b.t, v1.Index{Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageIndex, Manifests: ms}), v1.MediaTypeImageIndex)
}

func (b *imageBuilder) tag(d v1.Descriptor, names ...string) { b.bld.Tag(d, names...) }

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// skopeo runs skopeo --insecure-policy and fails the test unless it
// succeeds; it returns its stdout.
func skopeo(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatalf("skopeo is not installed (%v): run make tools (installs it from Debian, as root)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "skopeo", append([]string{"--insecure-policy"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// skopeoDigest returns the digest of the raw manifest skopeo reads at ref.
func skopeoDigest(t *testing.T, args ...string) digest.Digest {
	t.Helper()
	return digest.FromString(skopeo(t, append([]string{"inspect", "--raw"}, args...)...))
}

// newLayout makes an empty layout with ocistore init.
func newLayout(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	must(t, 0, "-l", dir, "init")
	return dir
}

// fsckClean fails the test unless fsck finds nothing wrong in dir.
func fsckClean(t *testing.T, dir string) {
	t.Helper()
	must(t, 0, "-l", dir, "fsck")
}

// entries returns index.json's entries: name (or "" untagged) -> digest.
func entries(t *testing.T, dir string) map[string][]digest.Digest {
	t.Helper()
	var idx v1.Index
	if err := json.Unmarshal(readFile(t, filepath.Join(dir, "index.json")), &idx); err != nil {
		t.Fatal(err)
	}
	out := map[string][]digest.Digest{}
	for _, m := range idx.Manifests {
		n := m.Annotations[v1.AnnotationRefName]
		out[n] = append(out[n], m.Digest)
	}
	return out
}

// cliIn runs the binary with stdin and extra environment.
func cliIn(t *testing.T, stdin string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = childEnv(env)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run ocistore %v: %v", args, err)
	}
	return r
}

// transferJSONOf decodes the JSON of pull, push or copy, checking its
// fields against the help's.
func transferJSONOf(t *testing.T, r result) transferOutput {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("want exit 0:\n%s", r)
	}
	matchShape(t, strings.Join(r.args, " "), helpShape(t, pullCmd.help), json.RawMessage(r.stdout))
	return decodeJSON[transferOutput](t, r)
}

// TestPullSkopeoRoundTrip: an image skopeo pushed to the registry is
// pulled into a layout (tagged as the reference, or LOCAL-TAG, or kept
// untagged when pulled by digest), skopeo reads it from the layout, fsck is
// clean, and a second pull fetches nothing.
func TestPullSkopeoRoundTrip(t *testing.T) {
	t.Parallel()
	reg := registry.Start(t, registry.Options{})
	srcDir := filepath.Join(t.TempDir(), "src")
	b := newImageBuilder(t, srcDir, 1)
	im := b.manifest(3, 3000, nil)
	b.tag(im.desc, "v1")
	ref := reg.Host + "/app:v1"
	skopeo(t, "copy", "-q", "--preserve-digests", "--dest-tls-verify=false", "oci:"+srcDir+":v1", "docker://"+ref)

	dir := newLayout(t)
	out := transferJSONOf(t, must(t, 0, "-l", dir, "pull", "--plain-http", ref, "--format", "json"))
	want := transferOutput{
		Source: ref, Destination: "oci:" + dir + ":" + ref,
		Digest: im.desc.Digest, MediaType: v1.MediaTypeImageManifest, Size: im.desc.Size,
		Blobs: blobCounts{Copied: 5}, Bytes: total(graphOf(t, srcDir, im.desc)), Referrers: []referrerJSON{},
	}
	if !equalJSON(t, out, want) {
		t.Errorf("pull JSON %+v, want %+v", out, want)
	}
	if got := skopeoDigest(t, "oci:"+dir+":"+ref); got != im.desc.Digest {
		t.Errorf("skopeo reads %s from the layout, want %s", got, im.desc.Digest)
	}
	skopeo(t, "inspect", "oci:"+dir+":"+ref) // the config too
	fsckClean(t, dir)

	// Again, under another tag: nothing is fetched.
	out = transferJSONOf(t, must(t, 0, "-l", dir, "pull", "--plain-http", "--json", ref, "mine"))
	if out.Blobs != (blobCounts{Copied: 0, Skipped: 5}) || out.Bytes != 0 || out.Destination != "oci:"+dir+":mine" {
		t.Errorf("second pull: %+v, want 5 blobs skipped, none copied", out)
	}
	// By digest, without a tag: an untagged entry (here the manifest is
	// tagged already: nothing changes).
	byDigest := reg.Host + "/app@" + im.desc.Digest.String()
	other := newLayout(t)
	r := must(t, 0, "-l", other, "pull", "--plain-http", byDigest)
	wantContains(t, "stdout", r.stdout, "pulled "+byDigest+" to oci:"+other+":"+im.desc.Digest.String(), "5 blobs copied")
	if got := entries(t, other); len(got) != 1 || !slices.Equal(got[""], []digest.Digest{im.desc.Digest}) {
		t.Errorf("index.json after a pull by digest: %v, want one untagged entry", got)
	}
	fsckClean(t, other)
	got := entries(t, dir)
	if len(got) != 2 || !slices.Equal(got[ref], []digest.Digest{im.desc.Digest}) || !slices.Equal(got["mine"], []digest.Digest{im.desc.Digest}) {
		t.Errorf("index.json: %v", got)
	}

	// A tag the registry does not have: exit 2, nothing changes.
	missing := reg.Host + "/app:v9"
	errorOutcome(t, cli(t, "-l", other, "pull", "--plain-http", missing), "pull", false, exitUsage, kindNotFound, missing+": not found")
	errorOutcome(t, cli(t, "-l", other, "pull", "--plain-http", missing, "--json"), "pull", true, exitUsage, kindNotFound, missing+": not found")
	if got := entries(t, other); len(got) != 1 {
		t.Errorf("a failed pull changed index.json: %v", got)
	}
}

// equalJSON compares two values by their JSON.
func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	return bytes.Equal(mustJSON(t, a), mustJSON(t, b))
}

var _ = fmt.Sprint

// regImage is an image put in a registry by the test: its root and the
// size of every blob of its graph.
type regImage struct {
	root  v1.Descriptor
	graph map[digest.Digest]int64
	// manifests are the platform manifests of an index, layers the layers
	// of all of them.
	manifests, layers []v1.Descriptor
}

// putImage puts into repo of reg an image of nPlat platform manifests
// (an index over them, or the manifest alone when nPlat is 1) of nLayers
// random layers of size bytes each, and tags it tag.
func putImage(t *testing.T, reg *registry.Registry, repo, tag string, seed uint64, nPlat, nLayers, size int) regImage {
	t.Helper()
	bld := testutil.NewBuilder(t, nil, seed)
	im := regImage{graph: map[digest.Digest]int64{}}
	put := func(b []byte, mt string) v1.Descriptor {
		d := reg.PutBlob(t, repo, b)
		d.MediaType = mt
		im.graph[d.Digest] = d.Size
		return d
	}
	arches := []string{"amd64", "arm64", "riscv64", "s390x", "ppc64le", "386"}
	for p := range nPlat {
		plat := v1.Platform{OS: "linux", Architecture: arches[p%len(arches)]}
		var layers []v1.Descriptor
		for range nLayers {
			layers = append(layers, put(bld.Bytes(size), v1.MediaTypeImageLayer))
		}
		im.layers = append(im.layers, layers...)
		cfg := put(mustJSON(t, v1.Image{Platform: plat, RootFS: v1.RootFS{Type: "layers"}}), v1.MediaTypeImageConfig)
		raw := mustJSON(t, v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers})
		ref := digest.FromBytes(raw).String()
		if nPlat == 1 {
			ref = tag
		}
		m := reg.PutManifest(t, repo, ref, v1.MediaTypeImageManifest, raw)
		im.graph[m.Digest] = m.Size
		m.Platform = &plat
		im.manifests = append(im.manifests, m)
	}
	if nPlat == 1 {
		im.root = im.manifests[0]
		im.root.Platform = nil
		return im
	}
	raw := mustJSON(t, v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: im.manifests})
	im.root = reg.PutManifest(t, repo, tag, v1.MediaTypeImageIndex, raw)
	im.graph[im.root.Digest] = im.root.Size
	return im
}

// leaseTTL is the life of the lease of the pulls that the kill test
// abandons: short, so that GC may free what they left within the test.
const killLeaseTTL = 3 * time.Second

// TestPullKilled: pulls of a multi-platform image of many small blobs,
// killed with SIGKILL (or, one in five, interrupted with SIGINT) at moments
// spread over a whole pull, leave fsck clean and no tag, or the whole image
// tagged when the pull had finished. Run again, two in five complete,
// reusing what was written; the others are abandoned, and once their
// lease has expired (or, after SIGINT, at once: the lease is released) GC
// frees every blob they left.
func TestPullKilled(t *testing.T) {
	t.Parallel()
	const trials = 50
	reg := registry.Start(t, registry.Options{})
	im := putImage(t, reg, "big", "v1", 3, 2, 16, 2048)
	ref := reg.Host + "/big:v1"
	env := []string{EnvLeaseTTL + "=" + killLeaseTTL.String()}
	pullArgs := func(dir string) []string {
		return []string{"-l", dir, "pull", "--plain-http", "--concurrency", "4", ref}
	}
	emptyLayout := func() string {
		dir := filepath.Join(t.TempDir(), "layout")
		s, err := store.Open(context.Background(), dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	// How long a whole pull takes here, to spread the kills over it.
	start := time.Now()
	cliWith(t, runOpts{env: env}, pullArgs(emptyLayout())...)
	whole := time.Since(start)
	t.Logf("a whole pull of %d blobs: %s", len(im.graph), whole)

	rng := testutil.NewBuilder(t, nil, 99).Rng
	type trial struct {
		dir       string
		abandoned bool
		released  bool // interrupted by SIGINT: the lease is released
		finished  bool // the pull ended before the signal
	}
	var trials_ []trial
	var lastKill time.Time
	partial := 0 // trials that left some of the blobs, not all
	for i := range trials {
		tr := trial{dir: emptyLayout(), abandoned: i%5 != 1 && i%5 != 3}
		sig := syscall.SIGKILL
		if i%5 == 4 {
			sig = syscall.SIGINT
		}
		delay := time.Duration((float64(i) + rng.Float64()) / trials * 1.1 * float64(whole))
		cmd := exec.Command(bin, pullArgs(tr.dir)...)
		cmd.Env = childEnv(env)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = cmd.Process.Signal(sig)
		err := cmd.Wait()
		lastKill = time.Now()
		code := cmd.ProcessState.ExitCode()
		switch {
		case err == nil:
			tr.finished = true
		case sig == syscall.SIGINT && code == 130:
			tr.released = true
		case sig == syscall.SIGINT && code == -1:
			// Killed by SIGINT before the handler was in place.
		case code == -1:
			// SIGKILL.
		default:
			t.Fatalf("trial %d: pull exited %d after %s (%s): %v\n%s", i, code, sig, delay, err, stderr.String())
		}
		fsckClean(t, tr.dir)
		if n := len(blobFiles(t, tr.dir)); n > 0 && n < len(im.graph) {
			partial++
		}
		got := entries(t, tr.dir)
		switch {
		case len(got) == 0:
		case len(got) == 1 && slices.Equal(got[ref], []digest.Digest{im.root.Digest}):
			tr.finished = true // tagged: the whole image is there (fsck)
		default:
			t.Fatalf("trial %d: index.json after %s at %s: %v; want nothing, or %s tagged", i, sig, delay, got, ref)
		}
		if !tr.abandoned {
			r := cliWith(t, runOpts{env: env}, append(pullArgs(tr.dir), "--json")...)
			out := transferJSONOf(t, r)
			if out.Digest != im.root.Digest || out.Blobs.Copied+out.Blobs.Skipped != len(im.graph) {
				t.Errorf("trial %d: the pull run again: %+v, want %d blobs copied or skipped", i, out, len(im.graph))
			}
			if got := entries(t, tr.dir); len(got) != 1 || !slices.Equal(got[ref], []digest.Digest{im.root.Digest}) {
				t.Fatalf("trial %d: after the pull ran again, index.json: %v", i, got)
			}
			fsckClean(t, tr.dir)
		}
		trials_ = append(trials_, tr)
	}
	finished := 0
	for _, tr := range trials_ {
		if tr.finished {
			finished++
		}
	}
	t.Logf("%d trials: %d left part of the image's blobs, %d had finished", trials, partial, finished)
	// An interrupted pull released its lease: GC frees what it wrote now.
	// A killed one's lease expires.
	for pass := range 2 {
		if pass == 1 {
			time.Sleep(time.Until(lastKill.Add(killLeaseTTL + 100*time.Millisecond)))
		}
		for i, tr := range trials_ {
			if pass == 0 && !tr.released {
				continue
			}
			must(t, 0, "-l", tr.dir, "gc", "--grace", "0s")
			want := map[digest.Digest]int64{}
			if len(entries(t, tr.dir)) > 0 {
				want = im.graph
			}
			var got []string
			for _, p := range blobFiles(t, tr.dir) {
				d := digest.NewDigestFromEncoded(digest.Algorithm(filepath.Base(filepath.Dir(p))), filepath.Base(p))
				if _, ok := want[d]; !ok {
					got = append(got, d.String())
				}
			}
			if len(got) > 0 || len(blobFiles(t, tr.dir)) != len(want) {
				t.Errorf("trial %d (abandoned %v, finished %v, SIGINT %v): after GC, %d blob files, want %d; not the image's: %v",
					i, tr.abandoned, tr.finished, tr.released, len(blobFiles(t, tr.dir)), len(want), got)
			}
			fsckClean(t, tr.dir)
		}
	}
}
