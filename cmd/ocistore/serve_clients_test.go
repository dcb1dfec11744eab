package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/memory"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
)

// The tests of this file drive `ocistore serve` with real clients: skopeo
// (containers/image), the ocistore CLI's pull, push and copy (oras-go
// through the binary), oras-go in-process, and raw HTTP where a client
// hides what matters (a resumed upload, Range requests). Every request goes
// to 127.0.0.1.

// clientImages builds, in a new layout, the images the client tests move:
//
//	v1     an image manifest of three layers (gzipped tars), one of them
//	       over 1 MiB (skopeo sends it in one PATCH of 1.5 MiB)
//	multi  an index over two platform manifests (linux/amd64, linux/arm64)
type clientImages struct {
	dir        string
	app        image
	amd, arm   image
	multi      v1.Descriptor
	largeLayer v1.Descriptor
}

// largeLayerSize is the size of the file in the large layer: 1.5 MiB of
// random bytes, which gzip does not shrink.
const largeLayerSize = 3 << 19

func newClientImages(t *testing.T, seed uint64) *clientImages {
	t.Helper()
	c := &clientImages{dir: filepath.Join(t.TempDir(), "src")}
	b := newImageBuilder(t, c.dir, seed)
	c.app = b.manifestOf(nil, 2000, largeLayerSize, 700)
	c.largeLayer = c.app.blobs[2]
	if c.largeLayer.Size <= 1<<20 {
		t.Fatalf("the large layer is %d bytes, want more than 1 MiB", c.largeLayer.Size)
	}
	b.tag(c.app.desc, "v1")
	amd := &v1.Platform{OS: "linux", Architecture: "amd64"}
	arm := &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	c.amd = b.manifestOf(amd, 1200, 900)
	c.amd.desc.Platform = amd
	c.arm = b.manifestOf(arm, 1300)
	c.arm.desc.Platform = arm
	c.multi = b.index(c.amd, c.arm)
	b.tag(c.multi, "multi")
	return c
}

// manifestOf stores an image for platform p (nil: linux/amd64) with one
// layer per size, untagged.
func (b *imageBuilder) manifestOf(p *v1.Platform, sizes ...int) image {
	b.t.Helper()
	if p == nil {
		p = &v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	var layers []v1.Descriptor
	var diffIDs []digest.Digest
	for _, n := range sizes {
		l, diff := b.layer(n)
		layers = append(layers, l)
		diffIDs = append(diffIDs, diff)
	}
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := b.bld.Put(mustJSON(b.t, v1.Image{Created: &created, Platform: *p,
		RootFS: v1.RootFS{Type: "layers", DiffIDs: diffIDs}}), v1.MediaTypeImageConfig)
	return image{
		blobs: append([]v1.Descriptor{cfg}, layers...),
		desc: b.bld.Put(mustJSON(b.t, v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers}), v1.MediaTypeImageManifest),
	}
}

// sameBlobs fails the test unless every blob of root's graph in the
// layout src (read from its files) is in the layout dst with the same
// bytes; it returns how many blobs it compared.
func sameBlobs(t *testing.T, what, src, dst string, root v1.Descriptor) int {
	t.Helper()
	g := graphOf(t, src, root)
	for d := range g {
		rel := filepath.Join("blobs", d.Algorithm().String(), d.Encoded())
		want := readFile(t, filepath.Join(src, rel))
		got, err := os.ReadFile(filepath.Join(dst, rel))
		switch {
		case err != nil:
			t.Errorf("%s: blob %s: %v", what, d, err)
		case !bytes.Equal(got, want):
			t.Errorf("%s: blob %s has %d bytes hashing to %s, want the source's %d", what, d, len(got), digest.FromBytes(got), len(want))
		}
	}
	return len(g)
}

