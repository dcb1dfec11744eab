package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	"github.com/ocistore/ocistore/recovery"
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
	return cliWith(t, runOpts{stdin: stdin, env: env}, args...)
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
	// How long a whole pull takes here (the shortest of three), to spread
	// the kills over it.
	var whole time.Duration
	for i := range 3 {
		start := time.Now()
		must(t, 0, pullArgs(emptyLayout())...)
		if d := time.Since(start); i == 0 || d < whole {
			whole = d
		}
	}
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
	inTag := 0   // trials killed in the tag's transaction
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
		// fsck finds nothing wrong, or, for a pull killed in the middle of
		// its tag's transaction, that transaction alone, pending: recovery
		// (that any later command runs) finishes it.
		if r := cli(t, "-l", tr.dir, "fsck", "--json"); r.code != 0 {
			rep := decodeJSON[recovery.Report](t, r)
			for _, p := range rep.Problems {
				if !p.IsNotice() && (p.Kind != recovery.KindPending || !strings.Contains(p.Detail, "tag "+ref)) {
					t.Fatalf("trial %d: fsck after %s at %s:\n%s", i, sig, delay, r)
				}
			}
			must(t, 0, "-l", tr.dir, "recover")
			inTag++
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
	finished, released := 0, 0
	for _, tr := range trials_ {
		if tr.finished {
			finished++
		}
		if tr.released {
			released++
		}
	}
	t.Logf("%d trials: %d left part of the image's blobs, %d had finished, %d were killed in the tag's transaction, %d exited 130 on SIGINT",
		trials, partial, finished, inTag, released)
	if partial == 0 || released == 0 {
		t.Errorf("no kill fell in the middle of a pull, or no SIGINT was handled: the trials test nothing of it")
	}
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

// TestPullFaults: a registry that serves a blob whose bytes do not match
// its digest, that cuts a blob's body short, or that stops answering in
// the middle of a pull: each pull fails (exit 1) with one line naming the
// blob's digest, leaves index.json as it was and fsck clean, and GC frees
// what it wrote at once (its lease is released).
func TestPullFaults(t *testing.T) {
	t.Parallel()
	reg := registry.Start(t, registry.Options{})
	im := putImage(t, reg, "app", "v1", 5, 1, 4, 8192)
	bad := im.layers[2]
	for _, c := range []struct {
		name  string
		fault registry.Fault
		// want is in the message; blob is the digest it names ("": any
		// blob of the image).
		want []string
		blob digest.Digest
	}{
		{"corrupt", registry.CorruptBlob(bad.Digest), []string{"does not match"}, bad.Digest},
		{"truncated", registry.TruncateBlob(bad.Digest, 1000), []string{"cut after 1000 of 8192 bytes"}, bad.Digest},
		// HEAD and GET of the manifest, then GETs of the config and
		// layers, one at a time: the registry stops at a layer.
		{"stopped", registry.StopAfter(4), nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			host := registry.Faulty(t, reg, c.fault)
			dir := newLayout(t)
			ref := host + "/app:v1"
			r := cli(t, "-l", dir, "pull", "--plain-http", "--concurrency", "1", ref)
			if r.code != exitError || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 {
				t.Fatalf("want exit 1 and one line on stderr:\n%s", r)
			}
			wantContains(t, "stderr", r.stderr, append(c.want, "ocistore: pull: ")...)
			named := c.blob
			if named == "" {
				for d := range im.graph {
					if strings.Contains(r.stderr, "blob "+d.String()) {
						named = d
					}
				}
			}
			if named == "" || !strings.Contains(r.stderr, "blob "+named.String()) {
				t.Errorf("the error names no blob of the image (want %q):\n%s", c.blob, r)
			}
			if got := entries(t, dir); len(got) != 0 {
				t.Errorf("index.json after a failed pull: %v", got)
			}
			fsckClean(t, dir)
			must(t, 0, "-l", dir, "gc", "--grace", "0s")
			if got := blobFiles(t, dir); len(got) != 0 {
				t.Errorf("GC after a failed pull left %d blobs: %v", len(got), got)
			}
			// Straight from the registry, the pull completes.
			must(t, 0, "-l", dir, "pull", "--plain-http", reg.Host+"/app:v1")
			fsckClean(t, dir)
			t.Logf("%s", r.stderr)
		})
	}
}

