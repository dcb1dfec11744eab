package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/registry"
)

// pullGraph pulls ref of repo from the registry at base as a client does:
// the manifest, then every child manifest and blob it names, each checked
// against its digest. It returns the root's digest and the digests of
// every blob of the graph, or the first failure.
func pullGraph(c *http.Client, base, repo, ref string) (digest.Digest, []digest.Digest, error) {
	accept := strings.Join([]string{v1.MediaTypeImageIndex, v1.MediaTypeImageManifest,
		"application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json"}, ", ")
	get := func(kind, ref string) ([]byte, string, error) {
		req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/"+kind+"/"+ref, nil)
		req.Header.Set("Accept", accept)
		resp, err := c.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, "", err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, "", fmt.Errorf("GET %s/%s of %s: %s: %s", kind, ref, repo, resp.Status, bytes.TrimSpace(b))
		}
		return b, resp.Header.Get("Content-Type"), nil
	}
	var all []digest.Digest
	var walk func(d digest.Digest, b []byte) error
	walk = func(d digest.Digest, b []byte) error {
		if got := d.Algorithm().FromBytes(b); got != d {
			return fmt.Errorf("manifest %s: content hashes to %s", d, got)
		}
		all = append(all, d)
		var m struct {
			Config    *v1.Descriptor  `json:"config"`
			Layers    []v1.Descriptor `json:"layers"`
			Manifests []v1.Descriptor `json:"manifests"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("manifest %s: %w", d, err)
		}
		for _, k := range m.Manifests {
			kb, _, err := get("manifests", k.Digest.String())
			if err != nil {
				return err
			}
			if err := walk(k.Digest, kb); err != nil {
				return err
			}
		}
		blobs := m.Layers
		if m.Config != nil {
			blobs = append(blobs, *m.Config)
		}
		for _, k := range blobs {
			bb, _, err := get("blobs", k.Digest.String())
			if err != nil {
				return err
			}
			if got := k.Digest.Algorithm().FromBytes(bb); got != k.Digest || int64(len(bb)) != k.Size {
				return fmt.Errorf("blob %s: %d bytes hashing to %s", k.Digest, len(bb), got)
			}
			all = append(all, k.Digest)
		}
		return nil
	}
	b, _, err := get("manifests", ref)
	if err != nil {
		return "", nil, err
	}
	root := digest.FromBytes(b)
	return root, all, walk(root, b)
}

// countingProxy forwards to target and counts the GETs of each blob.
type countingProxy struct {
	url string
	mu  sync.Mutex
	get map[string]int // blob digest -> GETs
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{get: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if i := strings.LastIndex(r.URL.Path, "/blobs/"); i >= 0 && r.Method == http.MethodGet && !strings.Contains(r.URL.Path, "/uploads") {
			p.mu.Lock()
			p.get[r.URL.Path[i+len("/blobs/"):]]++
			p.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	p.url = "http://" + ln.Addr().String()
	return p
}

func (p *countingProxy) gets(d digest.Digest) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.get[d.String()]
}

// pushTestImage pushes an image of n random layers (the first of size
// big) to the upstream and tags it; it returns the manifest's descriptor
// and its blobs.
func pushTestImage(t *testing.T, up *registry.Registry, repo, tag string, n, big int) (v1.Descriptor, []v1.Descriptor) {
	t.Helper()
	cfg := up.PutBlob(t, repo, []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"n":%q}`, rand.Text())))
	cfg.MediaType = v1.MediaTypeImageConfig
	blobs := []v1.Descriptor{cfg}
	m := v1.Manifest{MediaType: v1.MediaTypeImageManifest, Config: cfg}
	m.SchemaVersion = 2
	for i := 0; i < n; i++ {
		size := 4096 + i
		if i == 0 {
			size = big
		}
		b := make([]byte, size)
		rand.Read(b)
		d := up.PutBlob(t, repo, b)
		d.MediaType = v1.MediaTypeImageLayer
		m.Layers = append(m.Layers, d)
		blobs = append(blobs, d)
	}
	mb, _ := json.Marshal(m)
	return up.PutManifest(t, repo, tag, v1.MediaTypeImageManifest, mb), blobs
}

