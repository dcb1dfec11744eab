package main

// Scenario 7: pulls from a local registry. Debian's docker-registry
// (distribution 2.8) runs on 127.0.0.1 with a temporary configuration and
// storage; it is seeded, untimed, with one large image and many small ones;
// then `ocistore pull` and `skopeo copy docker://… oci:…` pull them, side by
// side, each run into a fresh empty layout.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/ocistore/ocistore/store"
	"github.com/ocistore/ocistore/store/orasstore"
)

const (
	scPull     = "pull"      // one large image
	scPullMany = "pull-many" // PullImages small images, one after the other

	pSkopeo = "skopeo"
	// pOcistoreLib pulls the small images in one process, through the
	// library: one store.Open, then orasstore + oras.Copy per image.
	pOcistoreLib = "ocistore, library, one process"

	// The repositories and tags the registry is seeded with.
	bigRepo   = "big"
	bigTag    = "v1"
	smallRepo = "small"

	// registryBinary is Debian's docker-registry package (distribution).
	registryBinary = "docker-registry"
)

var (
	pullOrder     = []string{pOcistore, pSkopeo}
	pullManyOrder = []string{pOcistore, pSkopeo, pOcistoreLib}
)

// pullCommand says, per peer, how it pulls (for the report).
var pullCommand = map[string]string{
	pOcistore:    "`ocistore -l DIR pull --plain-http HOST/REPO:TAG TAG`, one process per image",
	pSkopeo:      "`skopeo --insecure-policy copy -q --src-tls-verify=false docker://HOST/REPO:TAG oci:DIR:TAG`, one process per image",
	pOcistoreLib: "one process: `store.Open`, then per image `orasstore.New` + `oras.Copy` (concurrency 3 and `FindSuccessors: target.FindSuccessors`, as the CLI) + `Close`",
}

// --- the registry

// registryProc is a running docker-registry.
type registryProc struct {
	host string // 127.0.0.1:PORT
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// registryConfig: filesystem storage, the blob descriptor cache in memory
// (as Debian's default configuration has it), warnings only in the log (no
// line per request), deletes and upload purging off.
const registryConfig = `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
`

// startRegistry starts docker-registry on 127.0.0.1, its configuration,
// log and storage in dir (created), and waits until it answers. The
// kernel kills it if this process dies.
func startRegistry(dir string) (*registryProc, error) {
	bin, err := exec.LookPath(registryBinary)
	if err != nil {
		return nil, fmt.Errorf("%s is not installed (%v): run make tools (installs Debian's docker-registry package, as root)", registryBinary, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "storage"), 0o755); err != nil {
		return nil, err
	}
	// A free port: the registry logs the one it picks for port 0 only at
	// level info, which logs every request too.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	host := ln.Addr().String()
	ln.Close()
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(registryConfig, filepath.Join(dir, "storage"), host, hex.EncodeToString(secret))), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", conf)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	for _, kv := range os.Environ() {
		// REGISTRY_* would override the configuration.
		if !strings.HasPrefix(kv, "REGISTRY_") && !strings.HasPrefix(kv, "OTEL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	rp := &registryProc{host: host, dir: dir, cmd: cmd, done: make(chan struct{}), log: logf}
	go func() {
		_ = cmd.Wait()
		close(rp.done)
	}()
	client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return rp, nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		select {
		case <-rp.done:
			return nil, fmt.Errorf("%s exited before answering (%v); log: %s", registryBinary, err, rp.logTail())
		default:
		}
		if time.Now().After(deadline) {
			rp.stop()
			return nil, fmt.Errorf("%s does not answer GET http://%s/v2/: %v; log: %s", registryBinary, host, err, rp.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop stops the registry: SIGTERM, SIGKILL after 10 s.
func (rp *registryProc) stop() {
	_ = rp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rp.done:
	case <-time.After(10 * time.Second):
		_ = rp.cmd.Process.Kill()
		<-rp.done
	}
	rp.log.Close()
}

func (rp *registryProc) logTail() string {
	b, _ := os.ReadFile(filepath.Join(rp.dir, "registry.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

func (rp *registryProc) repository(name string) (*remote.Repository, error) {
	repo, err := remote.NewRepository(rp.host + "/" + name)
	if err != nil {
		return nil, err
	}
	repo.PlainHTTP = true
	repo.Client = &auth.Client{Client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}}
	return repo, nil
}

// --- the images the registry is seeded with

// gzipLayer is a layer's content: gzip, without compression (stored
// blocks), of size bytes from the generator (incompressible). Layers must
// be gzip: skopeo compresses a layer it finds uncompressed on its way into
// an OCI layout, which would change its digest and add work ocistore does
// not do.
func gzipLayer(w io.Writer, size int64, seed uint64) (diffID digest.Digest, err error) {
	zw, err := gzip.NewWriterLevel(w, gzip.NoCompression)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(zw, h), newBlobStream(size, seed), make([]byte, 1<<20)); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	return digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)), nil
}

// countingHash is an io.Writer that hashes and counts.
type countingHash struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// pushBlob pushes a small blob (a layer, a config) unless the registry has it.
func pushBlob(ctx context.Context, repo *remote.Repository, mt string, b []byte) (ocispec.Descriptor, error) {
	d := ocispec.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
	if ok, err := repo.Exists(ctx, d); err != nil {
		return d, err
	} else if ok {
		return d, nil
	}
	return d, repo.Push(ctx, d, bytes.NewReader(b))
}

// imageJSON returns the config and the manifest of an image of layers.
func imageJSON(label string, layers []ocispec.Descriptor, diffIDs []digest.Digest) (cfg []byte, man func(ocispec.Descriptor) []byte) {
	ids := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		ids[i] = d.String()
	}
	cfg, _ = json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
		"config": map[string]any{"Labels": map[string]string{"n": label}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": ids},
	})
	return cfg, func(c ocispec.Descriptor) []byte {
		b, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": ocispec.MediaTypeImageManifest,
			"config": c, "layers": layers,
		})
		return b
	}
}