// lsRefs returns the tagged entries `ocistore ls --json` lists: ref ->
// digest.
func lsRefs(t *testing.T, dir string) map[string]digest.Digest {
	t.Helper()
	r := must(t, 0, "-l", dir, "ls", "--json")
	var rows []struct {
		Ref    *string       `json:"ref"`
		Digest digest.Digest `json:"digest"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, r)
	}
	out := map[string]digest.Digest{}
	for _, row := range rows {
		if row.Ref != nil {
			out[*row.Ref] = row.Digest
		}
	}
	return out
}

// wantRefs fails the test unless the layout's ls lists each ref of want
// with its digest.
func wantRefs(t *testing.T, dir string, want map[string]digest.Digest) {
	t.Helper()
	got := lsRefs(t, dir)
	for ref, d := range want {
		if got[ref] != d {
			t.Errorf("ocistore ls: %s is %q, want %s (all: %v)", ref, got[ref], d, got)
		}
	}
}

// stopClean stops the server, which must exit 0, and checks its layout
// with fsck.
func (s *served) stopClean(t *testing.T, dir string) {
	t.Helper()
	if code := s.stop(t); code != 0 {
		t.Errorf("serve exit status %d after SIGTERM, want 0:\n%s", code, s.stderr)
	}
	fsckClean(t, dir)
}

// uploadRequests counts the requests of the server that sent blob bytes
// or opened an upload session to send them: PATCH and PUT of the upload
// route, and a POST answered 202 (a mount or a monolithic upload is 201).
// It reads /metrics.
func uploadRequests(t *testing.T, s *served) int {
	t.Helper()
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	n, seen := 0, false
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "ocistore_http_requests_total{") || !strings.Contains(line, `route="upload"`) {
			continue
		}
		seen = true
		if !strings.Contains(line, `method="PATCH"`) && !strings.Contains(line, `method="PUT"`) &&
			!(strings.Contains(line, `method="POST"`) && strings.Contains(line, `code="202"`)) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		n += int(v)
	}
	if !seen {
		t.Fatalf("no ocistore_http_requests_total of the upload route in /metrics:\n%.3000s", b)
	}
	return n
}

// TestServeSkopeo: skopeo pushes an image (a layer over 1 MiB among them)
// and, with --all, a multi-platform index into `ocistore serve`, reads them
// back (inspect, list-tags, copy out to an OCI layout: the same manifest
// digests, every blob byte for byte; one platform of the index), takes
// the image converted to Docker schema 2 (--format v2s2), copies
// images between two repositories of the server without sending a blob
// again (skopeo 1.9 finds them with a HEAD in the destination: it sends
// no mount, so a mount is sent by hand), and deletes a tag of one
// repository (skopeo delete: DELETE by digest) without touching the
// others; the layout lists every repository's tags, and fsck finds it
// clean.
func TestServeSkopeo(t *testing.T) {
	t.Parallel()
	src := newClientImages(t, 21)
	dir := newLayout(t)
	srv := startServe(t, dir)
	repo := "docker://" + srv.addr + "/repo/name"

	// In: an image, and the index with every platform.
	skopeo(t, "copy", "-q", "--preserve-digests", "--dest-tls-verify=false", "oci:"+src.dir+":v1", repo+":v1")
	skopeo(t, "copy", "-q", "--all", "--preserve-digests", "--dest-tls-verify=false", "oci:"+src.dir+":multi", repo+":multi")
	if n := sameBlobs(t, "the server's layout after skopeo's push", src.dir, dir, src.app.desc); n != 5 {
		t.Errorf("the image's graph has %d blobs, want 5", n)
	}
	if n := sameBlobs(t, "the server's layout after skopeo's push --all", src.dir, dir, src.multi); n != 8 {
		t.Errorf("the index's graph has %d blobs, want 8", n)
	}

	// Inspect, list-tags.
	if got := skopeoDigest(t, "--tls-verify=false", repo+":v1"); got != src.app.desc.Digest {
		t.Errorf("skopeo inspect --raw reads %s, want %s", got, src.app.desc.Digest)
	}
	if got := skopeoDigest(t, "--tls-verify=false", repo+":multi"); got != src.multi.Digest {
		t.Errorf("skopeo inspect --raw reads %s, want the index %s", got, src.multi.Digest)
	}
	var info struct {
		Digest       digest.Digest
		RepoTags     []string
		Layers       []digest.Digest
		Architecture string
		Os           string
	}
	out := skopeo(t, "inspect", "--tls-verify=false", repo+":v1")
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("skopeo inspect: %v\n%s", err, out)
	}
	var wantLayers []digest.Digest
	for _, l := range src.app.blobs[1:] {
		wantLayers = append(wantLayers, l.Digest)
	}
	slices.Sort(info.RepoTags)
	if info.Digest != src.app.desc.Digest || !slices.Equal(info.Layers, wantLayers) ||
		!slices.Equal(info.RepoTags, []string{"multi", "v1"}) || info.Os != "linux" || info.Architecture != "amd64" {
		t.Errorf("skopeo inspect: %s\nwant digest %s, layers %v, tags [multi v1], linux/amd64", out, src.app.desc.Digest, wantLayers)
	}
	var tags struct {
		Repository string
		Tags       []string
	}
	out = skopeo(t, "list-tags", "--tls-verify=false", repo)
	if err := json.Unmarshal([]byte(out), &tags); err != nil {
		t.Fatalf("skopeo list-tags: %v\n%s", err, out)
	}
	slices.Sort(tags.Tags)
	if !slices.Equal(tags.Tags, []string{"multi", "v1"}) {
		t.Errorf("skopeo list-tags: %s, want the tags multi and v1", out)
	}

	// Out, into an OCI layout skopeo writes: the same digests, the same
	// bytes.
	outDir := filepath.Join(t.TempDir(), "out")
	skopeo(t, "copy", "-q", "--preserve-digests", "--src-tls-verify=false", repo+":v1", "oci:"+outDir+":v1")
	skopeo(t, "copy", "-q", "--all", "--preserve-digests", "--src-tls-verify=false", repo+":multi", "oci:"+outDir+":multi")
	if got := skopeoDigest(t, "oci:"+outDir+":v1"); got != src.app.desc.Digest {
		t.Errorf("the image skopeo pulled is %s, want %s", got, src.app.desc.Digest)
	}
	if got := skopeoDigest(t, "oci:"+outDir+":multi"); got != src.multi.Digest {
		t.Errorf("the index skopeo pulled is %s, want %s", got, src.multi.Digest)
	}
	sameBlobs(t, "skopeo's pull of v1", src.dir, outDir, src.app.desc)
	sameBlobs(t, "skopeo's pull of multi --all", src.dir, outDir, src.multi)
	// One platform of the index, as a client without --all pulls it.
	armDir := filepath.Join(t.TempDir(), "arm")
	skopeo(t, "--override-arch", "arm64", "--override-variant", "v8", "copy", "-q", "--src-tls-verify=false", repo+":multi", "oci:"+armDir+":arm")
	if got := skopeoDigest(t, "oci:"+armDir+":arm"); got != src.arm.desc.Digest {
		t.Errorf("skopeo pulled %s for linux/arm64/v8, want %s", got, src.arm.desc.Digest)
	}

	// Converted to a Docker schema 2 manifest on the way in (--format
	// v2s2): the server keeps the Docker media type; the blobs are the
	// same.
	skopeo(t, "copy", "-q", "--format", "v2s2", "--dest-tls-verify=false", "oci:"+src.dir+":v1", "docker://"+srv.addr+"/repo/docker:v1")
	raw := skopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+srv.addr+"/repo/docker:v1")
	var dm v1.Manifest
	if err := json.Unmarshal([]byte(raw), &dm); err != nil {
		t.Fatalf("the Docker manifest: %v\n%s", err, raw)
	}
	var dmLayers []digest.Digest
	for _, l := range dm.Layers {
		dmLayers = append(dmLayers, l.Digest)
	}
	r := do(t, http.MethodHead, srv.url+"/v2/repo/docker/manifests/v1", nil, nil)
	if dm.MediaType != "application/vnd.docker.distribution.manifest.v2+json" || !slices.Equal(dmLayers, wantLayers) ||
		r.Header.Get("Content-Type") != dm.MediaType || r.Header.Get("Docker-Content-Digest") != digest.FromString(raw).String() {
		t.Errorf("skopeo --format v2s2: HEAD says %q, %q; manifest %s\nwant the Docker media type, digest %s and the layers %v",
			r.Header.Get("Content-Type"), r.Header.Get("Docker-Content-Digest"), raw, digest.FromString(raw), wantLayers)
	}

	// Docker to docker between two repositories of the server: every blob
	// is reused (found there, or mounted), none is sent again.
	before := uploadRequests(t, srv)
	other := "docker://" + srv.addr + "/other/copy"
	skopeo(t, "copy", "-q", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", repo+":v1", other+":v1")
	skopeo(t, "copy", "-q", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", repo+":multi", other+":multi")
	if after := uploadRequests(t, srv); after != before {
		t.Errorf("skopeo's copies between repositories of the server made %d upload requests, want none", after-before)
	}
	if got := skopeoDigest(t, "--tls-verify=false", other+":v1"); got != src.app.desc.Digest {
		t.Errorf("skopeo reads %s from the other repository, want %s", got, src.app.desc.Digest)
	}
	// skopeo delete (DELETE by digest) of an image that other
	// repositories name too: only this repository's tag goes.
	gone := "docker://" + srv.addr + "/gone/soon"
	skopeo(t, "copy", "-q", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", repo+":v1", gone+":v1")
	skopeo(t, "delete", "--tls-verify=false", gone+":v1")
	if r := do(t, http.MethodGet, srv.url+"/v2/gone/soon/manifests/v1", nil, nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("GET gone/soon:v1 after skopeo delete: %d, want 404", r.StatusCode)
	}
	if got := skopeoDigest(t, "--tls-verify=false", repo+":v1"); got != src.app.desc.Digest {
		t.Errorf("after skopeo delete of gone/soon:v1, repo/name:v1 reads %s, want %s", got, src.app.desc.Digest)
	}
	// A cross-repository mount, as a client that does not look first
	// sends it.
	mount := fmt.Sprintf("%s/v2/third/repo/blobs/uploads/?mount=%s&from=repo/name", srv.url, src.largeLayer.Digest)
	resp := do(t, http.MethodPost, mount, nil, nil)
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Location") != "/v2/third/repo/blobs/"+src.largeLayer.Digest.String() ||
		resp.Header.Get("Docker-Content-Digest") != src.largeLayer.Digest.String() {
		t.Errorf("POST %s: %d, Location %q, Docker-Content-Digest %q; want 201 and the blob in third/repo", mount, resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get("Docker-Content-Digest"))
	}
	resp = do(t, http.MethodHead, srv.url+"/v2/third/repo/blobs/"+src.largeLayer.Digest.String(), nil, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != src.largeLayer.Size {
		t.Errorf("HEAD of the mounted blob: %d, %d bytes; want 200 and %d", resp.StatusCode, resp.ContentLength, src.largeLayer.Size)
	}

	srv.stopClean(t, dir)
	wantRefs(t, dir, map[string]digest.Digest{
		"repo/name:v1": src.app.desc.Digest, "repo/name:multi": src.multi.Digest,
		"other/copy:v1": src.app.desc.Digest, "other/copy:multi": src.multi.Digest,
		"repo/docker:v1": digest.FromString(raw),
	})
	if got := lsRefs(t, dir); len(got) != 5 {
		t.Errorf("ocistore ls lists %v, want the 5 tags pushed and not deleted", got)
	}
}

// TestServeOcistoreRemote: ocistore push, pull and copy (oras-go through
// the CLI) against ocistore serve: pushed by the CLI from one layout, pulled
// into another with the same digests and bytes (the index whole, and one
// platform of it), copied between two repositories of the server and
// between the server and a layout.
func TestServeOcistoreRemote(t *testing.T) {
	t.Parallel()
	src := newClientImages(t, 22)
	dir := newLayout(t)
	srv := startServe(t, dir)
	app, multi := srv.addr+"/cli/app:v1", srv.addr+"/cli/app:multi"

	// Push: every blob is sent once.
	out := transferJSONOf(t, must(t, 0, "-l", src.dir, "push", "--plain-http", "--json", "v1", app))
	if out.Digest != src.app.desc.Digest || out.Blobs != (blobCounts{Copied: 5}) || out.Bytes != total(graphOf(t, src.dir, src.app.desc)) {
		t.Errorf("push v1: %+v, want %s and 5 blobs copied", out, src.app.desc.Digest)
	}
	out = transferJSONOf(t, must(t, 0, "-l", src.dir, "push", "--plain-http", "--json", "multi", multi))
	if out.Digest != src.multi.Digest || out.Blobs != (blobCounts{Copied: 8}) {
		t.Errorf("push multi: %+v, want %s and 8 blobs copied", out, src.multi.Digest)
	}
	sameBlobs(t, "the server's layout after ocistore push", src.dir, dir, src.app.desc)
	sameBlobs(t, "the server's layout after ocistore push", src.dir, dir, src.multi)
	// Again: the server has it all.
	out = transferJSONOf(t, must(t, 0, "-l", src.dir, "push", "--plain-http", "--json", "v1", app))
	if out.Blobs.Copied != 0 || out.Bytes != 0 {
		t.Errorf("a second push copied %+v, want nothing", out)
	}

	// Pull into another layout.
	pulled := newLayout(t)
	out = transferJSONOf(t, must(t, 0, "-l", pulled, "pull", "--plain-http", "--json", app))
	if out.Digest != src.app.desc.Digest || out.Blobs != (blobCounts{Copied: 5}) {
		t.Errorf("pull v1: %+v, want %s and 5 blobs copied", out, src.app.desc.Digest)
	}
	must(t, 0, "-l", pulled, "pull", "--plain-http", multi)
	must(t, 0, "-l", pulled, "pull", "--plain-http", "--platform", "linux/arm64/v8", multi, "arm")
	if got := entries(t, pulled); !slices.Equal(got[app], []digest.Digest{src.app.desc.Digest}) ||
		!slices.Equal(got[multi], []digest.Digest{src.multi.Digest}) || !slices.Equal(got["arm"], []digest.Digest{src.arm.desc.Digest}) {
		t.Errorf("index.json of the pulled layout: %v\nwant %s, %s and %s", got, src.app.desc.Digest, src.multi.Digest, src.arm.desc.Digest)
	}
	sameBlobs(t, "ocistore pull of v1", src.dir, pulled, src.app.desc)
	sameBlobs(t, "ocistore pull of multi", src.dir, pulled, src.multi)
	fsckClean(t, pulled)

	// Copy between two repositories of the server: the graph is there
	// (one layout), only the tag is new.
	copied := srv.addr + "/cli/copy:v1"
	out = transferJSONOf(t, must(t, 0, "copy", "--plain-http", "--json", app, copied))
	if out.Digest != src.app.desc.Digest || out.Blobs.Copied != 0 || out.Bytes != 0 {
		t.Errorf("copy between repositories: %+v, want %s and nothing copied", out, src.app.desc.Digest)
	}
	must(t, 0, "copy", "--plain-http", multi, srv.addr+"/cli/copy:multi")
	// Layout to server, server to layout.
	must(t, 0, "copy", "--plain-http", "oci:"+src.dir+":multi", srv.addr+"/cli/fromlayout:m")
	back := newLayout(t)
	out = transferJSONOf(t, must(t, 0, "copy", "--plain-http", "--json", srv.addr+"/cli/copy:multi", "oci:"+back+":m"))
	if out.Digest != src.multi.Digest || out.Blobs != (blobCounts{Copied: 8}) {
		t.Errorf("copy from the server into a layout: %+v, want %s and 8 blobs copied", out, src.multi.Digest)
	}
	sameBlobs(t, "ocistore copy into a layout", src.dir, back, src.multi)
	fsckClean(t, back)

	srv.stopClean(t, dir)
	wantRefs(t, dir, map[string]digest.Digest{
		"cli/app:v1": src.app.desc.Digest, "cli/app:multi": src.multi.Digest,
		"cli/copy:v1": src.app.desc.Digest, "cli/copy:multi": src.multi.Digest, "cli/fromlayout:m": src.multi.Digest,
	})
}

// TestServeOrasGo: oras-go in-process against ocistore serve. An image
// copied with oras.Copy; two referrers of it (an SBOM and a signature)
// pushed with oras.PackManifest, which the server acknowledges with
// OCI-Subject (so oras-go writes no referrers tag); the referrers listed
// by the API, whole and filtered by artifact type (oras-go and raw HTTP);
// fetched by digest; one deleted; the tags list paged two at a time.
func TestServeOrasGo(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := newLayout(t)
	srv := startServe(t, dir)
	newRepo := func(name string) *remote.Repository {
		t.Helper()
		r, err := remote.NewRepository(srv.addr + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		r.PlainHTTP = true
		return r
	}

	// The image: built in memory, copied with oras.Copy.
	mem := memory.New()
	pushMem := func(mt string, b []byte) v1.Descriptor {
		t.Helper()
		d := content.NewDescriptorFromBytes(mt, b)
		if err := mem.Push(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	layer := pushMem(v1.MediaTypeImageLayer, bytes.Repeat([]byte("oras layer "), 200_000)) // 2.2 MB
	img, err := oras.PackManifest(ctx, mem, oras.PackManifestVersion1_1, "application/vnd.example.image", oras.PackManifestOptions{Layers: []v1.Descriptor{layer}})
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.Tag(ctx, img, "v1"); err != nil {
		t.Fatal(err)
	}
	repo := newRepo("oras/app")
	got, err := oras.Copy(ctx, mem, "v1", repo, "v1", oras.DefaultCopyOptions)
	if err != nil {
		t.Fatalf("oras.Copy to the server: %v", err)
	}
	if got.Digest != img.Digest {
		t.Errorf("oras.Copy copied %s, want %s", got.Digest, img.Digest)
	}
	if d, err := repo.Resolve(ctx, "v1"); err != nil || d.Digest != img.Digest || d.Size != img.Size || d.MediaType != img.MediaType {
		t.Errorf("Resolve v1: %+v, %v; want %s (%d bytes, %s)", d, err, img.Digest, img.Size, img.MediaType)
	}

	// Two referrers, pushed straight to the server.
	const sbomType, sigType = "application/spdx+json", "application/vnd.example.signature"
	refRepo := newRepo("oras/app")
	pushBlob := func(mt string, b []byte) v1.Descriptor {
		t.Helper()
		d := content.NewDescriptorFromBytes(mt, b)
		if err := refRepo.Push(ctx, d, bytes.NewReader(b)); err != nil {
			t.Fatalf("push a blob: %v", err)
		}
		return d
	}
	sbomLayer := pushBlob(sbomType, []byte(`{"spdxVersion":"SPDX-2.3","name":"app"}`))
	sbom, err := oras.PackManifest(ctx, refRepo, oras.PackManifestVersion1_1, sbomType,
		oras.PackManifestOptions{Subject: &img, Layers: []v1.Descriptor{sbomLayer}, ManifestAnnotations: map[string]string{"org.example.kind": "sbom"}})
	if err != nil {
		t.Fatalf("push the SBOM: %v", err)
	}
	// OCI-Subject came back: oras-go knows the server has the referrers
	// API, and does not fall back to the tag schema.
	if err := refRepo.SetReferrersCapability(false); !errors.Is(err, remote.ErrReferrersCapabilityAlreadySet) {
		t.Errorf("after pushing a manifest with a subject, oras-go's referrers capability is not set (%v): no OCI-Subject header?", err)
	}
	sig, err := oras.PackManifest(ctx, refRepo, oras.PackManifestVersion1_1, sigType,
		oras.PackManifestOptions{Subject: &img, Layers: []v1.Descriptor{pushBlob("application/vnd.example.sig", []byte("signed"))}})
	if err != nil {
		t.Fatalf("push the signature: %v", err)
	}
	var tagList []string
	if err := repo.Tags(ctx, "", func(ts []string) error { tagList = append(tagList, ts...); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tagList, []string{"v1"}) {
		t.Errorf("tags of oras/app: %v, want [v1] (no referrers tag sha256-%s)", tagList, img.Digest.Encoded())
	}

	// The referrers API, through a repository that knows nothing yet:
	// oras-go must find the API there, not fall back.
	referrers := func(r *remote.Repository, artifactType string) map[digest.Digest]v1.Descriptor {
		t.Helper()
		out := map[digest.Digest]v1.Descriptor{}
		err := r.Referrers(ctx, img, artifactType, func(ds []v1.Descriptor) error {
			for _, d := range ds {
				out[d.Digest] = d
			}
			return nil
		})
		if err != nil {
			t.Fatalf("Referrers(%q): %v", artifactType, err)
		}
		return out
	}
	fresh := newRepo("oras/app")
	all := referrers(fresh, "")
	if err := fresh.SetReferrersCapability(false); !errors.Is(err, remote.ErrReferrersCapabilityAlreadySet) {
		t.Errorf("oras-go did not find the referrers API (%v)", err)
	}
	if len(all) != 2 || all[sbom.Digest].ArtifactType != sbomType || all[sig.Digest].ArtifactType != sigType ||
		all[sbom.Digest].Size != sbom.Size || all[sbom.Digest].MediaType != v1.MediaTypeImageManifest ||
		all[sbom.Digest].Annotations["org.example.kind"] != "sbom" {
		t.Errorf("referrers of the image: %+v\nwant the SBOM %s (%s, annotated) and the signature %s (%s)", all, sbom.Digest, sbomType, sig.Digest, sigType)
	}
	if f := referrers(newRepo("oras/app"), sbomType); len(f) != 1 || f[sbom.Digest].Digest != sbom.Digest {
		t.Errorf("referrers of type %s: %+v, want the SBOM alone", sbomType, f)
	}
	// oras-go filters by itself when the server did not: the server's own
	// answer is checked here.
	resp := do(t, http.MethodGet, srv.url+"/v2/oras/app/referrers/"+img.Digest.String()+"?artifactType="+url.QueryEscape(sigType), nil, nil)
	var ix v1.Index
	if err := json.Unmarshal(resp.body, &ix); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET referrers?artifactType: %d %v\n%s", resp.StatusCode, err, resp.body)
	}
	if resp.Header.Get("OCI-Filters-Applied") != "artifactType" || len(ix.Manifests) != 1 || ix.Manifests[0].Digest != sig.Digest ||
		resp.Header.Get("Content-Type") != v1.MediaTypeImageIndex {
		t.Errorf("GET referrers?artifactType=%s: OCI-Filters-Applied %q, Content-Type %q, %s; want the signature alone, filtered by the server",
			sigType, resp.Header.Get("OCI-Filters-Applied"), resp.Header.Get("Content-Type"), resp.body)
	}

	// Fetch by digest: the manifest from another repository's name, the
	// blob.
	b, err := content.FetchAll(ctx, newRepo("oras/elsewhere"), sbom)
	if err != nil || digest.FromBytes(b) != sbom.Digest {
		t.Errorf("fetch the SBOM by digest: %v (%d bytes)", err, len(b))
	}
	var m v1.Manifest
	if err := json.Unmarshal(b, &m); err != nil || m.Subject == nil || m.Subject.Digest != img.Digest {
		t.Errorf("the SBOM fetched: %v, subject %+v; want %s", err, m.Subject, img.Digest)
	}
	if b, err := content.FetchAll(ctx, repo.Blobs(), layer); err != nil || !bytes.Equal(b, bytes.Repeat([]byte("oras layer "), 200_000)) {
		t.Errorf("fetch the layer by digest: %v (%d bytes)", err, len(b))
	}
	if d, err := repo.Resolve(ctx, sbom.Digest.String()); err != nil || d.Digest != sbom.Digest || d.Size != sbom.Size {
		t.Errorf("Resolve the SBOM by digest: %+v, %v", d, err)
	}

	// Delete the SBOM: gone, the signature stays.
	if err := repo.Delete(ctx, sbom); err != nil {
		t.Fatalf("delete the SBOM: %v", err)
	}
	if _, err := repo.Resolve(ctx, sbom.Digest.String()); !errors.Is(err, errdef.ErrNotFound) {
		t.Errorf("Resolve the deleted SBOM: %v, want not found", err)
	}
	if left := referrers(newRepo("oras/app"), ""); len(left) != 1 || left[sig.Digest].Digest != sig.Digest {
		t.Errorf("referrers after the SBOM's delete: %+v, want the signature alone", left)
	}
	if ok, err := repo.Exists(ctx, img); err != nil || !ok {
		t.Errorf("the image after its referrer's delete: exists %v, %v", ok, err)
	}

	// The tags list, two at a time, following the Link header.
	tagRepo := newRepo("oras/tags")
	names := []string{"t1", "t2", "t3", "t4", "t5"}
	for _, n := range names {
		if err := tagRepo.Tag(ctx, img, n); err != nil {
			t.Fatalf("tag %s: %v", n, err)
		}
	}
	pages := func(last string) [][]string {
		t.Helper()
		r := newRepo("oras/tags")
		r.TagListPageSize = 2
		var ps [][]string
		if err := r.Tags(ctx, last, func(ts []string) error { ps = append(ps, slices.Clone(ts)); return nil }); err != nil {
			t.Fatalf("Tags(last=%q): %v", last, err)
		}
		return ps
	}
	if ps := pages(""); fmt.Sprint(ps) != "[[t1 t2] [t3 t4] [t5]]" {
		t.Errorf("tags by pages of 2: %v, want [[t1 t2] [t3 t4] [t5]]", ps)
	}
	if ps := pages("t2"); fmt.Sprint(ps) != "[[t3 t4] [t5]]" {
		t.Errorf("tags by pages of 2 after t2: %v, want [[t3 t4] [t5]]", ps)
	}

	srv.stopClean(t, dir)
	wantRefs(t, dir, map[string]digest.Digest{"oras/app:v1": img.Digest, "oras/tags:t1": img.Digest, "oras/tags:t5": img.Digest})
}

// response is an HTTP response with its body read.
type response struct {
	*http.Response
	body []byte
}

// do sends a request to the server and reads the whole response.
func do(t *testing.T, method, u string, header http.Header, body []byte) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, u, err)
	}
	return response{resp, b}
}

// TestServeUploadResume: an upload half written survives a graceful
// restart of the server: the new process answers for the session (what it
// holds, in Range), refuses a chunk at the wrong offset, keeps what came of
// a chunk whose connection dropped (400, with the Range to resume from),
// takes the rest and the final PUT, and serves the blob's bytes. A session
// still empty at the restart is resumable too.
func TestServeUploadResume(t *testing.T) {
	t.Parallel()
	dir := newLayout(t)
	srv := startServe(t, dir)
	blob := testBytes(3<<20, 5)
	d := digest.FromBytes(blob)
	half := len(blob)/2 + 12345

	resp := do(t, http.MethodPost, srv.url+"/v2/resume/me/blobs/uploads/", nil, nil)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("POST an upload: %d, Location %q\n%s", resp.StatusCode, loc, resp.body)
	}
	chunk := func(s *served, from, to int) response {
		t.Helper()
		h := http.Header{"Content-Type": {"application/octet-stream"}, "Content-Range": {fmt.Sprintf("%d-%d", from, to-1)}}
		return do(t, http.MethodPatch, resolve(t, s, loc), h, blob[from:to])
	}
	if r := chunk(srv, 0, half); r.StatusCode != http.StatusAccepted || r.Header.Get("Range") != fmt.Sprintf("0-%d", half-1) {
		t.Fatalf("PATCH the first half: %d, Range %q; want 202 and 0-%d\n%s", r.StatusCode, r.Header.Get("Range"), half-1, r.body)
	}
	// A second session, still empty at the restart.
	resp = do(t, http.MethodPost, srv.url+"/v2/resume/empty/blobs/uploads/", nil, nil)
	emptyLoc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || emptyLoc == "" {
		t.Fatalf("POST a second upload: %d, Location %q\n%s", resp.StatusCode, emptyLoc, resp.body)
	}
	if code := srv.stop(t); code != 0 {
		t.Fatalf("serve exit status %d after SIGTERM, want 0:\n%s", code, srv.stderr)
	}

	srv = startServe(t, dir)
	r := do(t, http.MethodGet, resolve(t, srv, loc), nil, nil)
	if r.StatusCode != http.StatusNoContent || r.Header.Get("Range") != fmt.Sprintf("0-%d", half-1) || r.Header.Get("Location") == "" {
		t.Fatalf("GET the upload after the restart: %d, Range %q, Location %q; want 204 and 0-%d\n%s", r.StatusCode, r.Header.Get("Range"), r.Header.Get("Location"), half-1, r.body)
	}
	loc = r.Header.Get("Location")
	// A chunk that does not start where the upload ends.
	if r := chunk(srv, 0, 100); r.StatusCode != http.StatusRequestedRangeNotSatisfiable || r.Header.Get("Range") != fmt.Sprintf("0-%d", half-1) {
		t.Errorf("PATCH at offset 0 after the restart: %d, Range %q; want 416 and 0-%d\n%s", r.StatusCode, r.Header.Get("Range"), half-1, r.body)
	}
	// The next chunk's connection drops part way: what came stays, the
	// answer (400) says where the upload now ends, and the client goes on
	// from there.
	const sent = 200_000
	cut := cutPatch(t, srv, resolve(t, srv, loc), half, blob[half:], sent)
	held := half + sent
	if cut.StatusCode != http.StatusBadRequest || cut.Header.Get("Range") != fmt.Sprintf("0-%d", held-1) {
		t.Fatalf("PATCH cut after %d bytes: %d, Range %q; want 400 and 0-%d", sent, cut.StatusCode, cut.Header.Get("Range"), held-1)
	}
	if r := chunk(srv, held, len(blob)); r.StatusCode != http.StatusAccepted || r.Header.Get("Range") != fmt.Sprintf("0-%d", len(blob)-1) {
		t.Fatalf("PATCH the rest: %d, Range %q; want 202 and 0-%d\n%s", r.StatusCode, r.Header.Get("Range"), len(blob)-1, r.body)
	}
	put, err := url.Parse(resolve(t, srv, loc))
	if err != nil {
		t.Fatal(err)
	}
	q := put.Query()
	q.Set("digest", d.String())
	put.RawQuery = q.Encode()
	r = do(t, http.MethodPut, put.String(), nil, nil)
	if r.StatusCode != http.StatusCreated || r.Header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("PUT ?digest=: %d, Docker-Content-Digest %q; want 201 and %s\n%s", r.StatusCode, r.Header.Get("Docker-Content-Digest"), d, r.body)
	}
	r = do(t, http.MethodGet, srv.url+"/v2/resume/me/blobs/"+d.String(), nil, nil)
	if r.StatusCode != http.StatusOK || !bytes.Equal(r.body, blob) {
		t.Errorf("GET the blob: %d, %d bytes hashing to %s; want 200 and the %d bytes sent", r.StatusCode, len(r.body), digest.FromBytes(r.body), len(blob))
	}
	// The session ended with the PUT.
	if r := do(t, http.MethodGet, resolve(t, srv, loc), nil, nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("GET the upload after its PUT: %d, want 404", r.StatusCode)
	}

	// The empty session: resumable too, and ended by a PUT with the
	// whole blob.
	small := testBytes(5000, 6)
	r = do(t, http.MethodGet, resolve(t, srv, emptyLoc), nil, nil)
	if r.StatusCode != http.StatusNoContent || r.Header.Get("Range") != "0-0" {
		t.Fatalf("GET the empty upload after the restart: %d, Range %q; want 204 and 0-0\n%s", r.StatusCode, r.Header.Get("Range"), r.body)
	}
	put, err = url.Parse(resolve(t, srv, r.Header.Get("Location")))
	if err != nil {
		t.Fatal(err)
	}
	q = put.Query()
	q.Set("digest", digest.FromBytes(small).String())
	put.RawQuery = q.Encode()
	if r := do(t, http.MethodPut, put.String(), http.Header{"Content-Type": {"application/octet-stream"}}, small); r.StatusCode != http.StatusCreated {
		t.Fatalf("PUT the empty upload's blob: %d\n%s", r.StatusCode, r.body)
	}
	if r := do(t, http.MethodGet, srv.url+"/v2/resume/empty/blobs/"+digest.FromBytes(small).String(), nil, nil); !bytes.Equal(r.body, small) {
		t.Errorf("GET the second blob: %d, %d bytes; want the %d bytes sent", r.StatusCode, len(r.body), len(small))
	}
	srv.stopClean(t, dir)
}

// cutPatch sends a PATCH of chunk at offset off to the upload at u whose
// connection drops after sent bytes of the body (the client closes its
// side, as one whose network fails), and returns the server's answer.
func cutPatch(t *testing.T, s *served, u string, off int, chunk []byte, sent int) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\nContent-Range: %d-%d\r\n\r\n",
		pu.RequestURI(), s.addr, len(chunk), off, off+len(chunk)-1)
	if _, err := conn.Write(chunk[:sent]); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the answer to a PATCH cut after %d bytes: %v", sent, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// resolve makes a Location of the server (a path, or an absolute URL)
// absolute against the running server s.
func resolve(t *testing.T, s *served, loc string) string {
	t.Helper()
	base, err := url.Parse(s.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatalf("Location %q: %v", loc, err)
	}
	if u.IsAbs() {
		u.Scheme, u.Host = base.Scheme, base.Host // the port of the restarted server
	}
	return base.ResolveReference(u).String()
}

// testBytes returns n bytes of a fixed pseudo-random sequence.
func testBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// TestServeRange: a blob's bytes by Range: a closed range, an open one, a
// suffix (206, Content-Range, exactly those bytes), and one past the end
// (416, Content-Range bytes */SIZE).
func TestServeRange(t *testing.T) {
	t.Parallel()
	dir := newLayout(t)
	srv := startServe(t, dir)
	blob := testBytes(1000, 9)
	d := digest.FromBytes(blob)
	if r := do(t, http.MethodPost, srv.url+"/v2/ranges/blobs/uploads/?digest="+d.String(), http.Header{"Content-Type": {"application/octet-stream"}}, blob); r.StatusCode != http.StatusCreated {
		t.Fatalf("POST the blob: %d\n%s", r.StatusCode, r.body)
	}
	u := srv.url + "/v2/ranges/blobs/" + d.String()
	for _, c := range []struct {
		rng      string
		from, to int // the bytes wanted: blob[from:to]
	}{
		{"bytes=100-199", 100, 200},
		{"bytes=0-0", 0, 1},
		{"bytes=990-", 990, 1000},
		{"bytes=-50", 950, 1000},
		{"bytes=900-5000", 900, 1000}, // an end past the blob's is its end
	} {
		r := do(t, http.MethodGet, u, http.Header{"Range": {c.rng}}, nil)
		wantCR := fmt.Sprintf("bytes %d-%d/%d", c.from, c.to-1, len(blob))
		if r.StatusCode != http.StatusPartialContent || r.Header.Get("Content-Range") != wantCR ||
			r.ContentLength != int64(c.to-c.from) || !bytes.Equal(r.body, blob[c.from:c.to]) {
			t.Errorf("GET Range %s: %d, Content-Range %q, Content-Length %d, %d bytes; want 206, %q and bytes %d to %d",
				c.rng, r.StatusCode, r.Header.Get("Content-Range"), r.ContentLength, len(r.body), wantCR, c.from, c.to-1)
		}
		if r.Header.Get("Docker-Content-Digest") != d.String() {
			t.Errorf("GET Range %s: Docker-Content-Digest %q, want the blob's %s", c.rng, r.Header.Get("Docker-Content-Digest"), d)
		}
	}
	for _, rng := range []string{"bytes=1000-1100", "bytes=5000-"} {
		r := do(t, http.MethodGet, u, http.Header{"Range": {rng}}, nil)
		if r.StatusCode != http.StatusRequestedRangeNotSatisfiable || r.Header.Get("Content-Range") != "bytes */1000" {
			t.Errorf("GET Range %s: %d, Content-Range %q; want 416 and \"bytes */1000\"", rng, r.StatusCode, r.Header.Get("Content-Range"))
		}
	}
	// Without Range: the whole blob.
	if r := do(t, http.MethodGet, u, nil, nil); r.StatusCode != http.StatusOK || !bytes.Equal(r.body, blob) || r.Header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("GET without Range: %d, %d bytes, Accept-Ranges %q; want 200, the blob, bytes", r.StatusCode, len(r.body), r.Header.Get("Accept-Ranges"))
	}
	srv.stopClean(t, dir)
}
