package main

// The servers of the registry rows (serve.go), each its own process on
// 127.0.0.1, and the HTTP clients that measure them.
//
//   - ocistore serve: the CLI built from the checkout (`ocistore -l DIR
//     serve`), access log off (docker-registry's is off too), GC off (no
//     row wants it).
//   - docker-registry: Debian's package, as the pull rows start it
//     (startRegistry, pull.go).
//   - http.FileServer: `bench srvproc -mode fileserver`, Go's static file
//     server on the ocistore layout's directory: the same blob files.
//   - ocistore in-process: `bench srvproc -mode ocistore`, server.New over
//     store.Open wired as the CLI wires it (metrics, the prune loop), with
//     a CPU profile switched on and off over HTTP: for profiling only
//     (bench serve -profile), the main module has no profiling hook.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/server"
	"github.com/ocistore/ocistore/store"
)

// srv is a running server process.
type srv struct {
	name string
	base string // http://127.0.0.1:PORT
	dir  string // the ocistore layout or the file server's root ("" for docker-registry)
	pid  int
	stop func()
	tail func() string // the end of its log
}

// servingLine is what ocistore serve and bench srvproc print once they
// listen: "… serving DIR on http://ADDR".
var servingLine = regexp.MustCompile(`serving .* on (https?://\S+)`)