// seedBig pushes one image of layers gzip layers, total bytes of content in
// all (each layer a little more: the gzip framing), as bigRepo:bigTag, and
// returns its manifest's digest and the bytes of its blobs. Each layer is
// generated twice (hashed, then pushed): nothing is held in memory or
// written to disk but by the registry.
func seedBig(ctx context.Context, rp *registryProc, total int64, layers int) (digest.Digest, int64, error) {
	repo, err := rp.repository(bigRepo)
	if err != nil {
		return "", 0, err
	}
	per := total / int64(layers)
	descs := make([]ocispec.Descriptor, layers)
	diffIDs := make([]digest.Digest, layers)
	var bytesAll int64
	for i := range descs {
		seed := uint64(1000 + i)
		ch := &countingHash{h: sha256.New()}
		diffIDs[i], err = gzipLayer(ch, per, seed)
		if err != nil {
			return "", 0, err
		}
		descs[i] = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.NewDigestFromBytes(digest.SHA256, ch.h.Sum(nil)), Size: ch.n}
		pr, pw := io.Pipe()
		go func() {
			_, err := gzipLayer(pw, per, seed)
			pw.CloseWithError(err)
		}()
		if err := repo.Push(ctx, descs[i], pr); err != nil {
			pr.CloseWithError(err)
			return "", 0, fmt.Errorf("push layer %d: %w", i, err)
		}
		bytesAll += ch.n
	}
	cfg, man := imageJSON("big", descs, diffIDs)
	cd, err := pushBlob(ctx, repo, ocispec.MediaTypeImageConfig, cfg)
	if err != nil {
		return "", 0, err
	}
	m := man(cd)
	md := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(m), Size: int64(len(m))}
	if err := repo.PushReference(ctx, md, bytes.NewReader(m), bigTag); err != nil {
		return "", 0, err
	}
	return md.Digest, bytesAll + cd.Size + md.Size, nil
}

// Small images: the shape of the generated layouts (bench/gen.go), with
// gzip layers: each image a manifest, a config and 5 layers of
// smallLayerSize bytes of content, 3 of them from one of 10 shared base
// sets and 2 its own.
const (
	smallLayerSize  = 4 << 10
	smallBaseSets   = 10
	smallBaseLayers = 3
	smallOwnLayers  = 2
)

// smallTag is the tag of small image i, in the registry and in the layouts.
func smallTag(i int) string { return fmt.Sprintf("img%d", i) }