// TestPullMultiArch: a multi-platform index skopeo pushed is pulled whole
// (the index, every platform) or, with --platform, as the one manifest of
// that platform, which becomes the image; a platform the index does not
// have is not found (exit 2).
func TestPullMultiArch(t *testing.T) {
	t.Parallel()
	reg := registry.Start(t, registry.Options{})
	srcDir := filepath.Join(t.TempDir(), "src")
	b := newImageBuilder(t, srcDir, 2)
	amd := b.manifest(2, 1000, &v1.Platform{OS: "linux", Architecture: "amd64"})
	arm := b.manifest(2, 1000, &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"})
	amd.desc.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	arm.desc.Platform = &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	ix := b.index(amd, arm)
	b.tag(ix, "multi")
	ref := reg.Host + "/multi:1"
	skopeo(t, "copy", "-q", "--all", "--preserve-digests", "--dest-tls-verify=false", "oci:"+srcDir+":multi", "docker://"+ref)

	whole := newLayout(t)
	out := transferJSONOf(t, must(t, 0, "-l", whole, "pull", "--plain-http", "--json", ref, "multi"))
	if out.Digest != ix.Digest || out.MediaType != v1.MediaTypeImageIndex || out.Blobs.Copied != 9 {
		t.Errorf("pull of the index: %+v, want %s with 9 blobs", out, ix.Digest)
	}
	if got := skopeoDigest(t, "oci:"+whole+":multi"); got != ix.Digest {
		t.Errorf("skopeo reads %s, want the index %s", got, ix.Digest)
	}
	for _, p := range []string{"linux/amd64", "linux/arm64/v8"} {
		skopeo(t, "--override-os", "linux", "--override-arch", strings.Split(p, "/")[1], "inspect", "oci:"+whole+":multi")
	}
	fsckClean(t, whole)

	one := newLayout(t)
	out = transferJSONOf(t, must(t, 0, "-l", one, "pull", "--plain-http", "--json", "--platform", "linux/arm64/v8", ref, "arm"))
	if out.Digest != arm.desc.Digest || out.MediaType != v1.MediaTypeImageManifest || out.Blobs.Copied != 4 {
		t.Errorf("pull of linux/arm64/v8: %+v, want the manifest %s with 4 blobs", out, arm.desc.Digest)
	}
	if got := entries(t, one); len(got) != 1 || !slices.Equal(got["arm"], []digest.Digest{arm.desc.Digest}) {
		t.Errorf("index.json: %v, want arm tagging the arm64 manifest", got)
	}
	if n := len(blobFiles(t, one)); n != 4 {
		t.Errorf("%d blobs in the layout, want the arm64 manifest's 4 (not the index, not amd64's)", n)
	}
	if got := skopeoDigest(t, "oci:"+one+":arm"); got != arm.desc.Digest {
		t.Errorf("skopeo reads %s, want %s", got, arm.desc.Digest)
	}
	fsckClean(t, one)

	// A platform the index does not have.
	msg := ref + ": no manifest for platform linux/s390x: not found"
	errorOutcome(t, cli(t, "-l", one, "pull", "--plain-http", "--platform", "linux/s390x", ref), "pull", false, exitUsage, kindNotFound, msg)
	// Malformed: a usage error.
	r := must(t, exitUsage, "-l", one, "pull", "--platform", "linux", ref)
	wantContains(t, "stderr", r.stderr, `invalid value "linux" for --platform: want os/arch or os/arch/variant`)
}

// TestPush: images of the layout, pushed to the registry (by tag, by
// digest; an index whole or one platform), read back by skopeo; a
// reference the layout does not have is not found (exit 2).
func TestPush(t *testing.T) {
	t.Parallel()
	reg := registry.Start(t, registry.Options{})
	dir := filepath.Join(t.TempDir(), "layout")
	b := newImageBuilder(t, dir, 3)
	amd := b.manifest(2, 1500, nil)
	amd.desc.Platform = &v1.Platform{OS: "linux", Architecture: "amd64"}
	arm := b.manifest(1, 1500, &v1.Platform{OS: "linux", Architecture: "arm64"})
	arm.desc.Platform = &v1.Platform{OS: "linux", Architecture: "arm64"}
	ix := b.index(amd, arm)
	b.tag(ix, "multi")
	b.tag(amd.desc, "app:1")

	ref := reg.Host + "/pushed/app:1"
	out := transferJSONOf(t, must(t, 0, "-l", dir, "push", "--plain-http", "--json", "app:1", ref))
	want := transferOutput{Source: "oci:" + dir + ":app:1", Destination: ref, Digest: amd.desc.Digest, MediaType: v1.MediaTypeImageManifest,
		Size: amd.desc.Size, Blobs: blobCounts{Copied: 4}, Bytes: total(graphOf(t, dir, amd.desc)), Referrers: []referrerJSON{}}
	if !equalJSON(t, out, want) {
		t.Errorf("push JSON %+v, want %+v", out, want)
	}
	if got := skopeoDigest(t, "--tls-verify=false", "docker://"+ref); got != amd.desc.Digest {
		t.Errorf("skopeo reads %s from the registry, want %s", got, amd.desc.Digest)
	}
	skopeo(t, "inspect", "--tls-verify=false", "docker://"+ref)

	// The index, by tag: the amd64 blobs are there already.
	multi := reg.Host + "/pushed/app:multi"
	r := must(t, 0, "-l", dir, "push", "--plain-http", "multi", multi)
	wantContains(t, "stdout", r.stdout, "pushed oci:"+dir+":multi to "+multi, "4 blobs copied", "4 blobs already there")
	if got := skopeoDigest(t, "--tls-verify=false", "docker://"+multi); got != ix.Digest {
		t.Errorf("skopeo reads %s, want the index %s", got, ix.Digest)
	}
	// One platform, by digest: no tag.
	byDigest := reg.Host + "/other@" + arm.desc.Digest.String()
	must(t, 0, "-l", dir, "push", "--plain-http", "--platform", "linux/arm64", "multi", byDigest)
	if got := skopeoDigest(t, "--tls-verify=false", "docker://"+byDigest); got != arm.desc.Digest {
		t.Errorf("skopeo reads %s, want %s", got, arm.desc.Digest)
	}
	// A digest that is not the image's.
	r = must(t, exitError, "-l", dir, "push", "--plain-http", "multi", byDigest)
	wantContains(t, "stderr", r.stderr, "the image of oci:"+dir+":multi is "+ix.Digest.String())

	errorOutcome(t, cli(t, "-l", dir, "push", "--plain-http", "nosuch:1", ref), "push", false, exitUsage, kindNotFound, "nosuch:1: not found")
	errorOutcome(t, cli(t, "-l", dir, "push", "--plain-http", "--json", "nosuch:1", ref), "push", true, exitUsage, kindNotFound, "nosuch:1: not found")
}

// TestCopy: copy between a registry and layouts, both ways, between two
// repositories, and between two layouts.
func TestCopy(t *testing.T) {
	t.Parallel()
	reg := registry.Start(t, registry.Options{})
	im := putImage(t, reg, "src", "v1", 7, 1, 3, 500)
	src := reg.Host + "/src:v1"
	a, b := newLayout(t), newLayout(t)
	// Registry to layout: the tag is DST's, else SRC's reference.
	must(t, 0, "copy", "--plain-http", src, "oci:"+a+":copied")
	must(t, 0, "copy", "--plain-http", src, "oci:"+a)
	if got := entries(t, a); len(got) != 2 || !slices.Equal(got["copied"], []digest.Digest{im.root.Digest}) || !slices.Equal(got[src], []digest.Digest{im.root.Digest}) {
		t.Errorf("index.json of the layout: %v", got)
	}
	fsckClean(t, a)
	// Layout to layout: the tag of SRC when DST names none.
	out := transferJSONOf(t, must(t, 0, "copy", "--json", "oci:"+a+":copied", "oci:"+b))
	if out.Destination != "oci:"+b+":copied" || out.Blobs.Copied != 5 {
		t.Errorf("copy between layouts: %+v", out)
	}
	fsckClean(t, b)
	// Layout to registry, registry to registry.
	must(t, 0, "copy", "--plain-http", "oci:"+b+":copied", reg.Host+"/back:v1")
	must(t, 0, "copy", "--plain-http", reg.Host+"/back:v1", reg.Host+"/third:v1")
	if got := skopeoDigest(t, "--tls-verify=false", "docker://"+reg.Host+"/third:v1"); got != im.root.Digest {
		t.Errorf("skopeo reads %s, want %s", got, im.root.Digest)
	}
	// By digest into a layout, no tag: untagged.
	c := newLayout(t)
	must(t, 0, "copy", "--plain-http", reg.Host+"/third@"+im.root.Digest.String(), "oci:"+c)
	if got := entries(t, c); len(got) != 1 || !slices.Equal(got[""], []digest.Digest{im.root.Digest}) {
		t.Errorf("index.json: %v, want one untagged entry", got)
	}
	// A layout that does not exist, one that is not a layout.
	missing := filepath.Join(t.TempDir(), "missing")
	errorOutcome(t, cli(t, "copy", "--plain-http", src, "oci:"+missing+":x"), "copy", false, exitLayoutMissing, kindLayoutMissing, missing+": layout directory does not exist")
	plain := t.TempDir()
	errorOutcome(t, cli(t, "copy", "oci:"+plain+":x", src, "--json"), "copy", true, exitNotLayout, kindNotLayout, plain+": not an OCI image layout (no oci-layout file)")
	errorOutcome(t, cli(t, "copy", "oci:"+a+":nosuch", "oci:"+b), "copy", false, exitUsage, kindNotFound, "oci:"+a+":nosuch: not found")
}

// TestRemoteUsage: usage errors of pull, push and copy, before any
// request.
func TestRemoteUsage(t *testing.T) {
	t.Parallel()
	dir := newLayout(t)
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"pull", "app"}, "app: not a registry reference (REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST)"},
		{[]string{"pull", "oci:/x:y"}, "oci:/x:y: want a registry reference"},
		{[]string{"pull", "127.0.0.1:9/app:1", "sha256:" + strings.Repeat("a", 64)}, "want a tag for the layout, not a digest"},
		{[]string{"pull", "--username", "u", "127.0.0.1:9/app:1"}, "--username needs --password-stdin"},
		{[]string{"pull", "--password-stdin", "127.0.0.1:9/app:1"}, "--password-stdin needs --username"},
		{[]string{"pull", "--concurrency", "0", "127.0.0.1:9/app:1"}, "--concurrency"},
		{[]string{"pull", "--ca-file", filepath.Join(dir, "nosuch.pem"), "127.0.0.1:9/app:1"}, "--ca-file"},
		{[]string{"push", "a"}, "want 2 argument(s)"},
		{[]string{"copy", "oci:" + dir, "oci:" + dir + ":b"}, "name the image"},
		{[]string{"copy", "oci::x", "oci:" + dir}, "no directory"},
	} {
		r := cliIn(t, "", nil, append([]string{"-l", dir}, c.args...)...)
		if r.code != exitUsage {
			t.Errorf("want exit 2:\n%s", r)
		}
		wantContains(t, "stderr", r.stderr, c.msg)
	}
	r := cliIn(t, "", []string{EnvLeaseTTL + "=soon"}, "-l", dir, "pull", "127.0.0.1:9/app:1")
	if r.code != exitUsage {
		t.Errorf("want exit 2:\n%s", r)
	}
	wantContains(t, "stderr", r.stderr, "$OCISTORE_LEASE_TTL")
	// A registry nothing listens on: exit 1, the reason.
	r = must(t, exitError, "-l", dir, "pull", "--plain-http", "127.0.0.1:9/app:1")
	wantContains(t, "stderr", r.stderr, "ocistore: pull: 127.0.0.1:9/app:1: cannot reach the registry")
	if got := entries(t, dir); len(got) != 0 {
		t.Errorf("index.json: %v", got)
	}
}

