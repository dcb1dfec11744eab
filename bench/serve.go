package main

// Section 10: the registry server. `ocistore serve` against Debian's
// docker-registry (distribution 2.8) on 127.0.0.1, in the same run on the
// same machine, and for blob GETs against Go's http.FileServer on the same
// blob files: blob GET throughput (one large blob by curl, many small ones
// by 16 Go clients), manifest GET latency by tag at many tags, push
// throughput by 8 clients, and the latency of PUT manifest while the
// server prunes many images. The servers and clients are in srvproc.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/store"
)

const (
	scSrvBlobBig   = "serve-blob-big"   // one large blob, curl
	scSrvBlobSmall = "serve-blob-small" // many small blobs, Go clients
	scSrvTags      = "serve-manifest-tags"
	scSrvPush      = "serve-push"
	scSrvPrune     = "serve-put-during-prune"

	pServe       = "ocistore serve"
	pServeInproc = "ocistore serve (in-process, profiled)"
	pRegistry    = "docker-registry"
	pFileServer  = "http.FileServer"

	// Repositories of the rows.
	blobRepo  = "bench/blobs"
	tagsRepo  = "bench/tags"
	pushRepo  = "bench/push"
	oldRepo   = "bench/old" // the images the prune removes
	loopRepo  = "bench/new" // the images pushed during the prune
	loopTags  = 20          // tags the loop pushes to, in turn
	loopLayer = 4096        // bytes per layer of a loop image (3 layers)
	loopCfg   = 256         // bytes of a loop image's config

	// Serve rows, as -rows names them.
	rowBlob  = "blob"
	rowTags  = "tags"
	rowPush  = "push"
	rowPrune = "prune"

	targetPutDuringPruneMs = 100
	targetFileServerShare  = 0.8
)

var serveRows = []string{rowBlob, rowTags, rowPush, rowPrune}

// rowOf is the -rows name of a serve scenario ("" if not one).
func rowOf(scenario string) string {
	switch scenario {
	case scSrvBlobBig, scSrvBlobSmall:
		return rowBlob
	case scSrvTags:
		return rowTags
	case scSrvPush:
		return rowPush
	case scSrvPrune:
		return rowPrune
	}
	return ""
}

// serveSizes are the sizes of section 10.
type serveSizes struct {
	BlobSize     int64 // the large blob, fetched by curl
	SmallBlobs   int   // small blobs of SmallMin to SmallMax bytes, fetched by SmallClients clients
	SmallMin     int
	SmallMax     int
	SmallClients int
	BlobRuns     int // runs of each blob row per server
	Tags         int // tagged images for the manifest GETs
	PushImages   int
	PushClients  int
	PruneImages  int
	// PruneInterval is serve's --prune-interval: the prune fires once,
	// this long after the server starts, during the measurement.
	PruneInterval time.Duration
	Runs          int // runs of the tags, push and prune rows
}

func quickServe() serveSizes {
	return serveSizes{BlobSize: 64 << 20, SmallBlobs: 200, SmallMin: 16 << 10, SmallMax: 64 << 10, SmallClients: 16, BlobRuns: 5,
		Tags: 2000, PushImages: 100, PushClients: 8, PruneImages: 1000, PruneInterval: 4 * time.Second, Runs: 3}
}

func fullServe() serveSizes {
	return serveSizes{BlobSize: 1 << 30, SmallBlobs: 1000, SmallMin: 16 << 10, SmallMax: 64 << 10, SmallClients: 16, BlobRuns: 5,
		Tags: 20000, PushImages: 500, PushClients: 8, PruneImages: 10000, PruneInterval: 8 * time.Second, Runs: 3}
}

// serveStats is one measured run of a serve row.
type serveStats struct {
	Load    float64 `json:"load"`            // 1-minute load average at the run's start
	Client  string  `json:"client"`          // curl, or Go net/http
	Clients int     `json:"clients"`         // at once
	Items   int     `json:"items"`           // blobs or manifests fetched, images pushed
	Bytes   int64   `json:"bytes,omitempty"` // body bytes fetched
	Seconds float64 `json:"seconds"`         // the measured part, wall time
	// Per request (blob and manifest GETs), per image (push), per PUT
	// manifest (the prune row), in ms.
	P50Ms float64 `json:"p50_ms,omitempty"`
	P99Ms float64 `json:"p99_ms,omitempty"`
	MaxMs float64 `json:"max_ms,omitempty"`
	// The prune row: the prune as the server's metrics report it (its
	// duration, the images it removed, the prune runs in the window), and
	// the PUT manifests that overlapped it.
	PruneMs     float64 `json:"prune_ms,omitempty"`
	Pruned      int     `json:"pruned,omitempty"`
	Prunes      int     `json:"prunes,omitempty"`
	During      int     `json:"during,omitempty"`
	DuringP50Ms float64 `json:"during_p50_ms,omitempty"`
	DuringP99Ms float64 `json:"during_p99_ms,omitempty"`
	DuringMaxMs float64 `json:"during_max_ms,omitempty"`
}

// serveFlags are the maintenance flags of an ocistore server.
type serveFlags struct {
	maxSize       int64
	pruneInterval time.Duration
}

// startOcistore starts the ocistore server on dir: the CLI, or with
// r.profDir the in-process server of srvproc.go.
func (r *runner) startOcistore(cli, dir, logPath string, f serveFlags) (*srv, error) {
	if r.profDir != "" {
		var extra []string
		if f.maxSize > 0 {
			extra = append(extra, "-max-size", fmt.Sprint(f.maxSize), "-prune-interval", f.pruneInterval.String())
		}
		return startInproc(r.self, dir, logPath, extra...)
	}
	var extra []string
	if f.maxSize > 0 {
		extra = append(extra, "--max-size", fmt.Sprint(f.maxSize), "--prune-interval", f.pruneInterval.String())
	}
	return startServe(cli, dir, logPath, extra...)
}

// profile starts a CPU profile of the in-process server s for a row's
// first run (bench serve -profile), and returns what stops it.
func (r *runner) profile(s *srv, row string, run int) func() {
	if r.profDir == "" || s.name != pServeInproc || run != 1 {
		return func() {}
	}
	file := filepath.Join(r.profDir, row+".pprof")
	c := httpClient(1)
	resp, err := c.Get(s.base + "/bench/cpuprofile/start?file=" + file)
	if err != nil || resp.StatusCode != http.StatusOK {
		r.logf("profile %s: not started: %v %v", row, err, resp)
		return func() {}
	}
	resp.Body.Close()
	return func() {
		if resp, err := c.Get(s.base + "/bench/cpuprofile/stop"); err == nil {
			resp.Body.Close()
		}
		r.logf("profile of %s: %s", row, file)
	}
}

// serveRun records one measured run of a serve row.
func (r *runner) serveRun(scenario, peerName string, n, run int, st *serveStats, err error) {
	rr := runResult{Scenario: scenario, Peer: peerName, N: n, Run: run, WallMs: st.Seconds * 1000, Serve: st}
	rr.Res.TotalMs = st.Seconds * 1000
	status := "ok"
	if err != nil {
		rr.Res.fail(err)
		status = err.Error()
	}
	r.results = append(r.results, rr)
	r.loads = append(r.loads, st.Load)
	r.logf("%-22s %-16s N=%-6d run %d: %.3f s, p50 %.2f p99 %.2f max %.2f ms, load %.2f: %s", scenario, peerName, n, run, st.Seconds, st.P50Ms, st.P99Ms, st.MaxMs, st.Load, trunc(status, 200))
}

// serving runs the serve rows named in rows.
func (r *runner) serving(rows map[string]bool) error {
	cli, err := r.cli()
	if err != nil {
		return err
	}
	if rows[rowBlob] {
		if err := r.serveBlobs(cli); err != nil {
			return fmt.Errorf("serve, blob GETs: %w", err)
		}
	}
	if rows[rowTags] {
		if err := r.serveTags(cli); err != nil {
			return fmt.Errorf("serve, manifest GETs: %w", err)
		}
	}
	if rows[rowPush] {
		if err := r.servePush(cli); err != nil {
			return fmt.Errorf("serve, push: %w", err)
		}
	}
	if rows[rowPrune] {
		if err := r.servePrune(cli); err != nil {
			return fmt.Errorf("serve, PUT during a prune: %w", err)
		}
	}
	return nil
}