// seedSmall pushes n small images as smallRepo:img0… and returns the
// digest of each one's manifest, by tag.
func seedSmall(ctx context.Context, rp *registryProc, n int) (map[string]digest.Digest, error) {
	repo, err := rp.repository(smallRepo)
	if err != nil {
		return nil, err
	}
	rng := mrand.New(mrand.NewPCG(uint64(n), 99))
	layer := func() ([]byte, digest.Digest) {
		raw := make([]byte, smallLayerSize)
		fillRandom(rng, raw)
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.NoCompression)
		zw.Write(raw)
		zw.Close()
		return b.Bytes(), digest.FromBytes(raw)
	}
	type layerBlob struct {
		b      []byte
		diffID digest.Digest
	}
	bases := make([][]layerBlob, smallBaseSets)
	for i := range bases {
		for j := 0; j < smallBaseLayers; j++ {
			b, id := layer()
			bases[i] = append(bases[i], layerBlob{b, id})
		}
	}
	own := make([][]layerBlob, n)
	for i := range own {
		for j := 0; j < smallOwnLayers; j++ {
			b, id := layer()
			own[i] = append(own[i], layerBlob{b, id})
		}
	}
	// The base layers first, then the images on 4 goroutines.
	for _, set := range bases {
		for _, l := range set {
			if _, err := pushBlob(ctx, repo, ocispec.MediaTypeImageLayerGzip, l.b); err != nil {
				return nil, err
			}
		}
	}
	want := make(map[string]digest.Digest, n)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				d, err := func() (digest.Digest, error) {
					ls := append(append([]layerBlob(nil), bases[i%smallBaseSets]...), own[i]...)
					var descs []ocispec.Descriptor
					var ids []digest.Digest
					for _, l := range ls {
						d, err := pushBlob(ctx, repo, ocispec.MediaTypeImageLayerGzip, l.b)
						if err != nil {
							return "", err
						}
						descs = append(descs, d)
						ids = append(ids, l.diffID)
					}
					cfg, man := imageJSON(strconv.Itoa(i), descs, ids)
					cd, err := pushBlob(ctx, repo, ocispec.MediaTypeImageConfig, cfg)
					if err != nil {
						return "", err
					}
					m := man(cd)
					md := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(m), Size: int64(len(m))}
					return md.Digest, repo.PushReference(ctx, md, bytes.NewReader(m), smallTag(i))
				}()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("push %s: %w", smallTag(i), err)
				}
				want[smallTag(i)] = d
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return want, firstErr
}

// --- the runs

// pullSetup is a seeded registry and the CLI built from this checkout.
type pullSetup struct {
	rp       *registryProc
	cli      string
	bigWant  digest.Digest
	bigBytes int64
	small    map[string]digest.Digest
}

// buildCLI builds the ocistore CLI of the checkout at repo into dir.
func buildCLI(repo, dir string) (string, error) {
	out := filepath.Join(dir, "ocistore")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/ocistore")
	cmd.Dir = repo
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ocistore in %s: %v: %s", repo, err, b)
	}
	return out, nil
}

// setupPull builds the CLI, starts the registry and seeds it (big: the
// large image's content in bytes, 0 for none; small: how many small
// images).
func (r *runner) setupPull(big int64, small int) (*pullSetup, error) {
	ps := &pullSetup{}
	cli, err := buildCLI(r.repo, r.work)
	if err != nil {
		return nil, err
	}
	ps.cli = cli
	regDir := filepath.Join(r.work, "registry")
	r.remove(regDir)
	ps.rp, err = startRegistry(regDir)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	t0 := time.Now()
	if big > 0 {
		if ps.bigWant, ps.bigBytes, err = seedBig(ctx, ps.rp, big, r.plan.PullLayers); err != nil {
			ps.rp.stop()
			return nil, fmt.Errorf("seed the registry: %w", err)
		}
		r.logf("registry %s: seeded %s:%s, %d layers, %d bytes, in %s", ps.rp.host, bigRepo, bigTag, r.plan.PullLayers, ps.bigBytes, time.Since(t0).Round(time.Millisecond))
	}
	if small > 0 {
		t0 = time.Now()
		if ps.small, err = seedSmall(ctx, ps.rp, small); err != nil {
			ps.rp.stop()
			return nil, fmt.Errorf("seed the registry: %w", err)
		}
		r.logf("registry %s: seeded %d small images in %s", ps.rp.host, small, time.Since(t0).Round(time.Millisecond))
	}
	syncfs(regDir)
	return ps, nil
}