// startProc starts a server process whose stderr says where it listens
// (servingLine), logs its output to logPath, and waits until it answers
// GET probe with 200. The kernel kills it if this process dies.
func startProc(name string, argv []string, dir, logPath, probe string) (*srv, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	pipe, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	addr := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if !found {
				if m := servingLine.FindStringSubmatch(line); m != nil {
					found = true
					addr <- m[1]
				}
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		<-copied
		_ = cmd.Wait()
		close(done)
	}()
	tail := func() string {
		b, _ := os.ReadFile(logPath)
		if len(b) > 2000 {
			b = b[len(b)-2000:]
		}
		return strings.TrimSpace(string(b))
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			logf.Close()
		})
	}
	s := &srv{name: name, dir: dir, pid: cmd.Process.Pid, stop: stop, tail: tail}
	select {
	case s.base = <-addr:
	case <-done:
		return nil, fmt.Errorf("%s exited before listening; log: %s", name, tail())
	case <-time.After(5 * time.Minute): // a first open adopts the layout
		stop()
		return nil, fmt.Errorf("%s does not say where it listens after 5 minutes; log: %s", name, tail())
	}
	c := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := c.Get(s.base + probe)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("%s does not answer GET %s%s: %v; log: %s", name, s.base, probe, err, tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startServe starts `ocistore -l dir serve` on 127.0.0.1 (any port), with
// the access log and GC off, and extra flags.
func startServe(cli, dir, logPath string, extra ...string) (*srv, error) {
	argv := append([]string{cli, "-l", dir, "serve", "--listen", "127.0.0.1:0", "--access-log=false", "--gc-interval", "0"}, extra...)
	return startProc(pServe, argv, dir, logPath, "/v2/")
}

// startInproc starts `bench srvproc -mode ocistore` on dir: the server
// package in a process of this binary, which can profile it.
func startInproc(self, dir, logPath string, extra ...string) (*srv, error) {
	argv := append([]string{self, "srvproc", "-mode", "ocistore", "-dir", dir}, extra...)
	return startProc(pServeInproc, argv, dir, logPath, "/v2/")
}

// startFileServer starts `bench srvproc -mode fileserver` on dir.
func startFileServer(self, dir, logPath string) (*srv, error) {
	return startProc(pFileServer, []string{self, "srvproc", "-mode", "fileserver", "-dir", dir}, dir, logPath, "/oci-layout")
}

// startRegistrySrv starts docker-registry with its storage in dir (see
// startRegistry), as a srv.
func startRegistrySrv(dir string) (*srv, error) {
	rp, err := startRegistry(dir)
	if err != nil {
		return nil, err
	}
	return &srv{name: pRegistry, base: "http://" + rp.host, pid: rp.cmd.Process.Pid, stop: rp.stop, tail: rp.logTail}, nil
}

// srvprocMain is `bench srvproc`: a server in this process, until SIGTERM
// or SIGINT. -mode fileserver serves -dir with http.FileServer; -mode
// ocistore serves the layout -dir as `ocistore serve` does (server.New,
// the metrics, the prune loop of --max-size/--prune-interval/--linger),
// plus /bench/cpuprofile/start?file=F and /bench/cpuprofile/stop.
func srvprocMain(args []string) error {
	fs := flag.NewFlagSet("srvproc", flag.ContinueOnError)
	mode := fs.String("mode", "fileserver", "fileserver or ocistore")
	dir := fs.String("dir", "", "directory served")
	listen := fs.String("listen", "127.0.0.1:0", "address")
	maxSize := fs.Int64("max-size", 0, "ocistore: prune to this many bytes")
	pruneInterval := fs.Duration("prune-interval", time.Minute, "ocistore: prune period")
	linger := fs.Duration("linger", 10*time.Minute, "ocistore: a pruned image's blobs stay this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("srvproc: -dir is required")
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	mux := http.NewServeMux()
	var h http.Handler = mux
	var cleanup []func()
	switch *mode {
	case "fileserver":
		mux.Handle("/", http.FileServer(http.Dir(*dir)))
	case "ocistore":
		m := server.NewMetrics(nil)
		st, err := store.Open(ctx, *dir, &store.Options{NoCreate: true, OnWriterLock: func(wait, _ time.Duration) { m.LockWait(wait) }})
		if err != nil {
			return err
		}
		srv := server.New(st, &server.Options{Metrics: m})
		mux.Handle("/v2/", srv)
		mux.Handle("/metrics", m.Handler())
		var prof struct {
			sync.Mutex
			f *os.File
		}
		stopProf := func() {
			prof.Lock()
			defer prof.Unlock()
			if prof.f != nil {
				pprof.StopCPUProfile()
				prof.f.Close()
				prof.f = nil
			}
		}
		mux.HandleFunc("/bench/cpuprofile/start", func(w http.ResponseWriter, r *http.Request) {
			prof.Lock()
			defer prof.Unlock()
			if prof.f != nil {
				http.Error(w, "a profile is running", http.StatusConflict)
				return
			}
			f, err := os.Create(r.URL.Query().Get("file"))
			if err == nil {
				if err = pprof.StartCPUProfile(f); err != nil {
					f.Close()
				}
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			prof.f = f
		})
		mux.HandleFunc("/bench/cpuprofile/stop", func(w http.ResponseWriter, r *http.Request) { stopProf() })
		h = m.Wrap(mux)
		mctx, stopMaint := context.WithCancel(ctx)
		maintDone := make(chan struct{})
		go func() {
			defer close(maintDone)
			if *maxSize <= 0 {
				return
			}
			// serve.go's maintain, prune part: the same call on the same ticker.
			t := time.NewTicker(*pruneInterval)
			defer t.Stop()
			for {
				select {
				case <-mctx.Done():
					return
				case <-t.C:
					start := time.Now()
					res, err := st.Prune(mctx, store.Policy{MaxSize: *maxSize, Linger: *linger})
					removed := 0
					var freed int64
					if res != nil {
						removed, freed = len(res.Removed), res.BytesFreed
					}
					m.Maintenance("prune", time.Since(start), freed, removed, err)
				}
			}
		}()
		cleanup = append(cleanup, func() {
			stopMaint()
			<-maintDone
			stopProf()
			srv.Close()
			st.Close()
		})
	default:
		return fmt.Errorf("srvproc: -mode %q: want fileserver or ocistore", *mode)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(slog.New(slog.NewTextHandler(os.Stderr, nil)).Handler(), slog.LevelWarn)}
	fmt.Fprintf(os.Stderr, "bench srvproc: serving %s on http://%s\n", *dir, ln.Addr())
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	select {
	case err = <-served:
	case <-ctx.Done():
		sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		err = hs.Shutdown(sctx)
		c()
		<-served
	}
	for _, f := range cleanup {
		f()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// --- the clients

// httpClient is a client of conns keep-alive connections to one server, no
// proxy, no compression.
func httpClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConns:        2 * conns,
		MaxIdleConnsPerHost: 2 * conns,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}, Timeout: 10 * time.Minute}
}

// pusher pushes to a registry as clients do: each blob HEAD first
// (skipped when present), then POST and a monolithic PUT of the upload;
// the manifest last.
type pusher struct {
	c    *http.Client
	base string
}

// do sends a request and drains its response; a status not in want is an
// error.
func (p *pusher) do(method, u, ctype string, body io.Reader, size int64, want ...int) (*http.Response, error) {
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := p.c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	return resp, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, bytes.TrimSpace(b))
}

// blob pushes size bytes of body (a new reader per call) with digest d
// to repo, unless the registry has it.
func (p *pusher) blob(repo string, d digest.Digest, size int64, body func() io.Reader) error {
	resp, err := p.do(http.MethodHead, p.base+"/v2/"+repo+"/blobs/"+d.String(), "", nil, 0, 200, 404)
	if err != nil {
		return err
	}
	if resp.StatusCode == 200 {
		return nil
	}
	resp, err = p.do(http.MethodPost, p.base+"/v2/"+repo+"/blobs/uploads/", "", nil, 0, 202)
	if err != nil {
		return err
	}
	loc, err := p.location(resp)
	if err != nil {
		return err
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	_, err = p.do(http.MethodPut, loc.String(), "application/octet-stream", body(), size, 201)
	return err
}

// bytesBlob pushes b.
func (p *pusher) bytesBlob(repo string, b []byte) (ocispec.Descriptor, error) {
	d := digest.FromBytes(b)
	return ocispec.Descriptor{Digest: d, Size: int64(len(b))}, p.blob(repo, d, int64(len(b)), func() io.Reader { return bytes.NewReader(b) })
}

// location is an upload's Location, absolute.
func (p *pusher) location(resp *http.Response) (*url.URL, error) {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil, fmt.Errorf("%s %s: no Location", resp.Request.Method, resp.Request.URL)
	}
	base, err := url.Parse(p.base + "/")
	if err != nil {
		return nil, err
	}
	u, err := base.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("Location %q: %w", loc, err)
	}
	return u, nil
}

