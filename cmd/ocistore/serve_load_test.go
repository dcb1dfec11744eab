package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// pushClient pushes images to a registry as a client does: each blob
// HEAD first (skipped when present), then uploaded (monolithic, or in
// chunks), then the manifest.
type pushClient struct {
	c    *http.Client
	base string
	rng  *mrand.Rand
}

// do sends a request and returns its status and body; a status not in
// want is an error.
func (p *pushClient) do(method, u, ctype string, body []byte, hdr map[string]string, want ...int) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.ContentLength = int64(len(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := p.c.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, b, nil
		}
	}
	return resp, b, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, bytes.TrimSpace(b))
}

// blob uploads b to repo unless the registry has it.
func (p *pushClient) blob(repo string, b []byte) error {
	d := digest.FromBytes(b)
	resp, _, err := p.do(http.MethodHead, p.base+"/v2/"+repo+"/blobs/"+d.String(), "", nil, nil, 200, 404)
	if err != nil {
		return err
	}
	if resp.StatusCode == 200 {
		return nil
	}
	if p.rng.IntN(2) == 0 {
		_, _, err = p.do(http.MethodPost, p.base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", b, nil, 201)
		return err
	}
	resp, _, err = p.do(http.MethodPost, p.base+"/v2/"+repo+"/blobs/uploads/", "", nil, nil, 202)
	if err != nil {
		return err
	}
	loc := resp.Header.Get("Location")
	chunk := max(len(b)/3, 1)
	for off := 0; off < len(b); off += chunk {
		end := min(off+chunk, len(b))
		resp, _, err = p.do(http.MethodPatch, p.base+loc, "application/octet-stream", b[off:end],
			map[string]string{"Content-Range": fmt.Sprintf("%d-%d", off, end-1)}, 202)
		if err != nil {
			return err
		}
		loc = resp.Header.Get("Location")
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	_, _, err = p.do(http.MethodPut, p.base+loc+sep+"digest="+d.String(), "", nil, nil, 201)
	return err
}

// image pushes an image of the layers (and a random config) and tags it.
func (p *pushClient) image(repo, tag string, layers [][]byte) (digest.Digest, error) {
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"id":%q}`, rand.Text()))
	if err := p.blob(repo, cfg); err != nil {
		return "", err
	}
	m := v1.Manifest{MediaType: v1.MediaTypeImageManifest,
		Config: v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}}
	m.SchemaVersion = 2
	for _, l := range layers {
		if err := p.blob(repo, l); err != nil {
			return "", err
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromBytes(l), Size: int64(len(l))})
	}
	mb, _ := json.Marshal(m)
	_, _, err := p.do(http.MethodPut, p.base+"/v2/"+repo+"/manifests/"+tag, v1.MediaTypeImageManifest, mb, nil, 201)
	return digest.FromBytes(mb), err
}

// TestServeUnderLoad: 16 pushers and 16 pullers for a minute (10 s with
// -short) against ocistore serve, which prunes to a size budget and runs
// GC every second. No request fails but the 404 of a tag pruned before
// its pull; every manifest a puller got resolves completely (its blobs
// stay for --linger after a prune); fsck --deep is clean after.
func TestServeUnderLoad(t *testing.T) {
	t.Parallel()
	dur := time.Minute
	if testing.Short() {
		dur = 10 * time.Second
	}
	if v := os.Getenv("OCISTORE_LOAD_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("OCISTORE_LOAD_SECONDS=%q: %v", v, err)
		}
		dur = time.Duration(n) * time.Second
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if r := cli(t, "-l", dir, "init"); r.code != 0 {
		t.Fatalf("init: %s", r)
	}
	srv := startServe(t, dir, "--max-size", "8MiB", "--prune-interval", "1s", "--gc-interval", "1s",
		"--gc-grace", "0s", "--linger", "30s", "--access-log=false")

	// Base layers shared by many images: pushers find them present
	// (HEAD 200) and skip them, while prune and GC free and re-free them.
	bases := make([][]byte, 4)
	for i := range bases {
		bases[i] = make([]byte, 64<<10+i)
		rand.Read(bases[i])
	}
	var (
		mu     sync.Mutex
		pushed []string // repo:tag, in push order
		errs   []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(errs) < 20 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	var pushes, pulls, pruned404, blobsPulled atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &pushClient{c: &http.Client{Timeout: time.Minute}, base: srv.url, rng: mrand.New(mrand.NewPCG(uint64(w), 1))}
			repo := fmt.Sprintf("load/p%d", w%8)
			for i := 0; ctx.Err() == nil; i++ {
				layers := [][]byte{bases[p.rng.IntN(len(bases))]}
				for range 1 + p.rng.IntN(2) {
					l := make([]byte, 16<<10+p.rng.IntN(128<<10))
					rand.Read(l)
					layers = append(layers, l)
				}
				tag := fmt.Sprintf("w%d-%d", w, i)
				if _, err := p.image(repo, tag, layers); err != nil {
					fail("push %s:%s: %v", repo, tag, err)
					return
				}
				pushes.Add(1)
				mu.Lock()
				pushed = append(pushed, repo+":"+tag)
				mu.Unlock()
			}
		}()
	}
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(w), 2))
			c := &http.Client{Timeout: time.Minute}
			for ctx.Err() == nil {
				mu.Lock()
				n := len(pushed)
				var ref string
				if n > 0 {
					// Mostly the recent ones, sometimes an old one (likely pruned).
					i := n - 1 - rng.IntN(min(n, 20))
					if rng.IntN(4) == 0 {
						i = rng.IntN(n)
					}
					ref = pushed[i]
				}
				mu.Unlock()
				if ref == "" {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				repo, tag, _ := strings.Cut(ref, ":")
				_, all, err := pullGraph(c, srv.url, repo, tag)
				switch {
				case err == nil:
					pulls.Add(1)
					blobsPulled.Add(int64(len(all)))
				case len(all) == 0 && isManifestUnknown(err):
					pruned404.Add(1) // the tag was pruned before the pull: documented
				default:
					fail("pull %s: %v (after %d objects of its graph)", ref, err, len(all))
				}
			}
		}()
	}
	wg.Wait()
	resp, err := http.Get(srv.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if code := srv.stop(t); code != 0 {
		t.Errorf("serve exit status %d after SIGTERM:\n%.5000s", code, srv.stderr)
	}
	prunes := metricValue(metrics, `ocistore_maintenance_runs_total{kind="prune",result="ok"}`)
	gcs := metricValue(metrics, `ocistore_maintenance_runs_total{kind="gc",result="ok"}`)
	failed := metricValue(metrics, `ocistore_maintenance_runs_total{kind="prune",result="error"}`) + metricValue(metrics, `ocistore_maintenance_runs_total{kind="gc",result="error"}`)
	freed := metricValue(metrics, `ocistore_maintenance_removed_items_total{kind="prune"}`)
	t.Logf("load for %s: %d pushes, %d complete pulls (%d objects), %d pulls of pruned tags (404), %d prunes removing %d images, %d GCs, %d failed runs",
		dur, pushes.Load(), pulls.Load(), blobsPulled.Load(), pruned404.Load(), int(prunes), int(freed), int(gcs), int(failed))
	for _, e := range errs {
		t.Error(e)
	}
	if pushes.Load() == 0 || pulls.Load() == 0 || prunes == 0 || gcs == 0 || freed == 0 {
		t.Errorf("the load did not exercise the server: %d pushes, %d pulls, %d prunes removing %d images, %d GCs", pushes.Load(), pulls.Load(), int(prunes), int(freed), int(gcs))
	}
	if failed > 0 {
		t.Errorf("%d prune or GC runs failed:\n%.5000s", int(failed), srv.stderr)
	}
	if r := cli(t, "-l", dir, "fsck", "--deep"); r.code != 0 {
		t.Errorf("fsck --deep after the load: %s", r)
	}
}

// isManifestUnknown reports whether err is pullGraph's failure on a 404
// MANIFEST_UNKNOWN for the manifest it was asked for.
func isManifestUnknown(err error) bool {
	return strings.Contains(err.Error(), ": 404 Not Found: ") && strings.Contains(err.Error(), "MANIFEST_UNKNOWN")
}

// metricValue is the value of one series of a Prometheus text exposition,
// 0 when it is not there.
func metricValue(text []byte, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindSubmatch(text)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}