// putReferrer puts into repo a signature whose subject is subject, and
// lists it in the tag-schema index (tag sha256-<hex> of the subject), as
// oras and cosign do on a registry without the referrers API
// (distribution 2.8).
func putReferrer(t *testing.T, reg *registry.Registry, repo string, subject v1.Descriptor) v1.Descriptor {
	t.Helper()
	empty := reg.PutBlob(t, repo, []byte("{}"))
	empty.MediaType = v1.MediaTypeEmptyJSON
	sigBlob := reg.PutBlob(t, repo, []byte("a signature of "+subject.Digest.String()))
	sigBlob.MediaType = "application/vnd.example.signature.v1"
	const artifactType = "application/vnd.example.signature"
	subj := v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size}
	raw := mustJSON(t, v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		ArtifactType: artifactType, Config: empty, Layers: []v1.Descriptor{sigBlob}, Subject: &subj})
	sig := reg.PutManifest(t, repo, digest.FromBytes(raw).String(), v1.MediaTypeImageManifest, raw)
	sig.ArtifactType = artifactType
	ix := mustJSON(t, v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{sig}})
	reg.PutManifest(t, repo, "sha256-"+subject.Digest.Encoded(), v1.MediaTypeImageIndex, ix)
	return sig
}

// TestPullReferrers: distribution 2.8 has no referrers API; a signature
// listed in the tag schema (sha256-<hex>) is pulled with --referrers and
// kept as an untagged entry that the store knows as a referrer, not
// without; push --referrers writes it to another repository, in the tag
// schema too.
func TestPullReferrers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := registry.Start(t, registry.Options{})
	// The registry has no referrers API: the fallback is what is tested.
	resp, err := reg.Client().Get(reg.URL + "/v2/signed/referrers/" + digest.FromString("x").String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("GET the referrers API: %s, want 404 (distribution 2.8 has none)", resp.Status)
	}
	im := putImage(t, reg, "signed", "v1", 13, 1, 2, 600)
	sig := putReferrer(t, reg, "signed", im.root)
	ref := reg.Host + "/signed:v1"

	plain := newLayout(t)
	out := transferJSONOf(t, must(t, 0, "-l", plain, "pull", "--plain-http", "--json", ref))
	if len(out.Referrers) != 0 || out.Blobs.Copied != 4 {
		t.Errorf("pull without --referrers: %+v", out)
	}
	if got := entries(t, plain); len(got) != 1 {
		t.Errorf("index.json: %v, want only the image", got)
	}

	dir := newLayout(t)
	out = transferJSONOf(t, must(t, 0, "-l", dir, "pull", "--plain-http", "--json", "--referrers", ref))
	at := sig.ArtifactType
	wantRefs := []referrerJSON{{Digest: sig.Digest, MediaType: v1.MediaTypeImageManifest, ArtifactType: &at, Size: sig.Size}}
	if !equalJSON(t, out.Referrers, wantRefs) || out.Blobs.Copied != 7 || out.Digest != im.root.Digest {
		t.Errorf("pull --referrers: %+v, want the image and the signature (7 blobs)", out)
	}
	if got := entries(t, dir); len(got) != 2 || !slices.Equal(got[ref], []digest.Digest{im.root.Digest}) || !slices.Equal(got[""], []digest.Digest{sig.Digest}) {
		t.Errorf("index.json: %v, want the image tagged and the signature untagged", got)
	}
	fsckClean(t, dir)
	s, err := store.Open(ctx, dir, &store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	refs, err := s.Referrers(ctx, im.root.Digest, "")
	s.Close()
	if err != nil || len(refs) != 1 || refs[0].Digest != sig.Digest || refs[0].ArtifactType != sig.ArtifactType {
		t.Errorf("the store's referrers of the image: %+v, %v; want the signature", refs, err)
	}
	// A pull that fails at its very end (the tag is refused: REPO must be
	// lowercase) keeps nothing, not even the signature it copied.
	failed := newLayout(t)
	r := must(t, exitUsage, "-l", failed, "pull", "--plain-http", "--referrers", ref, "App:1")
	wantContains(t, "stderr", r.stderr, "App:1")
	if got := entries(t, failed); len(got) != 0 {
		t.Errorf("index.json after a pull whose tag was refused: %v", got)
	}
	fsckClean(t, failed)
	// Run again: the signature, in the layout but not kept, is kept now.
	out = transferJSONOf(t, must(t, 0, "-l", failed, "pull", "--plain-http", "--json", "--referrers", ref))
	if out.Blobs != (blobCounts{Copied: 0, Skipped: 7}) || !equalJSON(t, out.Referrers, wantRefs) {
		t.Errorf("the pull run again: %+v, want the 7 blobs there and the signature", out)
	}
	if got := entries(t, failed); len(got) != 2 || !slices.Equal(got[""], []digest.Digest{sig.Digest}) {
		t.Errorf("index.json after the pull ran again: %v, want the image and the signature", got)
	}

	r = must(t, 0, "-l", dir, "pull", "--plain-http", "--referrers", ref)
	wantContains(t, "stdout", r.stdout, "referrer "+sig.Digest.String()+" "+sig.ArtifactType, "0 blobs copied", "7 blobs already there")

	// Push it with its referrer to another repository: the registry gets
	// the tag-schema index.
	mirror := reg.Host + "/mirror:v1"
	out = transferJSONOf(t, must(t, 0, "-l", dir, "push", "--plain-http", "--json", "--referrers", ref, mirror))
	if !equalJSON(t, out.Referrers, wantRefs) {
		t.Errorf("push --referrers: %+v", out)
	}
	idx := skopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+reg.Host+"/mirror:sha256-"+im.root.Digest.Encoded())
	var got v1.Index
	if err := json.Unmarshal([]byte(idx), &got); err != nil || len(got.Manifests) != 1 || got.Manifests[0].Digest != sig.Digest {
		t.Errorf("the mirror's referrers index: %s (%v), want the signature", idx, err)
	}
	if d := skopeoDigest(t, "--tls-verify=false", "docker://"+reg.Host+"/mirror@"+sig.Digest.String()); d != sig.Digest {
		t.Errorf("skopeo reads %s, want the signature %s", d, sig.Digest)
	}
}