// manifest puts an image manifest as repo:ref.
func (p *pusher) manifest(repo, ref string, b []byte) error {
	_, err := p.do(http.MethodPut, p.base+"/v2/"+repo+"/manifests/"+ref, ocispec.MediaTypeImageManifest, bytes.NewReader(b), int64(len(b)), 201)
	return err
}

// imageManifest is the manifest of a config and layers (OCI, tar layers).
func imageManifest(cfg ocispec.Descriptor, layers []ocispec.Descriptor) []byte {
	type d struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        d      `json:"config"`
		Layers        []d    `json:"layers"`
	}{2, ocispec.MediaTypeImageManifest, d{ocispec.MediaTypeImageConfig, cfg.Digest.String(), cfg.Size}, []d{}}
	for _, l := range layers {
		m.Layers = append(m.Layers, d{ocispec.MediaTypeImageLayer, l.Digest.String(), l.Size})
	}
	b, _ := json.Marshal(m)
	return b
}

// manifestAccept is the Accept header of a manifest GET: docker-registry
// answers an OCI manifest only to a client that says it takes one.
const manifestAccept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

// getTimed GETs u and drains the body into io.Discard; it returns the
// time to the end of the body and the body's size. A status other than
// 200 is an error.
func getTimed(c *http.Client, u string, accept string) (time.Duration, int64, http.Header, error) {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return 0, 0, nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, 0, nil, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if err != nil {
		return d, n, nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return d, n, nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return d, n, resp.Header, nil
}

// getDigest GETs u and checks that its body hashes to d (untimed checks).
func getDigest(c *http.Client, u string, d digest.Digest) error {
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	v := d.Verifier()
	if _, err := io.CopyBuffer(v, resp.Body, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	if !v.Verified() {
		return fmt.Errorf("GET %s: the body does not hash to %s", u, d)
	}
	return nil
}

// curlGet fetches u with curl into /dev/null and returns curl's
// time_total and the bytes it got. Any status but 200 is an error.
func curlGet(ctx context.Context, u string) (time.Duration, int64, error) {
	out, err := exec.CommandContext(ctx, "curl", "--noproxy", "*", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", u).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("curl %s: %v: %s", u, err, bytes.TrimSpace(out))
	}
	f := strings.Fields(string(out))
	if len(f) != 3 {
		return 0, 0, fmt.Errorf("curl %s: output %q", u, out)
	}
	if f[0] != "200" {
		return 0, 0, fmt.Errorf("curl %s: status %s", u, f[0])
	}
	n, err1 := strconv.ParseInt(f[1], 10, 64)
	s, err2 := strconv.ParseFloat(f[2], 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("curl %s: output %q", u, out)
	}
	return time.Duration(s * float64(time.Second)), n, nil
}

// curlVersion is `curl --version`'s version, or why not.
func curlVersion() string {
	out, err := exec.Command("curl", "--version").Output()
	if err != nil {
		return "not found"
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		return "unknown"
	}
	return f[1]
}

// metricsOf reads a server's /metrics.
func metricsOf(c *http.Client, base string) ([]byte, error) {
	resp, err := c.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return io.ReadAll(resp.Body)
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

// tagsList reads GET /v2/REPO/tags/list (every page).
func tagsList(c *http.Client, base, repo string) ([]string, error) {
	var all []string
	next := base + "/v2/" + repo + "/tags/list?n=100000"
	for next != "" {
		resp, err := c.Get(next)
		if err != nil {
			return nil, err
		}
		var body struct {
			Tags []string `json:"tags"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, nil // no such repository: no tags
		}
		if resp.StatusCode != http.StatusOK || err != nil {
			return nil, fmt.Errorf("GET %s: %s %v", next, resp.Status, err)
		}
		all = append(all, body.Tags...)
		next = ""
		if l := resp.Header.Get("Link"); l != "" {
			if i, j := strings.IndexByte(l, '<'), strings.IndexByte(l, '>'); i >= 0 && j > i {
				u, err := url.Parse(base + "/")
				if err != nil {
					return nil, err
				}
				nu, err := u.Parse(l[i+1 : j])
				if err != nil {
					return nil, err
				}
				next = nu.String()
			}
		}
	}
	return all, nil
}

// --- docker-registry's storage, written directly

// registryStorage writes the images of an OCI layout (tags REPO:TAG,
// every one in repository repo) into the storage directory of a
// docker-registry (distribution's filesystem driver, the tree a push
// leaves: blobs/sha256/XX/HEX/data, and per repository the _layers links
// of configs and layers, the _manifests revision link, and per tag its
// current link and its index entry, each link the digest's string), with
// workers goroutines. It returns the manifest digest of each tag.
func registryStorage(layoutDir, storage, repo string, workers int) (map[string]digest.Digest, error) {
	raw, err := os.ReadFile(filepath.Join(layoutDir, "index.json"))
	if err != nil {
		return nil, err
	}
	var ix manifest
	if err := json.Unmarshal(raw, &ix); err != nil {
		return nil, err
	}
	v2 := filepath.Join(storage, "docker", "registry", "v2")
	rdir := filepath.Join(v2, "repositories", filepath.FromSlash(repo))
	write := func(p string, b []byte) error {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.WriteFile(p, b, 0o644)
	}
	link := func(p string, d string) error { return write(p, []byte(d)) }
	hexOf := func(d string) string { return strings.TrimPrefix(d, "sha256:") }

	tags := map[string]digest.Digest{}
	layers := map[string]bool{}
	type job struct{ fn func() error }
	var jobs []job
	for _, e := range ix.Manifests {
		name := e.Annotations[refName]
		r, tag, ok := strings.Cut(name, ":")
		if !ok || r != repo {
			return nil, fmt.Errorf("index.json entry %q is not a tag of %s", name, repo)
		}
		tags[tag] = digest.Digest(e.Digest)
		mraw, err := os.ReadFile(filepath.Join(layoutDir, "blobs", "sha256", hexOf(e.Digest)))
		if err != nil {
			return nil, err
		}
		var m manifest
		if err := json.Unmarshal(mraw, &m); err != nil {
			return nil, err
		}
		if m.Config != nil {
			layers[m.Config.Digest] = true
		}
		for _, l := range m.Layers {
			layers[l.Digest] = true
		}
		d := e.Digest
		jobs = append(jobs, job{func() error {
			h := hexOf(d)
			if err := link(filepath.Join(rdir, "_manifests", "revisions", "sha256", h, "link"), d); err != nil {
				return err
			}
			if err := link(filepath.Join(rdir, "_manifests", "tags", tag, "index", "sha256", h, "link"), d); err != nil {
				return err
			}
			return link(filepath.Join(rdir, "_manifests", "tags", tag, "current", "link"), d)
		}})
	}
	for d := range layers {
		jobs = append(jobs, job{func() error {
			return link(filepath.Join(rdir, "_layers", "sha256", hexOf(d), "link"), d)
		}})
	}
	// The bytes of every blob the images name (a generated layout may
	// hold base layers no image uses: a push would not send them).
	blobs := map[string]bool{}
	for d := range layers {
		blobs[d] = true
	}
	for _, d := range tags {
		blobs[d.String()] = true
	}
	for d := range blobs {
		h := hexOf(d)
		jobs = append(jobs, job{func() error {
			b, err := os.ReadFile(filepath.Join(layoutDir, "blobs", "sha256", h))
			if err != nil {
				return err
			}
			return write(filepath.Join(v2, "blobs", "sha256", h[:2], h, "data"), b)
		}})
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := make(chan job)
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				if err := j.fn(); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	return tags, first
}

// renameRefs rewrites the ref names of a generated layout's index.json
// (img0, img1, …) as repo:img0, …: the tags of repository repo for
// ocistore serve.
func renameRefs(dir, repo string) error {
	p := filepath.Join(dir, "index.json")
	raw, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var ix manifest
	if err := json.Unmarshal(raw, &ix); err != nil {
		return err
	}
	for i := range ix.Manifests {
		a := ix.Manifests[i].Annotations
		if t, ok := a[refName]; ok {
			a[refName] = repo + ":" + t
		}
	}
	out, err := json.Marshal(ix)
	if err != nil {
		return err
	}
	return os.WriteFile(p, out, 0o644)
}