// waitIO waits for quiet I/O (ioQuiet) before a run of an fsync-bound row.
func (r *runner) waitIO(row string) {
	if r.noWait {
		return
	}
	waited, quiet := ioQuiet()
	r.ioWaits = append(r.ioWaits, ms(waited))
	if !quiet {
		r.ioNoisy++
		r.logf("%s: the I/O still busy after %s", row, waited.Round(time.Millisecond))
	}
}

// rotate returns xs rotated left by k.
func rotate[T any](xs []T, k int) []T {
	k %= len(xs)
	return append(append([]T(nil), xs[k:]...), xs[:k]...)
}

// warmFile reads a file once, so that its pages are in the page cache.
func warmFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
	return err
}

// regBlobPath is where docker-registry keeps a blob's bytes.
func regBlobPath(storage string, d digest.Digest) string {
	h := d.Encoded()
	return filepath.Join(storage, "docker", "registry", "v2", "blobs", "sha256", h[:2], h, "data")
}

// --- blob GETs

// serveBlobs seeds ocistore serve and docker-registry with one large blob
// and many small ones (pushed over HTTP, with an image naming each set),
// starts http.FileServer on the ocistore layout, warms the page cache,
// checks every blob through every server, then measures.
func (r *runner) serveBlobs(cli string) error {
	sz := r.plan.Serve
	base := filepath.Join(r.work, "srv-blobs")
	r.remove(base)
	layoutDir, regDir := filepath.Join(base, "layout"), filepath.Join(base, "registry")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command(cli, "-l", layoutDir, "init").CombinedOutput(); err != nil {
		return fmt.Errorf("ocistore init: %v: %s", err, out)
	}
	defer r.remove(base)
	ours, err := r.startOcistore(cli, layoutDir, filepath.Join(base, "serve.log"), serveFlags{})
	if err != nil {
		return err
	}
	defer ours.stop()
	reg, err := startRegistrySrv(regDir)
	if err != nil {
		return err
	}
	defer reg.stop()

	const bigSeed = 77
	t0 := time.Now()
	bigD, err := streamDigest(sz.BlobSize, bigSeed)
	if err != nil {
		return err
	}
	big := digest.Digest(bigD)
	rng := mrand.New(mrand.NewPCG(uint64(sz.SmallBlobs), 16))
	smalls := make([][]byte, sz.SmallBlobs)
	var smallBytes int64
	for i := range smalls {
		b := make([]byte, sz.SmallMin+rng.IntN(sz.SmallMax-sz.SmallMin+1))
		fillRandom(rng, b)
		smalls[i] = b
		smallBytes += int64(len(b))
	}
	for _, s := range []*srv{ours, reg} {
		t1 := time.Now()
		if err := seedBlobs(s.base, big, sz.BlobSize, bigSeed, smalls); err != nil {
			return fmt.Errorf("seed %s: %w", s.name, err)
		}
		r.logf("%s: pushed a %d MiB blob and %d small blobs (%d bytes) in %s", s.name, sz.BlobSize>>20, len(smalls), smallBytes, time.Since(t1).Round(time.Millisecond))
	}
	fsrv, err := startFileServer(r.self, layoutDir, filepath.Join(base, "fileserver.log"))
	if err != nil {
		return err
	}
	defer fsrv.stop()
	servers := []*srv{ours, reg, fsrv}
	blobURL := func(s *srv, d digest.Digest) string {
		if s.name == pFileServer {
			return s.base + "/blobs/sha256/" + d.Encoded()
		}
		return s.base + "/v2/" + blobRepo + "/blobs/" + d.String()
	}
	// The page cache warm: every file read once, then every blob fetched
	// and checked (its digest) through every server, untimed.
	files := []string{filepath.Join(layoutDir, "blobs", "sha256", big.Encoded()), regBlobPath(filepath.Join(regDir, "storage"), big)}
	smallDs := make([]digest.Digest, len(smalls))
	for i, b := range smalls {
		smallDs[i] = digest.FromBytes(b)
		files = append(files, filepath.Join(layoutDir, "blobs", "sha256", smallDs[i].Encoded()), regBlobPath(filepath.Join(regDir, "storage"), smallDs[i]))
	}
	for _, f := range files {
		if err := warmFile(f); err != nil {
			return fmt.Errorf("warm the page cache: %w", err)
		}
	}
	c := httpClient(sz.SmallClients)
	for _, s := range servers {
		if err := getDigest(c, blobURL(s, big), big); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		for _, d := range smallDs {
			if err := getDigest(c, blobURL(s, d), d); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}
	c.CloseIdleConnections()
	r.logf("serve blobs: seeded, warmed and checked through %d servers in %s", len(servers), time.Since(t0).Round(time.Millisecond))

	ctx := context.Background()
	for run := 1; run <= sz.BlobRuns; run++ {
		for _, s := range rotate(servers, run-1) {
			st := &serveStats{Load: loadavg(), Client: "curl", Clients: 1, Items: 1}
			stop := r.profile(s, scSrvBlobBig, run)
			d, n, err := curlGet(ctx, blobURL(s, big))
			stop()
			st.Seconds, st.Bytes = d.Seconds(), n
			if err == nil && n != sz.BlobSize {
				err = fmt.Errorf("curl got %d bytes, want %d", n, sz.BlobSize)
			}
			r.serveRun(scSrvBlobBig, s.name, 1, run, st, err)
		}
	}
	for run := 1; run <= sz.BlobRuns; run++ {
		perm := mrand.New(mrand.NewPCG(uint64(run), 3)).Perm(len(smalls))
		urls := map[string][]string{}
		sizes := make([]int64, len(perm))
		for i, j := range perm {
			sizes[i] = int64(len(smalls[j]))
		}
		for _, s := range servers {
			for _, j := range perm {
				urls[s.name] = append(urls[s.name], blobURL(s, smallDs[j]))
			}
		}
		for _, s := range rotate(servers, run-1) {
			st := &serveStats{Load: loadavg(), Client: "Go net/http", Clients: sz.SmallClients, Items: len(perm)}
			stop := r.profile(s, scSrvBlobSmall, run)
			wall, lat, n, err := fetchMany(urls[s.name], sizes, sz.SmallClients, "")
			stop()
			st.Seconds, st.Bytes = wall.Seconds(), n
			st.P50Ms, st.P99Ms, st.MaxMs = lat.quantile(0.5), lat.quantile(0.99), dmax(lat)
			r.serveRun(scSrvBlobSmall, s.name, len(perm), run, st, err)
		}
	}
	return nil
}

// seedBlobs pushes the large blob (streamed from the generator) and the
// small ones (8 at a time) to the registry at base, and an image naming
// each set (blobRepo:big, blobRepo:small), so that they are referenced as
// a registry's blobs are.
func seedBlobs(base string, big digest.Digest, bigSize int64, bigSeed uint64, smalls [][]byte) error {
	p := &pusher{c: httpClient(8), base: base}
	defer p.c.CloseIdleConnections()
	if err := p.blob(blobRepo, big, bigSize, func() io.Reader { return newBlobStream(bigSize, bigSeed) }); err != nil {
		return err
	}
	descs := make([]ocispec.Descriptor, len(smalls))
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(smalls) || errs[w] != nil {
					return
				}
				descs[i], errs[w] = p.bytesBlob(blobRepo, smalls[i])
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	for _, img := range []struct {
		tag    string
		layers []ocispec.Descriptor
	}{{"big", []ocispec.Descriptor{{Digest: big, Size: bigSize}}}, {"small", descs}} {
		cfg, err := p.bytesBlob(blobRepo, []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"n":%q}`, img.tag)))
		if err != nil {
			return err
		}
		if err := p.manifest(blobRepo, img.tag, imageManifest(cfg, img.layers)); err != nil {
			return err
		}
	}
	return nil
}

// fetchMany GETs urls (sizes[i] bytes each) with clients goroutines over
// one client of as many connections, each taking the next URL; it returns
// the wall time, each request's latency in ms and the bytes received.
func fetchMany(urls []string, sizes []int64, clients int, accept string) (time.Duration, dist, int64, error) {
	c := httpClient(clients)
	defer c.CloseIdleConnections()
	var next atomic.Int64
	lats := make([]dist, clients)
	got := make([]int64, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(urls) {
					return
				}
				d, n, _, err := getTimed(c, urls[i], accept)
				if err == nil && sizes != nil && n != sizes[i] {
					err = fmt.Errorf("GET %s: %d bytes, want %d", urls[i], n, sizes[i])
				}
				if err != nil {
					if errs[w] == nil {
						errs[w] = err
					}
					continue
				}
				lats[w] = append(lats[w], ms(d))
				got[w] += n
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0)
	var all dist
	var total int64
	for w := range clients {
		all = append(all, lats[w]...)
		total += got[w]
	}
	for _, err := range errs {
		if err != nil {
			return wall, all, total, err
		}
	}
	return wall, all, total, nil
}

// --- manifest GETs by tag

// serveTemplate generates a layout of n images (the benchmark's generator)
// tagged repo:img0…, and for ocistore adopts it (one open, untimed).
func (r *runner) serveTemplate(dir string, n int, repo string) error {
	r.remove(dir)
	t0 := time.Now()
	st, err := generate(dir, genSpec{Images: n, Seed: uint64(n)})
	if err != nil {
		return err
	}
	if err := renameRefs(dir, repo); err != nil {
		return err
	}
	r.logf("generated %d images tagged %s:img… (%d blobs, %d bytes) in %s", st.Images, repo, st.Blobs, st.Bytes, time.Since(t0).Round(time.Millisecond))
	return nil
}

// adopt opens a layout once with ocistore (its journal built), untimed.
func (r *runner) adopt(dir string) error {
	t0 := time.Now()
	s, err := store.Open(context.Background(), dir, &store.Options{NoCreate: true})
	if err != nil {
		return fmt.Errorf("adopt %s: %w", dir, err)
	}
	if err := s.Close(); err != nil {
		return err
	}
	r.logf("adopted %s in %s", dir, time.Since(t0).Round(time.Millisecond))
	return nil
}

// serveTags loads both servers with the same tagged images: a generated
// layout for ocistore, docker-registry's storage written from it; then
// one client GETs every tag's manifest, one at a time, in a shuffled
// order, per run and server.
func (r *runner) serveTags(cli string) error {
	sz := r.plan.Serve
	base := filepath.Join(r.work, "srv-tags")
	r.remove(base)
	defer r.remove(base)
	layoutDir, regDir := filepath.Join(base, "layout"), filepath.Join(base, "registry")
	if err := r.serveTemplate(layoutDir, sz.Tags, tagsRepo); err != nil {
		return err
	}
	t0 := time.Now()
	want, err := registryStorage(layoutDir, filepath.Join(regDir, "storage"), tagsRepo, 4)
	if err != nil {
		return fmt.Errorf("write docker-registry's storage: %w", err)
	}
	syncfs(base)
	r.logf("wrote docker-registry's storage for %d tags in %s", len(want), time.Since(t0).Round(time.Millisecond))
	if err := r.adopt(layoutDir); err != nil {
		return err
	}
	ours, err := r.startOcistore(cli, layoutDir, filepath.Join(base, "serve.log"), serveFlags{})
	if err != nil {
		return err
	}
	defer ours.stop()
	reg, err := startRegistrySrv(regDir)
	if err != nil {
		return err
	}
	defer reg.stop()
	servers := []*srv{ours, reg}
	tags := make([]string, 0, len(want))
	for t := range want {
		tags = append(tags, t)
	}
	sort.Strings(tags)
	// Every tag listed by both, and every manifest answered with its
	// digest (untimed: this pass also warms both).
	c := httpClient(1)
	for _, s := range servers {
		got, err := tagsList(c, s.base, tagsRepo)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		if len(got) != len(want) {
			return fmt.Errorf("%s lists %d tags of %s, want %d", s.name, len(got), tagsRepo, len(want))
		}
		for _, t := range tags {
			if err := getManifest(c, s.base, t, want[t]); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}
	c.CloseIdleConnections()
	for run := 1; run <= sz.Runs; run++ {
		perm := mrand.New(mrand.NewPCG(uint64(run), 5)).Perm(len(tags))
		for _, s := range rotate(servers, run-1) {
			st := &serveStats{Load: loadavg(), Client: "Go net/http", Clients: 1, Items: len(perm)}
			c := httpClient(1)
			var lat dist
			var firstErr error
			stop := r.profile(s, scSrvTags, run)
			t1 := time.Now()
			for _, j := range perm {
				t := tags[j]
				d, _, h, err := getTimed(c, s.base+"/v2/"+tagsRepo+"/manifests/"+t, manifestAccept)
				if err == nil && h.Get("Docker-Content-Digest") != want[t].String() {
					err = fmt.Errorf("%s: Docker-Content-Digest %q, want %s", t, h.Get("Docker-Content-Digest"), want[t])
				}
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				lat = append(lat, ms(d))
			}
			st.Seconds = time.Since(t1).Seconds()
			stop()
			c.CloseIdleConnections()
			st.P50Ms, st.P99Ms, st.MaxMs = lat.quantile(0.5), lat.quantile(0.99), dmax(lat)
			r.serveRun(scSrvTags, s.name, len(tags), run, st, firstErr)
		}
	}
	return nil
}

// getManifest GETs repo tagsRepo's tag and checks its digest (header and
// body).
func getManifest(c *http.Client, base, tag string, want digest.Digest) error {
	req, err := http.NewRequest(http.MethodGet, base+"/v2/"+tagsRepo+"/manifests/"+tag, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET manifest %s: %s", tag, resp.Status)
	}
	if got := digest.FromBytes(b); got != want || resp.Header.Get("Docker-Content-Digest") != want.String() {
		return fmt.Errorf("GET manifest %s: body %s, header %q, want %s", tag, got, resp.Header.Get("Docker-Content-Digest"), want)
	}
	return nil
}

// --- push

// pushImage is an image to push: a config and 2 or 3 layers.
type pushImage struct {
	tag    string
	cfg    []byte
	layers [][]byte
}

// pushImages are n distinct small images: a config, and 2 or 3 layers of
// 4 to 16 KiB of random bytes each.
func pushImages(n int) []pushImage {
	rng := mrand.New(mrand.NewPCG(uint64(n), 8))
	out := make([]pushImage, n)
	for i := range out {
		im := pushImage{tag: fmt.Sprintf("i%d", i), cfg: []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"n":%d}`, i))}
		for range 2 + i%2 {
			b := make([]byte, 4<<10+rng.IntN(12<<10+1))
			fillRandom(rng, b)
			im.layers = append(im.layers, b)
		}
		out[i] = im
	}
	return out
}