// pulling runs scenario 7: the large image, then the small ones, every
// peer r.plan.Runs times, the order rotating from run to run.
func (r *runner) pulling() error {
	ps, err := r.setupPull(r.plan.PullSize, r.plan.PullImages)
	if err != nil {
		return err
	}
	defer ps.rp.stop()
	for _, c := range []struct {
		scenario string
		order    []string
	}{{scPull, pullOrder}, {scPullMany, pullManyOrder}} {
		for run := 1; run <= r.plan.Runs; run++ {
			k := (run - 1) % len(c.order)
			order := append(append([]string(nil), c.order[k:]...), c.order[:k]...)
			for _, name := range order {
				if err := r.pullOnce(ps, c.scenario, name, run); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// pullOnce runs one pull child into a fresh empty layout and checks it.
func (r *runner) pullOnce(ps *pullSetup, scenario, peerName string, run int) error {
	dir := filepath.Join(r.work, "pulled")
	r.remove(dir)
	want := map[string]digest.Digest{bigTag: ps.bigWant}
	repo, n := bigRepo, 1
	if scenario == scPullMany {
		want, repo, n = ps.small, smallRepo, len(ps.small)
	}
	// The empty layout: ocistore's made by `ocistore init` (pull wants a
	// layout), skopeo's an empty directory (it writes oci-layout and
	// index.json itself).
	if peerName == pSkopeo {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	} else if out, err := exec.Command(ps.cli, "-l", dir, "init").CombinedOutput(); err != nil {
		return fmt.Errorf("ocistore init %s: %v: %s", dir, err, out)
	}
	syncfs(dir)
	rr := r.child(scenario, peerName, n, 0, run, dir, append([]string{"-registry", ps.rp.host, "-repo", repo, "-cli", ps.cli}, r.cpuprofile...))
	last := &r.results[len(r.results)-1]
	if scenario == scPull {
		last.Bytes = ps.bigBytes
	}
	if rr.Err == "" {
		chk, err := checkPulled(dir, want)
		if chk != nil {
			last.Check = chk
		}
		if err != nil {
			last.Res.fail(fmt.Errorf("check: %w", err))
		}
	}
	r.remove(dir)
	syncfs(r.work)
	return nil
}

// checkPulled checks a layout after a pull: the consistency check (the
// graph from index.json complete, nothing else in blobs/, every tag of want
// there), each tag naming the manifest the registry has, and every blob's
// content hashing to its name.
func checkPulled(dir string, want map[string]digest.Digest) (*checkReport, error) {
	var tags []string
	for t := range want {
		tags = append(tags, t)
	}
	chk, err := checkLayout(dir, tags, nil)
	if err != nil {
		return nil, err
	}
	if !chk.IndexOK || chk.Dangling > 0 || chk.Orphans > 0 || chk.Lost > 0 || chk.Stray > 0 {
		return chk, fmt.Errorf("layout incomplete: %s", chk.short())
	}
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return chk, err
	}
	var ix manifest
	if err := json.Unmarshal(raw, &ix); err != nil {
		return chk, err
	}
	for _, d := range ix.Manifests {
		t := d.Annotations[refName]
		if w, ok := want[t]; ok && digest.Digest(d.Digest) != w {
			return chk, fmt.Errorf("tag %s: manifest %s, the registry has %s", t, d.Digest, w)
		}
	}
	bdir := filepath.Join(dir, "blobs", "sha256")
	ents, err := os.ReadDir(bdir)
	if err != nil {
		return chk, err
	}
	buf := make([]byte, 1<<20)
	for _, e := range ents {
		f, err := os.Open(filepath.Join(bdir, e.Name()))
		if err != nil {
			return chk, err
		}
		h := sha256.New()
		_, err = io.CopyBuffer(h, f, buf)
		f.Close()
		if err != nil {
			return chk, err
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != e.Name() {
			return chk, fmt.Errorf("blob %s hashes to %s", e.Name(), got)
		}
	}
	return chk, nil
}

// --- the child: one run of one peer

// pullChild pulls n images (scPull: bigRepo:bigTag; scPullMany:
// smallRepo:img0…) from host into dir, timed, and fills res: TotalMs for
// the whole, OpsMs one per image; for the command-line peers, PeakKiB is
// the largest ru_maxrss of their processes, ToolCPUMs their CPU time and
// LauncherKiB this process's resident size when it started them.
func pullChild(ctx context.Context, res *childResult, scenario, peerName, dir, host, repo, cli string, n int) error {
	tags := []string{bigTag}
	if scenario == scPullMany {
		tags = tags[:0]
		for i := 0; i < n; i++ {
			tags = append(tags, smallTag(i))
		}
	}
	if peerName == pOcistoreLib {
		return pullLibrary(ctx, res, dir, host, repo, tags)
	}
	var argv func(tag string) []string
	switch peerName {
	case pOcistore:
		argv = func(tag string) []string {
			return []string{cli, "-l", dir, "pull", "--plain-http", host + "/" + repo + ":" + tag, tag}
		}
	case pSkopeo:
		argv = func(tag string) []string {
			return []string{"skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false", "docker://" + host + "/" + repo + ":" + tag, "oci:" + dir + ":" + tag}
		}
	default:
		return fmt.Errorf("no puller %q", peerName)
	}
	if _, err := exec.LookPath(argv("x")[0]); err != nil {
		return fmt.Errorf("%s: %w (run make tools)", argv("x")[0], err)
	}
	t0 := time.Now()
	for _, tag := range tags {
		// ru_maxrss of a child started by Go (vfork) starts at this
		// process's high-water mark: lower it to the current size first.
		resetHWM()
		if rss := vmRSS(); rss > res.LauncherKiB {
			res.LauncherKiB = rss
		}
		args := argv(tag)
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = io.Discard, &stderr
		t1 := time.Now()
		err := cmd.Run()
		res.OpsMs = append(res.OpsMs, ms(time.Since(t1)))
		if cmd.ProcessState != nil {
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				res.PeakKiB = max(res.PeakKiB, ru.Maxrss)
				res.ToolCPUMs += float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e6
			}
		}
		if err != nil {
			res.fail(fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, lastLine(stderr.String())))
			break
		}
	}
	res.TotalMs = ms(time.Since(t0))
	return nil
}

// pullLibrary pulls tags in this process: one store, an orasstore target
// and an oras.Copy per image, as `ocistore pull` does in each of its
// processes (concurrency 3, each manifest's successors reserved in the
// lease at once by Target.FindSuccessors, the tag set last). The open and
// close of the store are in the time.
func pullLibrary(ctx context.Context, res *childResult, dir, host, repoName string, tags []string) error {
	t0 := time.Now()
	s, err := store.Open(ctx, dir, nil)
	if err != nil {
		return err
	}
	repo, err := remote.NewRepository(host + "/" + repoName)
	if err != nil {
		return err
	}
	repo.PlainHTTP = true
	for _, tag := range tags {
		t1 := time.Now()
		err := func() error {
			t := orasstore.New(s, nil)
			opts := oras.CopyOptions{CopyGraphOptions: oras.CopyGraphOptions{Concurrency: 3, FindSuccessors: t.FindSuccessors}}
			if _, err := oras.Copy(ctx, repo, tag, t, tag, opts); err != nil {
				_ = t.Abort(context.WithoutCancel(ctx))
				return err
			}
			return t.Close(ctx)
		}()
		res.OpsMs = append(res.OpsMs, ms(time.Since(t1)))
		if err != nil {
			res.fail(fmt.Errorf("%s: %w", tag, err))
			break
		}
	}
	if err := s.Close(); err != nil {
		res.fail(err)
	}
	res.TotalMs = ms(time.Since(t0))
	return nil
}

// resetHWM sets this process's peak resident size (VmHWM) to its current
// one (/proc/self/clear_refs, 5), so that a child it starts does not
// inherit a higher mark.
func resetHWM() {
	if f, err := os.OpenFile("/proc/self/clear_refs", os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("5")
		f.Close()
	}
}

// vmRSS reads this process's resident size, in KiB.
func vmRSS() int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// skopeoVersion is `skopeo --version`'s version, or why not.
func skopeoVersion() string {
	out, err := exec.Command("skopeo", "--version").Output()
	if err != nil {
		return "not found"
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "unknown"
	}
	return f[len(f)-1]
}

// pullMBs is a run's rate in MB/s (the bytes of the image over the time).
func pullMBs(x runResult) float64 {
	if x.Bytes == 0 || x.Res.TotalMs == 0 {
		return math.NaN()
	}
	return float64(x.Bytes) / 1e6 / (x.Res.TotalMs / 1000)
}

// registryVersion is `docker-registry --version`'s version, or why not.
func registryVersion() string {
	out, err := exec.Command(registryBinary, "--version").Output()
	if err != nil {
		return "not found"
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "unknown"
	}
	return f[len(f)-1]
}

// --- the report

// pullCPUMs is a run's CPU time: the pulling processes' for the command
// lines, the child's own for the library.
func pullCPUMs(x runResult) float64 {
	if x.Res.ToolCPUMs > 0 {
		return x.Res.ToolCPUMs
	}
	return x.CPUMs
}

func pullS(x runResult) float64 { return x.Res.TotalMs / 1000 }

// perImageMs is a run's time per image.
func perImageMs(x runResult) float64 {
	if len(x.Res.OpsMs) == 0 {
		return math.NaN()
	}
	return x.Res.TotalMs / float64(len(x.Res.OpsMs))
}

// pullWhat names a pull scenario's images.
func (r *runner) pullWhat(scenario string) string {
	if scenario == scPull {
		return fmt.Sprintf("one image of %d layers, %d MiB", r.plan.PullLayers, r.plan.PullSize>>20)
	}
	return fmt.Sprintf("%d small images", r.plan.PullImages)
}

// pullN is the N a pull scenario's results carry.
func (r *runner) pullN(scenario string) int {
	if scenario == scPull {
		return 1
	}
	return r.plan.PullImages
}

func (r *runner) writePullSection(w func(string, ...any), vers map[string]string) {
	p := r.plan
	w("\n## 7. Pull from a registry\n\n")
	w("Debian's `docker-registry` (distribution %s), started by the benchmark on 127.0.0.1 with a temporary configuration: plain HTTP, filesystem storage in the scratch directory (the file system of the layouts), the blob descriptor cache in memory (as Debian's default configuration has it), warnings only in its log. It is seeded, untimed, with %s of incompressible content (repository `%s`), and %d small images (repository `%s`, tags `img0`…: the shape of the generated layouts, each a manifest, a config and 5 layers of %d KiB, 3 of them from one of %d shared base sets). Every layer is gzip (stored blocks): skopeo compresses a layer it finds uncompressed on its way into an OCI layout, which would change the image. ",
		orUnknown(vers[registryBinary]), r.pullWhat(scPull), bigRepo, p.PullImages, smallRepo, smallLayerSize>>10, smallBaseSets)
	w("Each run pulls into a fresh empty layout on the same file system, the file system synced before it; runs rotate between peers. The %d small images are pulled one process per image on both sides, as a user's script would, into one layout; the library row pulls them in one process. After each run the layout is checked: every tag names the manifest the registry holds, the graph from index.json is complete, nothing else is in `blobs/`, and every blob hashes to its name (**check**: dangling / orphans).\n\n", p.PullImages)
	w("| peer | version | how | fsync |\n|---|---|---|---|\n")
	w("| ocistore | this checkout, the CLI built by `go build ./cmd/ocistore` | %s; the empty layout made by `ocistore init` before the clock | every blob file before its rename and `blobs/sha256` after it, the journal's commits (the lease, the lease's blobs, the tag's transaction, the lease's release), the new `index.json` and the layout directory |\n", pullCommand[pOcistore])
	w("| skopeo | `%s` (containers/image v5.23.1: the version Debian's skopeo package is built with) | %s, into an empty directory (skopeo writes `oci-layout` and `index.json`) | each layer and config file before its rename (`oci/layout` `PutBlob`); not the manifest, not `index.json` (both by `os.WriteFile`), no directory |\n", orUnknown(vers[pSkopeo]), pullCommand[pSkopeo])
	w("| %s | this checkout | %s | as ocistore |\n\n", pOcistoreLib, pullCommand[pOcistoreLib])
	var floor int64
	for _, x := range r.results {
		if x.Scenario == scPull || x.Scenario == scPullMany {
			floor = max(floor, x.Res.LauncherKiB)
		}
	}
	w("**s**: the whole pull, median [min–max]; **CPU s**: user + system time of the pulling processes. **peak RSS**: for the command lines, the largest ru_maxrss (`wait4`) of their processes; a process that Go starts (vfork) keeps its launcher's high-water mark as a floor of it, so the launcher, a small child of the benchmark, lowers its own to its resident size before each start (`/proc/self/clear_refs`): at most %.0f MiB in this run. For the library, the VmHWM of its process.\n\n", float64(floor)/1024)
	w("| images | peer | s | MB/s | ms per image | peak RSS MiB | CPU s | check | runs | note |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range []struct {
		scenario string
		order    []string
	}{{scPull, pullOrder}, {scPullMany, pullManyOrder}} {
		for _, name := range c.order {
			g := summarize(r.sel(c.scenario, name, r.pullN(c.scenario)))
			mbs := "—"
			if c.scenario == scPull {
				mbs = fmtNum(g.values(pullMBs).median())
			}
			cpu := g.values(pullCPUMs)
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", r.pullWhat(c.scenario), name, g.values(pullS).spread(), mbs, fmtNum(g.values(perImageMs).median()), g.rss(), fmtNum(cpu.median()/1000), g.checks, len(g.ok), g.status())
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// pullSummary words the pulls for the summary.
func (r *runner) pullSummary() []string {
	var out []string
	for _, sc := range []string{scPull, scPullMany} {
		n := r.pullN(sc)
		ours := r.medianOf(sc, pOcistore, n, totalMs)
		sk := r.medianOf(sc, pSkopeo, n, totalMs)
		line := fmt.Sprintf("7. pull of %s: %s", r.pullWhat(sc), ratioLine(ours, sk, pSkopeo))
		if sc == scPullMany {
			line += " (one process per image on both sides)"
			if lib := r.medianOf(sc, pOcistoreLib, n, totalMs); !math.IsNaN(lib) {
				line += fmt.Sprintf("; in one process through the library: %s s, %s ms per image", fmtNum(lib/1000), fmtNum(lib/float64(n)))
			}
		}
		out = append(out, line)
	}
	return out
}

// pullTargets are the pull rows of the targets: at least as fast as
// skopeo copy, for the large image and for the small ones.
func (r *runner) pullTargets(verdict func(ok, measured bool) string) [][3]string {
	var rows [][3]string
	for _, c := range []struct {
		scenario, label string
		full            bool // measured at the target's size
	}{
		{scPull, "pull of a 1 GiB image of 8 layers at least as fast as skopeo copy", r.plan.PullSize == 1<<30 && r.plan.PullLayers == 8},
		{scPullMany, "pull of 500 small images at least as fast as skopeo copy (one process per image on both sides)", r.plan.PullImages == 500},
	} {
		n := r.pullN(c.scenario)
		ours := r.medianOf(c.scenario, pOcistore, n, totalMs)
		sk := r.medianOf(c.scenario, pSkopeo, n, totalMs)
		m := !math.IsNaN(ours) && !math.IsNaN(sk)
		measured := "—"
		if m {
			measured = fmt.Sprintf("%.3g× (ocistore %s s, skopeo %s s", sk/ours, fmtNum(ours/1000), fmtNum(sk/1000))
			if c.scenario == scPull {
				measured += fmt.Sprintf("; %s vs %s MB/s", fmtNum(r.medianOf(c.scenario, pOcistore, n, pullMBs)), fmtNum(r.medianOf(c.scenario, pSkopeo, n, pullMBs)))
			} else {
				measured += fmt.Sprintf("; %s vs %s ms per image", fmtNum(ours/float64(n)), fmtNum(sk/float64(n)))
			}
			measured += ")"
		}
		v := verdict(ours <= sk, m && c.full)
		if m && !c.full {
			v += fmt.Sprintf(" (at %s: %s)", r.pullWhat(c.scenario), map[bool]string{true: "as fast or faster", false: "slower"}[ours <= sk])
		}
		rows = append(rows, [3]string{c.label, measured, v})
	}
	return rows
}