// TestRemoteTLSAuth: a registry with TLS (a CA the test made) and htpasswd
// basic auth: pull and push with --ca-file, --username and
// --password-stdin, or credentials from Docker's or podman's config file;
// a wrong password, no credentials, an untrusted certificate: one clear
// error each, exit 1, nothing changed.
func TestRemoteTLSAuth(t *testing.T) {
	t.Parallel()
	reg := registry.Start(t, registry.Options{TLS: true, Auth: true})
	im := putImage(t, reg, "secure", "v1", 17, 1, 2, 700)
	ref := reg.Host + "/secure:v1"
	// No credentials anywhere but where the test puts them.
	home := t.TempDir()
	env := []string{"HOME=" + home, "DOCKER_CONFIG=" + filepath.Join(home, "docker"), "REGISTRY_AUTH_FILE=",
		"XDG_RUNTIME_DIR=" + filepath.Join(home, "run"), "XDG_CONFIG_HOME=" + filepath.Join(home, "config")}
	dir := newLayout(t)
	pull := func(stdin string, env []string, flags ...string) result {
		t.Helper()
		return cliIn(t, stdin, env, append(append([]string{"-l", dir, "pull"}, flags...), ref)...)
	}
	failsWith := func(r result, msg ...string) {
		t.Helper()
		t.Logf("%s", r.stderr)
		if r.code != exitError || r.stdout != "" || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("want exit 1 and one line on stderr:\n%s", r)
		}
		wantContains(t, "stderr", r.stderr, append(msg, "ocistore: pull: "+ref+": ")...)
		if got := entries(t, dir); len(got) != 0 {
			t.Errorf("index.json after a failed pull: %v", got)
		}
	}
	failsWith(pull("wrong\n", env, "--ca-file", reg.CAFile, "--username", reg.Username, "--password-stdin"), "authentication failed", "401 Unauthorized")
	failsWith(pull("", env, "--ca-file", reg.CAFile), "the registry asks for credentials and none were given")
	failsWith(pull(reg.Password+"\n", env, "--username", reg.Username, "--password-stdin"), "TLS certificate is not trusted", "--ca-file")
	failsWith(pull("", env, "--plain-http", "--ca-file", reg.CAFile), "400")

	r := pull(reg.Password+"\n", env, "--ca-file", reg.CAFile, "--username", reg.Username, "--password-stdin")
	if r.code != 0 {
		t.Fatalf("pull with the CA and the credentials:\n%s", r)
	}
	if got := skopeoDigest(t, "oci:"+dir+":"+ref); got != im.root.Digest {
		t.Errorf("skopeo reads %s, want %s", got, im.root.Digest)
	}
	fsckClean(t, dir)

	// Credentials from the config files: Docker's, podman's (by
	// $REGISTRY_AUTH_FILE, and at ${XDG_RUNTIME_DIR}/containers/auth.json).
	authJSON := mustJSON(t, map[string]any{"auths": map[string]any{reg.Host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte(reg.Creds()))}}})
	for _, c := range []struct{ name, file string }{
		{"docker", filepath.Join(home, "docker", "config.json")},
		{"podman REGISTRY_AUTH_FILE", filepath.Join(home, "registry-auth.json")},
		{"podman XDG_RUNTIME_DIR", filepath.Join(home, "run", "containers", "auth.json")},
	} {
		if err := os.MkdirAll(filepath.Dir(c.file), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.file, authJSON, 0o600); err != nil {
			t.Fatal(err)
		}
		e := env
		if strings.Contains(c.name, "REGISTRY_AUTH_FILE") {
			e = append(slices.Clone(env), "REGISTRY_AUTH_FILE="+c.file)
		}
		other := newLayout(t)
		r := cliIn(t, "", e, "-l", other, "pull", "--ca-file", reg.CAFile, ref, "from-file")
		if r.code != 0 {
			t.Errorf("%s: pull with the credentials of %s:\n%s", c.name, c.file, r)
		}
		if err := os.Remove(c.file); err != nil {
			t.Fatal(err)
		}
	}

	// --insecure: no CA needed.
	other := newLayout(t)
	if r := cliIn(t, reg.Password, env, "-l", other, "pull", "--insecure", "--username", reg.Username, "--password-stdin", ref); r.code != 0 {
		t.Errorf("pull --insecure:\n%s", r)
	}
	// Push, read back by skopeo through the CA and the credentials.
	pushed := reg.Host + "/pushed:v2"
	if r := cliIn(t, reg.Password+"\n", env, "-l", dir, "push", "--ca-file", reg.CAFile, "--username", reg.Username, "--password-stdin", ref, pushed); r.code != 0 {
		t.Fatalf("push:\n%s", r)
	}
	if got := skopeoDigest(t, "--cert-dir", reg.CertDir, "--creds", reg.Creds(), "docker://"+pushed); got != im.root.Digest {
		t.Errorf("skopeo reads %s, want %s", got, im.root.Digest)
	}
	r = cliIn(t, "wrong", env, "-l", dir, "push", "--ca-file", reg.CAFile, "--username", reg.Username, "--password-stdin", ref, reg.Host+"/pushed:v3")
	if r.code != exitError {
		t.Errorf("push with a wrong password: want exit 1:\n%s", r)
	}
	wantContains(t, "stderr", r.stderr, "authentication failed")
}