// push pushes im to repo (config, layers, manifest) and returns the time
// of its PUT manifest.
func (p *pusher) push(repo string, im pushImage) (time.Duration, error) {
	cfg, err := p.bytesBlob(repo, im.cfg)
	if err != nil {
		return 0, err
	}
	var ls []ocispec.Descriptor
	for _, l := range im.layers {
		d, err := p.bytesBlob(repo, l)
		if err != nil {
			return 0, err
		}
		ls = append(ls, d)
	}
	m := imageManifest(cfg, ls)
	t0 := time.Now()
	err = p.manifest(repo, im.tag, m)
	return time.Since(t0), err
}

// servePush pushes the same images to an empty ocistore serve and an empty
// docker-registry, with PushClients clients, per run and server.
func (r *runner) servePush(cli string) error {
	sz := r.plan.Serve
	base := filepath.Join(r.work, "srv-push")
	r.remove(base)
	defer r.remove(base)
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	images := pushImages(sz.PushImages)
	for run := 1; run <= sz.Runs; run++ {
		for _, name := range rotate([]string{pServe, pRegistry}, run-1) {
			dir := filepath.Join(base, "server")
			r.remove(dir)
			var s *srv
			var err error
			if name == pServe {
				if out, err := exec.Command(cli, "-l", dir, "init").CombinedOutput(); err != nil {
					return fmt.Errorf("ocistore init: %v: %s", err, out)
				}
				s, err = r.startOcistore(cli, dir, filepath.Join(base, "serve.log"), serveFlags{})
			} else {
				s, err = startRegistrySrv(dir)
			}
			if err != nil {
				return err
			}
			syncfs(base)
			r.waitIO("push")
			st := &serveStats{Load: loadavg(), Client: "Go net/http", Clients: sz.PushClients, Items: len(images)}
			stop := r.profile(s, scSrvPush, run)
			wall, lat, err := pushAll(s.base, images, sz.PushClients)
			stop()
			st.Seconds = wall.Seconds()
			st.P50Ms, st.P99Ms, st.MaxMs = lat.quantile(0.5), lat.quantile(0.99), dmax(lat)
			if err == nil {
				c := httpClient(1)
				got, lerr := tagsList(c, s.base, pushRepo)
				c.CloseIdleConnections()
				if lerr != nil {
					err = lerr
				} else if len(got) != len(images) {
					err = fmt.Errorf("%d tags listed after the push, want %d", len(got), len(images))
				}
			}
			s.stop()
			if err == nil && s.name != pRegistry {
				if out, ferr := exec.Command(cli, "-l", dir, "fsck").CombinedOutput(); ferr != nil {
					err = fmt.Errorf("fsck after the push: %v: %s", ferr, lastLine(string(out)))
				}
			}
			r.serveRun(scSrvPush, s.name, len(images), run, st, err)
			r.remove(dir)
		}
	}
	return nil
}