// TestServePullThrough: ocistore serve --upstream in front of a real
// docker-registry. A cold pull fetches and stores the image; 16
// concurrent pulls of an image not cached yet fetch each blob from the
// upstream once; with the upstream stopped, what was pulled is still
// served (and what was not fails with 502, not 404); the layout is clean.
func TestServePullThrough(t *testing.T) {
	t.Parallel()
	up := registry.Start(t, registry.Options{})
	proxy := newCountingProxy(t, up.URL)
	app, appBlobs := pushTestImage(t, up, "lib/app", "1", 3, 3<<20)
	// An index of two platform images.
	var idx v1.Index
	idx.SchemaVersion, idx.MediaType = 2, v1.MediaTypeImageIndex
	var multiBlobs []v1.Descriptor
	for _, arch := range []string{"amd64", "arm64"} {
		m, bs := pushTestImage(t, up, "lib/multi", "plat-"+arch, 2, 1<<20)
		m.Platform = &v1.Platform{OS: "linux", Architecture: arch}
		idx.Manifests = append(idx.Manifests, m)
		multiBlobs = append(multiBlobs, bs...)
	}
	ib, _ := json.Marshal(idx)
	multi := up.PutManifest(t, "lib/multi", "1", v1.MediaTypeImageIndex, ib)

	dir := filepath.Join(t.TempDir(), "layout")
	if r := cli(t, "-l", dir, "init"); r.code != 0 {
		t.Fatalf("init: %s", r)
	}
	srv := startServe(t, dir, "--upstream", "mirror="+proxy.url, "--tag-ttl", "0s")
	c := &http.Client{}

	// Cold: through the prefix mapping, mirror/lib/app is lib/app upstream.
	root, got, err := pullGraph(c, srv.url, "mirror/lib/app", "1")
	if err != nil {
		t.Fatalf("cold pull: %v\n%s", err, srv.stderr)
	}
	if root != app.Digest || len(got) != 1+len(appBlobs) {
		t.Fatalf("cold pull: root %s with %d digests, want %s with %d", root, len(got), app.Digest, 1+len(appBlobs))
	}
	// A repository outside every prefix has no upstream.
	if _, _, err := pullGraph(c, srv.url, "lib/app", "1"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("pull of a repository with no upstream: %v, want 404", err)
	}

	// 16 at once, nothing cached: one upstream fetch per blob.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			root, _, err := pullGraph(&http.Client{}, srv.url, "mirror/lib/multi", "1")
			if err == nil && root != multi.Digest {
				err = fmt.Errorf("root %s, want %s", root, multi.Digest)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent pull: %v", err)
		}
	}
	for _, b := range append(multiBlobs, appBlobs...) {
		if n := proxy.gets(b.Digest); n != 1 {
			t.Errorf("blob %s fetched %d times from the upstream, want 1", b.Digest, n)
		}
	}

	// Warm, upstream down: served from the layout; what was never pulled
	// is a 502 (the upstream failed), not a 404.
	up.Stop()
	for _, ref := range []string{"mirror/lib/app", "mirror/lib/multi"} {
		if _, _, err := pullGraph(c, srv.url, ref, "1"); err != nil {
			t.Errorf("warm pull of %s with the upstream down: %v", ref, err)
		}
	}
	if _, _, err := pullGraph(c, srv.url, "mirror/lib/app", "never-pulled"); err == nil || !strings.Contains(err.Error(), "502") {
		t.Errorf("pull of an uncached tag with the upstream down: %v, want 502", err)
	}
	resp, err := c.Get(srv.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`ocistore_cache_hits_total{kind="manifest"}`, `ocistore_cache_misses_total{kind="manifest"}`} {
		if !bytes.Contains(mb, []byte(want)) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	if code := srv.stop(t); code != 0 {
		t.Errorf("serve exit status %d after SIGTERM:\n%s", code, srv.stderr)
	}
	if r := cli(t, "-l", dir, "ls"); !strings.Contains(r.stdout, "mirror/lib/app:1") || !strings.Contains(r.stdout, "mirror/lib/multi:1") {
		t.Errorf("ls after the pulls:\n%s", r)
	}
	if r := cli(t, "-l", dir, "fsck"); r.code != 0 {
		t.Errorf("fsck after the pulls: %s", r)
	}
}