// slowProxy starts a proxy in front of reg that waits delay before it
// forwards each GET of a blob, and returns its host (plain HTTP).
func slowProxy(t *testing.T, reg *registry.Registry, delay time.Duration) string {
	t.Helper()
	target, err := url.Parse(reg.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = reg.Transport()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			time.Sleep(delay)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestPullProgress: with stderr on a terminal, pull draws a progress line
// (the label, the seconds, blobs done of those seen) and clears it at the
// end; on a pipe it draws nothing. The registry answers each blob after a
// while, so that the pull lasts several draws.
func TestPullProgress(t *testing.T) {
	t.Parallel()
	reg := registry.Start(t, registry.Options{})
	putImage(t, reg, "slow", "v1", 19, 1, 6, 100)
	ref := slowProxy(t, reg, 150*time.Millisecond) + "/slow:v1"

	dir := newLayout(t)
	stdout, out, err := runWithTerminalStderr(t, "-l", dir, "pull", "--plain-http", "--concurrency", "1", ref)
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, stdout)
	}
	draws := regexp.MustCompile(`\r\x1b\[Kpulling `+regexp.QuoteMeta(ref)+` [0-9.]+s [0-9]+/[0-9]+`).FindAllString(out, -1)
	if len(draws) < 2 || !strings.HasSuffix(out, "\r\x1b[K") {
		t.Errorf("progress on the terminal: %q", out)
	}
	wantContains(t, "stdout", stdout, "pulled "+ref, "8 blobs copied")

	r := must(t, 0, "-l", newLayout(t), "pull", "--plain-http", ref)
	if r.stderr != "" {
		t.Errorf("progress drawn on a pipe: %q", r.stderr)
	}
}