// pushAll pushes images to pushRepo with clients clients, each taking the
// next image; it returns the wall time and each image's time in ms.
func pushAll(base string, images []pushImage, clients int) (time.Duration, dist, error) {
	p := &pusher{c: httpClient(clients), base: base}
	defer p.c.CloseIdleConnections()
	var next atomic.Int64
	lats := make([]dist, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(images) || errs[w] != nil {
					return
				}
				t1 := time.Now()
				if _, err := p.push(pushRepo, images[i]); err != nil {
					errs[w] = err
					return
				}
				lats[w] = append(lats[w], ms(time.Since(t1)))
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0)
	var all dist
	for _, l := range lats {
		all = append(all, l...)
	}
	for _, err := range errs {
		if err != nil {
			return wall, all, err
		}
	}
	return wall, all, nil
}

// --- PUT manifest during a prune

// The loop of the prune row pushes new images that share one config and
// 3 layers (loopLayer random bytes each), pushed once: each new image is a
// new manifest (an annotation numbers it) whose blobs the registry has, so
// that the client's HEADs find them and its only write is the PUT
// manifest, the request the row times. Every loop manifest has the same
// size: the budget (loopBudget) depends on it.
type loopImages struct {
	cfg    []byte
	layers [][]byte
	descs  []ocispec.Descriptor // config, then layers
}

func newLoopImages() *loopImages {
	rng := mrand.New(mrand.NewPCG(7, 7))
	li := &loopImages{cfg: []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"n":"loop"}`)}
	li.descs = append(li.descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(li.cfg), Size: int64(len(li.cfg))})
	for range 3 {
		b := make([]byte, loopLayer)
		fillRandom(rng, b)
		li.layers = append(li.layers, b)
		li.descs = append(li.descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(b), Size: int64(len(b))})
	}
	return li
}

// manifest is loop image i's manifest, and its tag.
func (li *loopImages) manifest(i int) ([]byte, string) {
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: li.descs[0], Layers: li.descs[1:],
		Annotations: map[string]string{"n": fmt.Sprintf("%012d", i)}}
	m.SchemaVersion = 2
	b, _ := json.Marshal(m)
	return b, fmt.Sprintf("t%d", i%loopTags)
}

// loopBudget is the --max-size of the prune row: the bytes of the loop's
// blobs and of loopTags loop manifests, plus less than any generated
// image's own blobs. A prune with this budget removes the untagged loop
// manifests (each PUT that moves a tag leaves the manifest it replaces as
// an untagged entry, and a prune removes those first), then every
// generated image (all used before the loop's), and none of the tagged
// loop images.
func (li *loopImages) budget() int64 {
	var n int64
	for _, d := range li.descs {
		n += d.Size
	}
	m, _ := li.manifest(0)
	return n + int64(loopTags)*int64(len(m)) + 256
}

// putSample is one PUT manifest of the loop: when it started and ended,
// from the loop's start.
type putSample struct{ start, end time.Duration }

// servePrune: ocistore serve on a copy of an adopted layout of
// PruneImages images (oldRepo), with --max-size at the loop's budget and
// --prune-interval PruneInterval. A client pushes the loop's blobs and
// loopTags images first, then new images in a loop, timing each PUT
// manifest, while the server's /metrics is polled for the prune; the loop
// ends 2 s after the prune.
func (r *runner) servePrune(cli string) error {
	sz := r.plan.Serve
	base := filepath.Join(r.work, "srv-prune")
	r.remove(base)
	defer r.remove(base)
	tmpl := filepath.Join(base, "template")
	if err := r.serveTemplate(tmpl, sz.PruneImages, oldRepo); err != nil {
		return err
	}
	if err := r.adopt(tmpl); err != nil {
		return err
	}
	li := newLoopImages()
	for run := 1; run <= sz.Runs; run++ {
		dir := filepath.Join(base, "run")
		r.remove(dir)
		if err := copyLayout(tmpl, dir); err != nil {
			return err
		}
		if err := settle(dir, time.Now()); err != nil {
			return err
		}
		r.waitIO("prune")
		started := time.Now()
		s, err := r.startOcistore(cli, dir, filepath.Join(base, "serve.log"), serveFlags{maxSize: li.budget(), pruneInterval: sz.PruneInterval})
		if err != nil {
			return err
		}
		st := &serveStats{Load: loadavg(), Client: "Go net/http", Clients: 1}
		stop := r.profile(s, scSrvPrune, run)
		err = pruneLoop(s, li, st, started, sz)
		stop()
		if err == nil {
			err = pruneCheck(s.base, sz.PruneImages, st)
		}
		s.stop()
		r.serveRun(scSrvPrune, s.name, sz.PruneImages, run, st, err)
		r.remove(dir)
	}
	return nil
}

// pruneLoop pushes the loop's blobs and fills its tags, then pushes new
// images until 2 s after the prune, and fills st.
func pruneLoop(s *srv, li *loopImages, st *serveStats, started time.Time, sz serveSizes) error {
	p := &pusher{c: httpClient(1), base: s.base}
	defer p.c.CloseIdleConnections()
	push := func(i int) (time.Duration, error) {
		for j, d := range li.descs {
			b := li.cfg
			if j > 0 {
				b = li.layers[j-1]
			}
			if err := p.blob(loopRepo, d.Digest, d.Size, func() io.Reader { return bytes.NewReader(b) }); err != nil {
				return 0, err
			}
		}
		m, tag := li.manifest(i)
		t0 := time.Now()
		err := p.manifest(loopRepo, tag, m)
		return time.Since(t0), err
	}
	i := 0
	for ; i < loopTags; i++ {
		if _, err := push(i); err != nil {
			return fmt.Errorf("fill: %w", err)
		}
	}
	if el := time.Since(started); el > sz.PruneInterval*3/4 {
		return fmt.Errorf("the fill ended %s after the server's start, too close to the prune (--prune-interval %s)", el.Round(time.Millisecond), sz.PruneInterval)
	}
	// The prune, seen from /metrics: polled every 20 ms.
	type seen struct {
		at     time.Duration // since the loop's start
		dur    float64       // s, the prune's own (sum of the histogram)
		runs   int
		remove int
	}
	t0 := time.Now()
	var mu sync.Mutex
	var first *seen
	var last seen
	done := make(chan struct{})
	pollErr := make(chan error, 1)
	go func() {
		c := httpClient(1)
		defer c.CloseIdleConnections()
		for {
			select {
			case <-done:
				pollErr <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			m, err := metricsOf(c, s.base)
			if err != nil {
				pollErr <- err
				return
			}
			runs := int(metricValue(m, `ocistore_maintenance_runs_total{kind="prune",result="ok"}`) + metricValue(m, `ocistore_maintenance_runs_total{kind="prune",result="error"}`))
			if runs == 0 {
				continue
			}
			x := seen{at: time.Since(t0), dur: metricValue(m, `ocistore_maintenance_duration_seconds_sum{kind="prune"}`), runs: runs,
				remove: int(metricValue(m, `ocistore_maintenance_removed_items_total{kind="prune"}`))}
			mu.Lock()
			if first == nil {
				f := x
				first = &f
			}
			if last.remove < sz.PruneImages {
				last = x // until the batches removed the generated images
			}
			mu.Unlock()
		}
	}()
	var samples []putSample
	deadline := sz.PruneInterval*3 + 2*time.Minute
	var loopErr error
	for {
		mu.Lock()
		f, l := first, last
		mu.Unlock()
		el := time.Since(t0)
		// The server prunes in batches (a transaction of at most 500
		// images each): the prune is over once they removed the
		// generated images.
		if f != nil && l.remove >= sz.PruneImages && el > l.at+2*time.Second {
			break
		}
		if el > deadline {
			loopErr = fmt.Errorf("no prune seen in %s", deadline)
			break
		}
		d, err := push(i)
		i++
		if err != nil {
			loopErr = err
			break
		}
		end := time.Since(t0)
		samples = append(samples, putSample{end - d, end})
	}
	st.Seconds = time.Since(t0).Seconds()
	close(done)
	if err := <-pollErr; err != nil && loopErr == nil {
		loopErr = fmt.Errorf("poll /metrics: %w", err)
	}
	var all dist
	for _, x := range samples {
		all = append(all, ms(x.end-x.start))
	}
	st.Items = len(samples)
	st.P50Ms, st.P99Ms, st.MaxMs = all.quantile(0.5), all.quantile(0.99), dmax(all)
	mu.Lock()
	f, l := first, last
	mu.Unlock()
	if f == nil {
		return loopErr
	}
	// The prune's batches ran from [f.at - f.dur - 20 ms] (the first, seen
	// at most one poll after its end) to l.at (the last seen, when the
	// batches had removed the generated images). PruneMs is the batches'
	// own time, summed.
	st.PruneMs, st.Pruned, st.Prunes = l.dur*1000, l.remove, l.runs
	from := f.at - time.Duration(f.dur*float64(time.Second)) - 20*time.Millisecond
	var during dist
	for _, x := range samples {
		if x.start < l.at && x.end > from {
			during = append(during, ms(x.end-x.start))
		}
	}
	st.During = len(during)
	st.DuringP50Ms, st.DuringP99Ms, st.DuringMaxMs = during.quantile(0.5), during.quantile(0.99), dmax(during)
	if len(during) == 0 && loopErr == nil {
		loopErr = fmt.Errorf("no PUT manifest overlapped the prune (%.0f ms, seen %s after the loop's start)", l.dur*1000, f.at.Round(time.Millisecond))
	}
	return loopErr
}

// dmax is the largest sample, NaN for none.
func dmax(d dist) float64 {
	if len(d) == 0 {
		return math.NaN()
	}
	return d.max()
}

// pruneCheck checks what the prune left: no tag of oldRepo, every loop
// tag, and at least the generated images removed (the untagged loop
// manifests go too).
func pruneCheck(base string, want int, st *serveStats) error {
	c := httpClient(1)
	defer c.CloseIdleConnections()
	old, err := tagsList(c, base, oldRepo)
	if err != nil {
		return err
	}
	loop, err := tagsList(c, base, loopRepo)
	if err != nil {
		return err
	}
	if len(old) != 0 || len(loop) != loopTags || st.Pruned < want {
		return fmt.Errorf("after the prune: %d tags of %s left (want 0), %d of %s (want %d), %d images removed (want at least %d)", len(old), oldRepo, len(loop), loopRepo, loopTags, st.Pruned, want)
	}
	return nil
}

// --- the report

// serveOurs is the ocistore peer of the run's serve rows: the CLI, or the
// in-process server of a profiled run.
func (r *runner) serveOurs() string {
	for _, x := range r.results {
		if x.Peer == pServeInproc && rowOf(x.Scenario) != "" {
			return pServeInproc
		}
	}
	return pServe
}

// serveMedian is the median over a cell's completed runs of f.
func (r *runner) serveMedian(scenario, peerName string, f func(*serveStats) float64) float64 {
	var d dist
	for _, x := range summarize(r.sel(scenario, peerName, -1)).ok {
		if x.Serve != nil {
			d = append(d, f(x.Serve))
		}
	}
	return d.median()
}

func (r *runner) serveSpread(scenario, peerName string, f func(*serveStats) float64) string {
	var d dist
	for _, x := range summarize(r.sel(scenario, peerName, -1)).ok {
		if x.Serve != nil {
			d = append(d, f(x.Serve))
		}
	}
	return d.spread()
}

func mbps(s *serveStats) float64 {
	if s.Seconds == 0 {
		return math.NaN()
	}
	return float64(s.Bytes) / 1e6 / s.Seconds
}
func perSecond(s *serveStats) float64 {
	if s.Seconds == 0 {
		return math.NaN()
	}
	return float64(s.Items) / s.Seconds
}
func seconds(s *serveStats) float64     { return s.Seconds }
func p50(s *serveStats) float64         { return s.P50Ms }
func p99(s *serveStats) float64         { return s.P99Ms }
func maxMs(s *serveStats) float64       { return s.MaxMs }
func duringP99(s *serveStats) float64   { return s.DuringP99Ms }
func duringMax(s *serveStats) float64   { return s.DuringMaxMs }
func pruneS(s *serveStats) float64      { return s.PruneMs / 1000 }
func loadOf(s *serveStats) float64      { return s.Load }
func duringCount(s *serveStats) float64 { return float64(s.During) }

// serveLoads words the load averages at the starts of a row's runs.
func (r *runner) serveLoads(scenarios ...string) string {
	var d dist
	for _, x := range r.results {
		for _, sc := range scenarios {
			if x.Scenario == sc && x.Serve != nil {
				d = append(d, x.Serve.Load)
			}
		}
	}
	if len(d) == 0 {
		return "—"
	}
	return fmt.Sprintf("median %.2f, max %.2f on %d cores", d.median(), d.max(), runtime.NumCPU())
}

// atSize says whether the plan's serve sizes are the targets'.
func (r *runner) serveAtSize(row string) bool {
	s := r.plan.Serve
	switch row {
	case scSrvBlobBig:
		return s.BlobSize == 1<<30
	case scSrvBlobSmall:
		return s.SmallBlobs == 1000 && s.SmallClients == 16
	case scSrvTags:
		return s.Tags == 20000
	case scSrvPush:
		return s.PushImages == 500 && s.PushClients == 8
	case scSrvPrune:
		return s.PruneImages == 10000
	}
	return false
}

// serveWhat names a row's workload.
func (r *runner) serveWhat(scenario string) string {
	s := r.plan.Serve
	switch scenario {
	case scSrvBlobBig:
		if s.BlobSize >= 1<<30 {
			return fmt.Sprintf("one %d GiB blob", s.BlobSize>>30)
		}
		return fmt.Sprintf("one %d MiB blob", s.BlobSize>>20)
	case scSrvBlobSmall:
		return fmt.Sprintf("%d small blobs (%d–%d KiB) by %d clients", s.SmallBlobs, s.SmallMin>>10, s.SmallMax>>10, s.SmallClients)
	case scSrvTags:
		return fmt.Sprintf("manifest GET by tag at %d tags", s.Tags)
	case scSrvPush:
		return fmt.Sprintf("push of %d small images by %d clients", s.PushImages, s.PushClients)
	case scSrvPrune:
		return fmt.Sprintf("PUT manifest during a prune of %d images", s.PruneImages)
	}
	return scenario
}

// serveVerdict is a target row's verdict: measured at the target's size,
// or what the smaller size says.
func (r *runner) serveVerdict(verdict func(ok, measured bool) string, scenario string, ok, measured bool) string {
	if !measured {
		return "not measured in this run"
	}
	at := r.serveAtSize(scenario)
	v := verdict(ok, at)
	if !at {
		v += fmt.Sprintf(" (at %s: %s)", r.serveWhat(scenario), map[bool]string{true: "met", false: "missed"}[ok])
	}
	return v
}

// blobTarget is the blob GET target: at least docker-registry's throughput
// and 80% of http.FileServer's (MB/s medians).
func (r *runner) blobTarget(scenario string) (ours, reg, fsrv float64, ok, measured bool) {
	us := r.serveOurs()
	ours, reg, fsrv = r.serveMedian(scenario, us, mbps), r.serveMedian(scenario, pRegistry, mbps), r.serveMedian(scenario, pFileServer, mbps)
	measured = !math.IsNaN(ours) && !math.IsNaN(reg) && !math.IsNaN(fsrv)
	ok = measured && ours >= reg && ours >= targetFileServerShare*fsrv
	return
}

// serveTargets are section 10's rows of the targets table.
func (r *runner) serveTargets(verdict func(ok, measured bool) string) [][3]string {
	var rows [][3]string
	us := r.serveOurs()
	for _, c := range []struct{ scenario, label string }{
		{scSrvBlobBig, "blob GET of a 1 GiB blob (curl): at least docker-registry's throughput, and ≥80% of http.FileServer's on the same file"},
		{scSrvBlobSmall, "blob GET of 1,000 small blobs (16–64 KiB) by 16 clients: at least docker-registry's throughput, and ≥80% of http.FileServer's"},
	} {
		ours, reg, fsrv, ok, m := r.blobTarget(c.scenario)
		measured := "—"
		if m {
			measured = fmt.Sprintf("%s MB/s: %.3g× docker-registry (%s MB/s), %s of http.FileServer (%s MB/s)", fmtNum(ours), ours/reg, fmtNum(reg), pctStr(100*ours/fsrv), fmtNum(fsrv))
		}
		rows = append(rows, [3]string{c.label, measured, r.serveVerdict(verdict, c.scenario, ok, m)})
	}
	{
		o50, o99 := r.serveMedian(scSrvTags, us, p50), r.serveMedian(scSrvTags, us, p99)
		g50, g99 := r.serveMedian(scSrvTags, pRegistry, p50), r.serveMedian(scSrvTags, pRegistry, p99)
		m := !math.IsNaN(o50) && !math.IsNaN(g50)
		measured := "—"
		if m {
			measured = fmt.Sprintf("p50 %s ms vs %s ms, p99 %s ms vs %s ms (ocistore vs docker-registry)", fmtNum(o50), fmtNum(g50), fmtNum(o99), fmtNum(g99))
		}
		rows = append(rows, [3]string{"manifest GET by tag at 20,000 tags: p50 and p99 ≤ docker-registry's", measured, r.serveVerdict(verdict, scSrvTags, o50 <= g50 && o99 <= g99, m)})
	}
	{
		ours, reg := r.serveMedian(scSrvPush, us, perSecond), r.serveMedian(scSrvPush, pRegistry, perSecond)
		m := !math.IsNaN(ours) && !math.IsNaN(reg)
		measured := "—"
		if m {
			measured = fmt.Sprintf("%s images/s vs %s (%.3g×), every fsync in place", fmtNum(ours), fmtNum(reg), ours/reg)
		}
		rows = append(rows, [3]string{"push of 500 small images by 8 clients: at least docker-registry's images/s", measured, r.serveVerdict(verdict, scSrvPush, ours >= reg, m)})
	}
	{
		dp99 := r.serveMedian(scSrvPrune, us, duringP99)
		m := !math.IsNaN(dp99)
		measured := "—"
		if m {
			measured = fmt.Sprintf("%s ms (PUTs overlapping the prune, median of runs; the prune took %s s; p99 over the whole loop %s ms)", fmtNum(dp99), fmtNum(r.serveMedian(scSrvPrune, us, pruneS)), fmtNum(r.serveMedian(scSrvPrune, us, p99)))
		}
		rows = append(rows, [3]string{fmt.Sprintf("PUT manifest p99 ≤ %d ms during a prune of 10,000 images", targetPutDuringPruneMs), measured, r.serveVerdict(verdict, scSrvPrune, dp99 <= targetPutDuringPruneMs, m)})
	}
	return rows
}

// serveSummary is section 10's line of the summary.
func (r *runner) serveSummary() []string {
	us := r.serveOurs()
	var parts []string
	for _, sc := range []string{scSrvBlobBig, scSrvBlobSmall} {
		ours, reg, fsrv, _, m := r.blobTarget(sc)
		if m {
			parts = append(parts, fmt.Sprintf("blob GET of %s %.3g× docker-registry, %s of http.FileServer", r.serveWhat(sc), ours/reg, pctStr(100*ours/fsrv)))
		}
	}
	if o, g := r.serveMedian(scSrvTags, us, p99), r.serveMedian(scSrvTags, pRegistry, p99); !math.IsNaN(o) && !math.IsNaN(g) {
		parts = append(parts, fmt.Sprintf("%s: p99 %s ms vs %s ms", r.serveWhat(scSrvTags), fmtNum(o), fmtNum(g)))
	}
	if o, g := r.serveMedian(scSrvPush, us, perSecond), r.serveMedian(scSrvPush, pRegistry, perSecond); !math.IsNaN(o) && !math.IsNaN(g) {
		parts = append(parts, fmt.Sprintf("%s %.3g× docker-registry's images/s", r.serveWhat(scSrvPush), o/g))
	}
	if d := r.serveMedian(scSrvPrune, us, duringP99); !math.IsNaN(d) {
		parts = append(parts, fmt.Sprintf("%s: p99 %s ms", r.serveWhat(scSrvPrune), fmtNum(d)))
	}
	if len(parts) == 0 {
		return []string{"10. registry server: not measured in this run (`bench serve` measures it alone)"}
	}
	return []string{"10. registry server: " + strings.Join(parts, "; ")}
}

// writeServe writes section 10.
func (r *runner) writeServe(w func(format string, a ...any), vers map[string]string) {
	s := r.plan.Serve
	us := r.serveOurs()
	w("\n## 10. Registry server (`ocistore serve`) against docker-registry\n\n")
	measured := false
	for _, x := range r.results {
		if rowOf(x.Scenario) != "" {
			measured = true
			break
		}
	}
	if !measured {
		w("Not measured in this run. `cd bench && go run . serve [-full]` measures this section alone (see Method).\n")
		return
	}
	w("Three servers on 127.0.0.1, each its own process, on the file system of the layouts, in the same run: **%s**, %s; **%s** (Debian's package, distribution %s), started as in section 7 (filesystem storage, the blob descriptor cache in memory, access log off); **%s**, Go's static file server (`http.FileServer(http.Dir(layout))`, in a `bench srvproc` process) on the ocistore layout's directory, so that it serves the very blob files ocistore serves. ",
		us, map[bool]string{true: "the CLI built from this checkout, `ocistore -l DIR serve --listen 127.0.0.1:0 --access-log=false --gc-interval 0` (the access log off as docker-registry's; no GC: no row wants one)", false: "`bench srvproc -mode ocistore`: the `server` package over `store.Open` in a process of the benchmark, wired as the CLI wires it (metrics, the prune loop), with a CPU profile of each row's first run"}[us == pServe],
		pRegistry, orUnknown(vers[registryBinary]), pFileServer)
	w("Both registries fsync what they write: ocistore every blob file before its rename and each directory after, its journal's commits, `index.json` and the layout directory; docker-registry every file its storage driver writes, twice (upload data and hash states, link files), and no directory: strace counts 104 `fsync` calls, all on files, for one push by skopeo of an image of a config and 5 layers. ")
	w("The clients run in the benchmark's process on the same 2 cores: curl %s for the large blob (`curl -o /dev/null`, its `time_total`), Go's `net/http` (keep-alive, no compression) for the rest. Every run's load average (1 min) is in its row; the machine's cores are shared with the clients, and with whatever else ran (see Machine).\n\n", orUnknown(vers["curl"]))

	w("### Blob GET: %s (curl)\n\n", r.serveWhat(scSrvBlobBig))
	w("The blob pushed to both registries over HTTP before the clock, as a layer of an image; every blob file read once (page cache warm), then fetched once through each server and its digest checked, untimed. Each run fetches the blob once from each server, the order rotating from run to run; **MB/s** is the blob's bytes over curl's `time_total`, median [min–max] over %d runs. Load at the runs' starts: %s.\n\n", r.serveRunCount(scSrvBlobBig), r.serveLoads(scSrvBlobBig))
	r.writeBlobTable(w, scSrvBlobBig, false)
	w("\n### Blob GET: %s (Go net/http)\n\n", r.serveWhat(scSrvBlobSmall))
	w("%d blobs of %d to %d KiB (random sizes and bytes), pushed, warmed and checked as above. Each run fetches every blob once, %d goroutines each taking the next URL of one shuffled list (one shared `http.Transport`, %d keep-alive connections), each body drained to `io.Discard`; **MB/s** is the bytes over the wall time; **blobs/s**; **request ms** the latency of one GET to the end of its body, p50 / p99 over the run's requests, medians over %d runs. Load: %s.\n\n",
		s.SmallBlobs, s.SmallMin>>10, s.SmallMax>>10, s.SmallClients, s.SmallClients, r.serveRunCount(scSrvBlobSmall), r.serveLoads(scSrvBlobSmall))
	r.writeBlobTable(w, scSrvBlobSmall, true)

	w("\n### Manifest GET by tag at %d tags (Go net/http, one client)\n\n", s.Tags)
	w("The same %d images in both: the generated layout (section 1's shape: a manifest, a config and 5 layers of 256 bytes), tagged `%s:img0…` in ocistore (one `index.json` of %d entries, adopted before the clock); docker-registry's storage written directly in distribution's filesystem layout from the same files (blob data, `_layers` links, each manifest's revision link, each tag's `current` and `index` links: the tree a push leaves, written in seconds instead of pushing every image over HTTP). Before the clock, both list every tag and answer every tag's manifest with its digest (body and `Docker-Content-Digest`). Each run GETs every tag's manifest once, one request at a time on one keep-alive connection, in a shuffled order (the same for both servers in a run), checking each answer's `Docker-Content-Digest`; latency is per request, to the end of the body. Medians [min–max] over %d runs. Load: %s.\n\n",
		s.Tags, tagsRepo, s.Tags, r.serveRunCount(scSrvTags), r.serveLoads(scSrvTags))
	if r.serveHas(scSrvTags) {
		w("| server | p50 ms | p99 ms | max ms | requests/s | p50 of docker-registry's | p99 of docker-registry's | runs | note |\n|---|---|---|---|---|---|---|---|---|\n")
		g50, g99 := r.serveMedian(scSrvTags, pRegistry, p50), r.serveMedian(scSrvTags, pRegistry, p99)
		for _, name := range []string{us, pRegistry} {
			g := summarize(r.sel(scSrvTags, name, -1))
			w("| %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", name, r.serveSpread(scSrvTags, name, p50), r.serveSpread(scSrvTags, name, p99), r.serveSpread(scSrvTags, name, maxMs), r.serveSpread(scSrvTags, name, perSecond),
				ratioStr(r.serveMedian(scSrvTags, name, p50), g50), ratioStr(r.serveMedian(scSrvTags, name, p99), g99), len(g.ok), g.status())
		}
		r.writeTargetLine(w, 2)
	} else {
		w("Not measured in this run.\n")
	}
	w("\n### Push: %d small images by %d clients (Go net/http)\n\n", s.PushImages, s.PushClients)
	w("%d distinct images, each a config and 2 or 3 layers of 4 to 16 KiB (random bytes), to `%s:i0…`; %d goroutines each push the next image as clients do: per blob `HEAD` (404), `POST` an upload, `PUT` it whole with its digest; then `PUT` the manifest by tag. Each run pushes into a fresh empty server (ocistore: a layout made by `ocistore init`; docker-registry: empty storage), the file system synced before, the order rotating from run to run. ocistore with every fsync in place (its default, the only mode it has). After each run every tag is listed, and ocistore's layout passes `ocistore fsck` once the server has stopped. **images/s** over the wall time; **image ms**: one image's pushes, p50 / p99. Medians [min–max] over %d runs. Load: %s.\n\n",
		s.PushImages, pushRepo, s.PushClients, r.serveRunCount(scSrvPush), r.serveLoads(scSrvPush))
	if r.serveHas(scSrvPush) {
		w("| server | images/s | s | image ms p50 | image ms p99 | of docker-registry | runs | note |\n|---|---|---|---|---|---|---|---|\n")
		reg := r.serveMedian(scSrvPush, pRegistry, perSecond)
		for _, name := range []string{us, pRegistry} {
			g := summarize(r.sel(scSrvPush, name, -1))
			w("| %s | %s | %s | %s | %s | %s | %d | %s |\n", name, r.serveSpread(scSrvPush, name, perSecond), r.serveSpread(scSrvPush, name, seconds), r.serveSpread(scSrvPush, name, p50), r.serveSpread(scSrvPush, name, p99), ratioStr(r.serveMedian(scSrvPush, name, perSecond), reg), len(g.ok), g.status())
		}
		r.writeTargetLine(w, 3)
	} else {
		w("Not measured in this run.\n")
	}

	w("\n### PUT manifest during a prune of %d images (ocistore only)\n\n", s.PruneImages)
	li := newLoopImages()
	w("docker-registry has no online prune (its garbage collection is an offline command, the registry read-only meanwhile): this row is ocistore's alone. Each run starts the server on a fresh copy of an adopted layout of %d generated images (`%s:img…`) with `--max-size %d --prune-interval %s` (serve's defaults otherwise: `--linger 10m`, so the prune's freed blobs go into a lease instead of being unlinked). The client pushes one config and 3 layers of %d bytes, then images to the %d tags `%s:t0…t%d` in turn, in a loop: each a new manifest over those blobs (an annotation numbers it), pushed as a client pushes an image whose blobs the registry has (`HEAD` of each blob, 200, then `PUT` the manifest), so that its one write, the `PUT` manifest, is what it spends its time in and what is timed. Each `PUT` moves a tag and leaves the manifest it replaces as an untagged entry. The budget holds the blobs and %d manifests: the prune, %s after the server's start, removes the untagged loop manifests (a prune removes untagged entries first), then the %d generated images (least recently used first), in transactions of at most 500 images each (serve's batches, store.Policy.Limit), and none of the tagged loop images. The server's `/metrics` is polled every 20 ms for the prune (its batches' summed duration, the images they removed); the loop stops 2 s after the batches removed the generated images. **during the prune**: the `PUT`s that overlapped the batches (from the first's start to the last's end, a poll's 20 ms included): each waits at most for the batch that holds the store's writer lock when it arrives. A blob upload's commit takes the same lock (it records the blob in its upload's lease): an upload arriving then would wait as long. After each run the layout holds no generated tag and the %d loop tags, and the metrics count at least %d images removed (the generated ones, and the untagged loop manifests). Load: %s.\n\n",
		s.PruneImages, oldRepo, li.budget(), s.PruneInterval, loopLayer, loopTags, loopRepo, loopTags-1, loopTags, s.PruneInterval, s.PruneImages, loopTags, s.PruneImages, r.serveLoads(scSrvPrune))
	if !r.serveHas(scSrvPrune) {
		w("Not measured in this run.\n")
		return
	}
	w("| run | prune s | images removed | PUTs during the prune | their p99 / max ms | PUTs in the loop | loop p50 / p99 / max ms | load | note |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.sel(scSrvPrune, us, -1) {
		st := x.Serve
		if st == nil {
			continue
		}
		note := ""
		if x.Err != "" || x.Res.Errors > 0 {
			note = "FAILED: " + trunc(x.Err+x.Res.ErrMsg, 160)
		}
		if st.Prunes > 1 {
			note = strings.TrimPrefix(note+fmt.Sprintf("; %d prune runs in the loop (the later ones removed nothing)", st.Prunes), "; ")
		}
		w("| %d | %s | %d | %d | %s / %s | %d | %s / %s / %s | %.2f | %s |\n", x.Run, fmtNum(st.PruneMs/1000), st.Pruned, st.During, fmtNum(st.DuringP99Ms), fmtNum(st.DuringMaxMs), st.Items, fmtNum(st.P50Ms), fmtNum(st.P99Ms), fmtNum(st.MaxMs), st.Load, note)
	}
	r.writeTargetLine(w, 4)
}

// serveRunCount is the most runs a server has of a serve scenario.
func (r *runner) serveRunCount(scenario string) int {
	n := map[string]int{}
	best := 0
	for _, x := range r.results {
		if x.Scenario == scenario {
			n[x.Peer]++
			best = max(best, n[x.Peer])
		}
	}
	return best
}

// serveHas says whether the run has results of a serve scenario.
func (r *runner) serveHas(scenario string) bool {
	for _, x := range r.results {
		if x.Scenario == scenario {
			return true
		}
	}
	return false
}

// ratioStr is v/of as "1.23×", or "—".
func ratioStr(v, of float64) string {
	if math.IsNaN(v) || math.IsNaN(of) || of == 0 {
		return "—"
	}
	return fmt.Sprintf("%.3g×", v/of)
}

// verdictWord is the targets table's verdict.
func verdictWord(ok, measured bool) string {
	switch {
	case !measured:
		return "not measured in this mode"
	case ok:
		return "met"
	}
	return "**missed**"
}

// writeTargetLine writes the target row i of serveTargets under its table.
func (r *runner) writeTargetLine(w func(format string, a ...any), i int) {
	t := r.serveTargets(verdictWord)[i]
	w("\n**Target**: %s: %s — %s.\n", t[0], t[1], t[2])
}

// writeBlobTable writes a blob GET table: each server's throughput and its
// ratio to docker-registry's and http.FileServer's.
func (r *runner) writeBlobTable(w func(format string, a ...any), scenario string, many bool) {
	if !r.serveHas(scenario) {
		w("Not measured in this run.\n")
		return
	}
	us := r.serveOurs()
	reg, fsrv := r.serveMedian(scenario, pRegistry, mbps), r.serveMedian(scenario, pFileServer, mbps)
	if many {
		w("| server | MB/s | blobs/s | request ms p50 | request ms p99 | of docker-registry | of http.FileServer | runs | note |\n|---|---|---|---|---|---|---|---|---|\n")
	} else {
		w("| server | MB/s | s | of docker-registry | of http.FileServer | runs | note |\n|---|---|---|---|---|---|---|\n")
	}
	for _, name := range []string{us, pRegistry, pFileServer} {
		g := summarize(r.sel(scenario, name, -1))
		v := r.serveMedian(scenario, name, mbps)
		ofReg, ofFS := "—", "—"
		if !math.IsNaN(v) && !math.IsNaN(reg) {
			ofReg = fmt.Sprintf("%.3g×", v/reg)
		}
		if !math.IsNaN(v) && !math.IsNaN(fsrv) {
			ofFS = pctStr(100 * v / fsrv)
		}
		if many {
			w("| %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", name, r.serveSpread(scenario, name, mbps), r.serveSpread(scenario, name, perSecond), r.serveSpread(scenario, name, p50), r.serveSpread(scenario, name, p99), ofReg, ofFS, len(g.ok), g.status())
		} else {
			w("| %s | %s | %s | %s | %s | %d | %s |\n", name, r.serveSpread(scenario, name, mbps), r.serveSpread(scenario, name, seconds), ofReg, ofFS, len(g.ok), g.status())
		}
	}
	i := 0
	if many {
		i = 1
	}
	r.writeTargetLine(w, i)
}

// --- bench serve

// serveMain is `bench serve`: section 10 alone, at the quick sizes or
// (-full) the targets', written as its own report (-out) and raw results
// (-json), and with -into merged into a saved run in place of its serve
// rows (then `bench report -from` writes the whole report with them).
func serveMain(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	full := fs.Bool("full", false, "the targets' sizes (default: quick)")
	rowList := fs.String("rows", strings.Join(serveRows, ","), "rows to measure: blob, tags, push, prune")
	runs := fs.Int("runs", 0, "runs per row and server (0: the mode's)")
	out := fs.String("out", "", "report to write (default: serve-full.md with -full, else serve-quick.md)")
	jsonOut := fs.String("json", "", "raw results to write (default: serve-full.json with -full, else serve-quick.json; \"-\": none)")
	into := fs.String("into", "", "also merge the rows into this saved run (bench -json), in place of its serve rows")
	prof := fs.String("profile", "", "run ocistore's server in-process (bench srvproc) and write a CPU profile of each row's first run into this directory")
	work := fs.String("work", ".work-serve", "scratch directory (removed at the end unless -keep)")
	keep := fs.Bool("keep", false, "keep the scratch directory")
	repo := fs.String("repo", "..", "the main module's checkout (the CLI is built from it)")
	from := fs.String("from", "", "measure nothing: write the report (-out) of these saved results of bench serve (-json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from != "" {
		return serveReport(*from, *out)
	}
	rows := map[string]bool{}
	for _, s := range strings.Split(*rowList, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(serveRows, s) {
			return fmt.Errorf("serve: -rows: unknown row %q (blob, tags, push, prune)", s)
		}
		rows[s] = true
	}
	p := quickPlan()
	name := "serve-quick"
	if *full {
		p, name = fullPlan(), "serve-full"
	}
	if *runs > 0 {
		p.Serve.Runs, p.Serve.BlobRuns = *runs, *runs
	}
	if *out == "" {
		*out = name + ".md"
	}
	if *jsonOut == "" {
		*jsonOut = name + ".json"
	}
	if *into != "" {
		sr, _, err := loadSaved(*into)
		if err != nil {
			return err
		}
		if sr.Full != *full {
			return fmt.Errorf("serve: -into %s: a %s run; measure with%s -full", *into, map[bool]string{true: "full", false: "quick"}[sr.Full], map[bool]string{true: "", false: "out"}[sr.Full])
		}
	}
	r, err := newRunner(p, *work)
	if err != nil {
		return err
	}
	r.repo = *repo
	if !*keep {
		defer os.RemoveAll(r.work)
	}
	if *prof != "" {
		abs, err := filepath.Abs(*prof)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return err
		}
		r.profDir = abs
	}
	started := time.Now()
	vers := map[string]string{registryBinary: registryVersion(), "curl": curlVersion(), "engine": engineCommit(*repo), "rows": *rowList,
		"cpu": firstField("/proc/cpuinfo", "model name"), "fs": mountOf(r.work)}
	r.logf("bench serve: %s sizes, rows %s, engine at %s", map[bool]string{true: "full", false: "quick"}[*full], *rowList, vers["engine"])
	if err := r.serving(rows); err != nil {
		return err
	}
	wall := time.Since(started)
	sr := savedRun{Full: p.Full, Runs: p.Serve.Runs, Started: started, WallNs: int64(wall), Versions: vers, Loads: r.loads, IOWaits: r.ioWaits, IONoisy: r.ioNoisy, Results: r.results}
	if *jsonOut != "-" {
		raw, _ := json.MarshalIndent(sr, "", " ")
		if err := os.WriteFile(*jsonOut, raw, 0o644); err != nil {
			return err
		}
	}
	if *into != "" {
		if err := mergeServe(*into, r, rows, started, wall, *repo); err != nil {
			return err
		}
	}
	if err := writeServeReport(r, sr, *out); err != nil {
		return err
	}
	r.logf("wrote %s (%s)", *out, wall.Round(time.Second))
	return nil
}

// serveReport writes the report of saved bench serve results.
func serveReport(from, out string) error {
	sr, p, err := loadSaved(from)
	if err != nil {
		return err
	}
	if out == "" {
		out = map[bool]string{true: "serve-full.md", false: "serve-quick.md"}[sr.Full]
	}
	r := &runner{plan: p, results: sr.Results, loads: sr.Loads, ioWaits: sr.IOWaits, ioNoisy: sr.IONoisy, log: os.Stderr}
	return writeServeReport(r, sr, out)
}

// writeServeReport writes bench serve's report: its targets and section 10.
func writeServeReport(r *runner, sr savedRun, out string) error {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	vers := sr.Versions
	w("# Registry server (`bench serve%s -rows %s`)\n\n", map[bool]string{true: " -full", false: ""}[sr.Full], orUnknown(vers["rows"]))
	w("Measured on %s in %s, engine at %s; load average (1 min) at the start of each run: median %.2f, max %.2f on %d cores (each row says its own). Machine: %s, %s. `go run . serve -from FILE.json` writes this file again from the run's raw results.\n",
		sr.Started.UTC().Format("2006-01-02 15:04 UTC"), time.Duration(sr.WallNs).Round(time.Second), orUnknown(vers["engine"]), r.loads.median(), r.loads.max(), runtime.NumCPU(), orUnknown(vers["cpu"]), orUnknown(vers["fs"]))
	for _, m := range sr.Remeasured {
		if m.Scenario == serveFamily {
			w("\n**Re-measured**: rows %s (%d old runs replaced) by `bench serve -into`, on %s in %s, engine at %s; load average (1 min) at the start of each run: median %.2f, max %.2f. Every other row is from the run above.\n",
				m.Peer, m.Replaced, m.Started.UTC().Format("2006-01-02 15:04 UTC"), time.Duration(m.WallNs).Round(time.Second), m.Commit, m.Loads.median(), m.Loads.max())
		}
	}
	if len(r.ioWaits) > 0 {
		w("\nBefore each push and prune run, the benchmark waited for quiet I/O (as the other sections' runs do): waits median %.0f ms, max %.0f ms; %d of %d runs started with the I/O still busy.\n", r.ioWaits.median(), r.ioWaits.max(), r.ioNoisy, len(r.ioWaits))
	}
	w("\n| target | measured | |\n|---|---|---|\n")
	for _, t := range r.serveTargets(verdictWord) {
		w("| %s | %s | %s |\n", t[0], t[1], t[2])
	}
	r.writeServe(w, vers)
	return os.WriteFile(out, []byte(b.String()), 0o644)
}

// mergeServe puts r's serve results into the saved run at path in place
// of its results of the same rows, and records the re-measure.
func mergeServe(path string, r *runner, rows map[string]bool, started time.Time, wall time.Duration, repo string) error {
	sr, _, err := loadSaved(path)
	if err != nil {
		return err
	}
	var keep []runResult
	replaced := 0
	for _, x := range sr.Results {
		if rows[rowOf(x.Scenario)] {
			replaced++
			continue
		}
		keep = append(keep, x)
	}
	sr.Results = append(keep, r.results...)
	var names []string
	for _, s := range serveRows {
		if rows[s] {
			names = append(names, s)
		}
	}
	sr.Remeasured = append(sr.Remeasured, remeasure{Scenario: serveFamily, Peer: strings.Join(names, ","), Runs: r.plan.Serve.Runs, Started: started,
		WallNs: int64(wall), Commit: engineCommit(repo), Loads: r.loads, Replaced: replaced})
	raw, _ := json.MarshalIndent(sr, "", " ")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		return err
	}
	r.logf("merged %d serve runs into %s in place of %d", len(r.results), path, replaced)
	return nil
}

// serveFamily is the scenario of a re-measure record of serve rows (its
// Peer names the rows).
const serveFamily = "serve"
