package powercut

// Power cuts under `ocistore serve` (Tier 2 for the registry): the real
// binary, built with the crash points, serves a layout on the rig's ext4;
// a client (plain net/http) pushes an image as registry clients do (a
// config and a layer by monolithic POST, a baseline layer by
// cross-repository mount, a layer in chunks: POST, PATCHes, PUT), then its
// manifest by tag; the power is cut (EXT4_IOC_SHUTDOWN, NOLOGFLUSH), the
// server killed, the file system remounted, `ocistore recover` and
// `ocistore fsck --deep` run, and the layout is checked from its files and
// through a restarted server. The cases:
//
//   - acked: the cut follows the 201 of a step of the push (a blob, the
//     manifest): everything acknowledged survives, byte for byte, and an
//     acknowledged manifest's tag resolves to its digest.
//   - point: the server is paused at a crash point the manifest PUT passes
//     through (the ingest of the manifest blob, ingest-*@4 after the three
//     blobs the push ingests, then the transaction's steps; the PUT frees
//     nothing, since a moved tag leaves its old manifest as an untagged
//     entry, so no blob-unlinked), before its 201: the tag is the
//     baseline's when the cut came before the journal commit, the new
//     manifest, whole, after it; the blobs acknowledged before survive.
//     Each point is checked to be reached by the manifest PUT itself.
//   - timed: the cut comes a fraction (0 to 150%) of a manifest PUT's
//     latency after it is sent, wherever the server then is: a 201 the
//     client got survives; else either outcome, whole.
//   - upload: a chunked upload cut after some PATCHes were acknowledged
//     (202) and before its PUT: after a restart the session is either
//     resumable (GET: 204 with a Range; what it holds is a prefix of what
//     was sent; finishing it gives the blob, byte for byte) or unknown
//     (404); never a blob with other content. After a syncfs before the
//     cut it must be resumable with every byte.
//   - race and retry: a blob acknowledged because it was found present in
//     blobs/, where another push had renamed it but not yet synced its
//     directory: a push of the same blob running concurrently, paused at
//     ingest-renamed (race), or one whose server was killed there and
//     restarted (retry). The second push's 201 must survive the cut all the
//     same. (race/mount found that a mount acknowledged such a blob
//     without making its name durable: see store.MountBlob.) A retry of
//     the manifest: the server dies at a point of its PUT, restarts, and
//     the client sends the PUT again; its 201 must survive.
//
// `go test` runs a bounded set (14 cuts); OCISTORE_CRASH_FULL=1 runs, for
// a new tag and for a moved one, a cut after each acknowledged step, every
// crash point of the manifest PUT, six cut timings and three manifest
// retries, then nine uploads and six race/retry cuts of a blob (61 cuts).
// TestPowerCutServe prints one line, "tier2-serve: cuts=N crashpoints=M
// acked=A survived=S resumed=R unknown=U foreign=F violations=V": A counts
// the pushes (blobs and manifests) acknowledged before a cut, S those
// found whole after it, R and U the cut uploads that were resumed or
// unknown after the restart. OCISTORE_POWERCUT_MUTANT turns fsyncs off in
// the binary, as for TestPowerCut (ingest-file or ingest-dir: hundreds of
// violations, resp. some thirty).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/gen"
)

// The baseline of TestPowerCutServe: 12 images over 3 repositories
// (example.com/repo0..2, tags v0..v3).
var serveBaseline = gen.Spec{Images: 12, Repos: 3, LayerSize: 1024, Seed: 21}

const (
	// The pushed image's repository and tag: a new tag, or one of the
	// baseline that the push moves (its old manifest stays, untagged).
	serveRepoNew, serveTagNew   = "example.com/app", "v1"
	serveRepoMove, serveTagMove = "example.com/repo1", "v0"

	serveChunk   = 64 << 10 // bytes per chunk of a chunked upload
	serveChunks  = 4        // chunks of the chunked layer
	serveMonoLen = 48 << 10 // bytes of the monolithic layer

	httpTimeout = 30 * time.Second // for one request to a server that is not paused
)

// The steps of a push, in order, after each of which an acked case may cut.
const (
	stepConfig   = "config"   // the config, monolithic POST ?digest=
	stepLayer    = "layer"    // a layer, monolithic POST ?digest=
	stepMount    = "mount"    // a baseline layer, POST ?mount=&from=
	stepChunked  = "chunked"  // a layer in chunks: POST, PATCH x3, PUT with the last chunk
	stepManifest = "manifest" // PUT /v2/<repo>/manifests/<tag>
)

var pushSteps = []string{stepConfig, stepLayer, stepMount, stepChunked, stepManifest}

// blobIngests is how many blobs a push ingests before its manifest (the
// mount ingests nothing): the manifest blob's ingest is the next one, the
// K of its ingest crash points.
const blobIngests = 3

// The kinds of srvCase.
const (
	srvAcked  = "acked"
	srvPoint  = "point"
	srvTimed  = "timed"
	srvUpload = "upload"
	srvRace   = "race"
	srvRetry  = "retry"
)

// srvCase is one cut under `ocistore serve`.
type srvCase struct {
	kind  string
	move  bool   // the manifest moves a baseline tag (else its tag is new)
	after string // acked: the step whose 201 the cut follows
	point string // point: NAME@K armed (pause) in the server
	// timed: the cut comes this fraction of a manifest PUT's latency
	// (measured by the acked case of the manifest) after it is sent.
	frac float64
	// upload: the chunks acknowledged (202) before the cut, and what comes
	// between the last one and the cut: nothing, "syncfs" (everything made
	// durable) or "push" (another blob's push, whose fsyncs commit ext4's
	// journal).
	patches int
	sync    string
	// race, retry: how the second push of the blob goes: "monolithic",
	// "chunked" or "mount"; retry: "manifest" pushes the image, the
	// server dies at point in the manifest PUT, and the PUT is sent again.
	via string
}

func (c srvCase) String() string {
	v := "new"
	if c.move {
		v = "move"
	}
	switch c.kind {
	case srvAcked:
		return v + "/acked@" + c.after
	case srvPoint:
		return v + "/" + c.point
	case srvTimed:
		return v + fmt.Sprintf("/timed@%.0f%%", 100*c.frac)
	case srvUpload:
		s := fmt.Sprintf("upload/%d-patches", c.patches)
		if c.sync != "" {
			s += "/" + c.sync
		}
		return s
	}
	if c.via == "manifest" {
		return v + "/" + c.kind + "/" + c.via + "/" + c.point
	}
	return c.kind + "/" + c.via
}

// committed reports what a point case's manifest must be after recovery:
// 1 the new one (the journal commit came before the cut), -1 the baseline.
func (c srvCase) committed() int {
	if pointRank[pointName(c.point)] >= pointRank[crash.TxnJournaled] {
		return 1
	}
	return -1
}

// serveCases lists the cuts.
func serveCases(full bool) []srvCase {
	at := func(name string, k int) string { return name + "@" + strconv.Itoa(k) }
	mi := blobIngests + 1 // the manifest blob's ingest
	// Every crash point a manifest PUT by tag passes through: the ingest
	// of the manifest blob, then the transaction. It frees nothing (a
	// moved tag leaves its old manifest as an untagged entry): no
	// blob-unlinked, no trash-unlinked.
	points := []string{at(crash.IngestWritten, mi), at(crash.IngestRenamed, mi), at(crash.IngestSynced, mi),
		crash.IndexTempWritten, crash.TxnJournaled, crash.IndexRenamed, crash.IndexSynced, crash.BlobDirSynced, crash.TxnCleared}
	if !full {
		return []srvCase{
			{kind: srvAcked, after: stepChunked},
			{kind: srvAcked, after: stepManifest},
			{kind: srvPoint, point: at(crash.IngestSynced, mi)},
			{kind: srvPoint, move: true, point: crash.TxnJournaled},
			{kind: srvPoint, point: crash.IndexRenamed},
			{kind: srvPoint, move: true, point: crash.TxnCleared},
			{kind: srvTimed, frac: 0.5},
			{kind: srvUpload, patches: 2},
			{kind: srvUpload, patches: 2, sync: "push"},
			{kind: srvUpload, patches: 1, sync: "syncfs"},
			{kind: srvRace, via: "mount"},
			{kind: srvRace, via: "chunked"},
			{kind: srvRetry, via: "monolithic"},
			{kind: srvRetry, via: "manifest", point: at(crash.IngestRenamed, mi)},
		}
	}
	var out []srvCase
	for _, move := range []bool{false, true} {
		for _, s := range pushSteps {
			out = append(out, srvCase{kind: srvAcked, move: move, after: s})
		}
		for _, p := range points {
			out = append(out, srvCase{kind: srvPoint, move: move, point: p})
		}
		for _, f := range []float64{0, 0.25, 0.5, 0.75, 1, 1.5} {
			out = append(out, srvCase{kind: srvTimed, move: move, frac: f})
		}
	}
	for k := 1; k <= serveChunks-1; k++ {
		for _, s := range []string{"", "push", "syncfs"} {
			out = append(out, srvCase{kind: srvUpload, patches: k, sync: s})
		}
	}
	for _, kind := range []string{srvRace, srvRetry} {
		for _, via := range []string{"monolithic", "chunked", "mount"} {
			out = append(out, srvCase{kind: kind, via: via})
		}
	}
	for _, move := range []bool{false, true} {
		for _, p := range []string{at(crash.IngestRenamed, mi), crash.TxnJournaled, crash.IndexRenamed} {
			out = append(out, srvCase{kind: srvRetry, move: move, via: "manifest", point: p})
		}
	}
	return out
}

// srvBase is the baseline layout (outside the rig) every case starts from.
type srvBase struct {
	template  string
	before    *State
	mount     digest.Digest // a baseline layer that pushes mount
	mountSize int64
	mountFrom string // its repository
	// moveOld is the manifest the moved tag names in the baseline: it
	// stays as an untagged entry once the tag moves.
	moveOld string
}

// pushBlob is a blob a case pushes.
type pushBlob struct {
	mediaType string
	data      []byte
	d         digest.Digest
}

func newPushBlob(mt string, data []byte) pushBlob {
	return pushBlob{mediaType: mt, data: data, d: digest.FromBytes(data)}
}

func (b pushBlob) desc() v1.Descriptor {
	return v1.Descriptor{MediaType: b.mediaType, Digest: b.d, Size: int64(len(b.data))}
}

// srvImage is what a case pushes: its content is the case's own (seeded by
// the case number), so that no blob of an earlier case on the rig can pass
// for one of it.
type srvImage struct {
	repo, tag             string
	config, mono, chunked pushBlob
	manifest              []byte
	md                    digest.Digest
}

func (img *srvImage) ref() string { return img.repo + ":" + img.tag }

func (b *srvBase) image(seed uint64, move bool) *srvImage {
	rng := rand.New(rand.NewPCG(seed, 0x5e4e))
	random := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		return p
	}
	img := &srvImage{repo: serveRepoNew, tag: serveTagNew}
	if move {
		img.repo, img.tag = serveRepoMove, serveTagMove
	}
	img.config = newPushBlob(v1.MediaTypeImageConfig, fmt.Appendf(nil,
		`{"architecture":"amd64","os":"linux","config":{"Labels":{"case":"%d"}},"rootfs":{"type":"layers","diff_ids":[]}}`, seed))
	img.mono = newPushBlob(v1.MediaTypeImageLayerGzip, random(serveMonoLen))
	img.chunked = newPushBlob(v1.MediaTypeImageLayerGzip, random(serveChunk*serveChunks))
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		Config: img.config.desc(),
		Layers: []v1.Descriptor{{MediaType: v1.MediaTypeImageLayerGzip, Digest: b.mount, Size: b.mountSize}, img.mono.desc(), img.chunked.desc()}}
	img.manifest, _ = json.Marshal(m)
	img.md = digest.FromBytes(img.manifest)
	return img
}

// srvExpect is what a case did before its cut, and so what must hold after.
type srvExpect struct {
	img   *srvImage
	acked map[digest.Digest]int64 // blobs acknowledged (201) before the cut, with their sizes
	// sent: the manifest PUT was sent; ackedManifest: its 201 came back.
	sent, ackedManifest bool
	committed           int // 1: the manifest must be there after recovery; -1: it must not; 0: either
	upload              *cutUpload
}

// cutUpload is an upload session the cut interrupted.
type cutUpload struct {
	id, location string
	blob         pushBlob
	acked        int64 // bytes acknowledged by 202s
	mustResume   bool  // everything was synced before the cut
}

// srvHarness runs the cases of TestPowerCutServe on a harness (its rig,
// binary, violation list).
type srvHarness struct {
	*harness
	base *srvBase
	// acked counts the pushes acknowledged before a cut, survived those
	// found whole after it; resumed and unknown the cut uploads.
	acked, survived, resumed, unknown int
	// putLatency is how long the last manifest PUT cut after its 201 took.
	putLatency time.Duration
}

func TestPowerCutServe(t *testing.T) {
	full := os.Getenv(envFull) == "1"
	start := time.Now()
	h := &srvHarness{harness: newHarness(t, os.Getenv(envMutant))}
	h.base = h.prepareServe()
	all := serveCases(full)
	defer func() {
		fmt.Printf("tier2-serve: cuts=%d crashpoints=%d acked=%d survived=%d resumed=%d unknown=%d foreign=%d violations=%d\n",
			h.cuts(), len(h.points), h.acked, h.survived, h.resumed, h.unknown, h.foreign, len(h.violations))
	}()
	deadline, hasDeadline := t.Deadline()
	for _, c := range all {
		if hasDeadline && time.Until(deadline) < 30*time.Second {
			t.Errorf("stopping before the test deadline: %d of %d cases run", h.n, len(all))
			break
		}
		h.runServeCase(c)
		if h.errs > 0 {
			break // a harness error (not a violation): stop at the first
		}
	}
	names := make([]string, 0, len(h.points))
	for p := range h.points {
		names = append(names, p)
	}
	sort.Strings(names)
	t.Logf("%d cases, %d cuts, %d remounts in %s (%s); crash points reached: %s; acknowledged %d, survived %d; uploads resumed %d, unknown %d",
		h.n, h.cuts(), h.rig.Mounts, time.Since(start).Round(time.Millisecond), map[bool]string{true: "full", false: "bounded"}[full],
		strings.Join(names, " "), h.acked, h.survived, h.resumed, h.unknown)
	for _, v := range h.violations {
		t.Errorf("violation: %s", v)
	}
}

// prepareServe writes the baseline outside the rig and has ocistore adopt
// it.
func (h *srvHarness) prepareServe() *srvBase {
	t := h.t
	t.Helper()
	b := &srvBase{template: filepath.Join(h.tmp, "serve", "template")}
	if _, err := gen.Write(b.template, serveBaseline); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := h.ocistore("-l", b.template, "recover"); code != 0 {
		t.Fatalf("adopting the serve baseline: exit %d: %s", code, errOut)
	}
	h.mustClean(b.template, "serve baseline")
	var err error
	if b.before, err = ReadState(b.template); err != nil {
		t.Fatal(err)
	}
	readManifest := func(ref string) v1.Manifest {
		d := digest.Digest(b.before.Tags[ref])
		raw, err := os.ReadFile(filepath.Join(b.template, "blobs", d.Algorithm().String(), d.Encoded()))
		if err != nil {
			t.Fatalf("serve baseline: %s: %v", ref, err)
		}
		var m v1.Manifest
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	b.mountFrom = "example.com/repo0"
	first := readManifest(b.mountFrom + ":v0")
	b.mount, b.mountSize = first.Layers[0].Digest, first.Layers[0].Size
	moveRef := serveRepoMove + ":" + serveTagMove
	if b.moveOld = b.before.Tags[moveRef]; b.moveOld == "" {
		t.Fatalf("serve baseline: no tag %s", moveRef)
	}
	t.Logf("serve baseline: %d images, %d blobs", len(b.before.Tags), len(b.before.Blobs))
	return b
}

// regClient talks to one `ocistore serve` process.
type regClient struct {
	base string // http://127.0.0.1:PORT
	tr   *http.Transport
	c    *http.Client
}

func newRegClient(base string) *regClient {
	tr := &http.Transport{MaxIdleConnsPerHost: 4}
	return &regClient{base: base, tr: tr, c: &http.Client{Transport: tr}}
}

func (rc *regClient) close() { rc.tr.CloseIdleConnections() }

// reply is a response, read whole.
type reply struct {
	code int
	h    http.Header
	body []byte
}

func (r reply) String() string {
	return fmt.Sprintf("%d %.300s", r.code, bytes.TrimSpace(r.body))
}

// do sends one request (headers as key, value pairs) and reads the whole
// response. Without a deadline in ctx it gives up after httpTimeout.
func (rc *regClient) do(ctx context.Context, method, path string, body []byte, hdr ...string) (reply, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, httpTimeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, rc.base+path, rd)
	if err != nil {
		return reply{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := rc.c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{code: resp.StatusCode, h: resp.Header, body: b}, nil
}

// expect sends a request and fails unless the status is want.
func (rc *regClient) expect(want int, method, path string, body []byte, hdr ...string) (reply, error) {
	r, err := rc.do(context.Background(), method, path, body, hdr...)
	if err != nil {
		return r, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if r.code != want {
		return r, fmt.Errorf("%s %s: %s, want %d", method, path, r, want)
	}
	return r, nil
}

const octets = "application/octet-stream"

// monolithic pushes a blob in one POST.
func (rc *regClient) monolithic(repo string, b pushBlob) error {
	_, err := rc.expect(http.StatusCreated, http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+b.d.String(), b.data, "Content-Type", octets)
	return err
}

// mount mounts a blob from another repository.
func (rc *regClient) mount(repo string, d digest.Digest, from string) error {
	_, err := rc.expect(http.StatusCreated, http.MethodPost, "/v2/"+repo+"/blobs/uploads/?mount="+d.String()+"&from="+from, nil)
	return err
}

// startUpload opens a session: its Location.
func (rc *regClient) startUpload(repo string) (string, error) {
	r, err := rc.expect(http.StatusAccepted, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil)
	if err != nil {
		return "", err
	}
	loc := r.h.Get("Location")
	if !strings.HasPrefix(loc, "/v2/") {
		return "", fmt.Errorf("POST upload: Location %q", loc)
	}
	return loc, nil
}

// patch sends data[from:to] to the session.
func (rc *regClient) patch(loc string, data []byte, from, to int) error {
	r, err := rc.expect(http.StatusAccepted, http.MethodPatch, loc, data[from:to],
		"Content-Type", octets, "Content-Range", fmt.Sprintf("%d-%d", from, to-1))
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("0-%d", to-1); r.h.Get("Range") != want {
		return fmt.Errorf("PATCH %s: Range %q, want %q", loc, r.h.Get("Range"), want)
	}
	return nil
}

// finish ends the session with data[from:] and the digest.
func (rc *regClient) finish(loc string, data []byte, from int, d digest.Digest) error {
	var hdr []string
	if from < len(data) {
		hdr = []string{"Content-Type", octets, "Content-Range", fmt.Sprintf("%d-%d", from, len(data)-1)}
	}
	_, err := rc.expect(http.StatusCreated, http.MethodPut, loc+"?digest="+d.String(), data[from:], hdr...)
	return err
}

// chunked pushes a blob in serveChunks chunks: POST, PATCHes, and a PUT
// with the last one.
func (rc *regClient) chunked(repo string, b pushBlob) error {
	loc, err := rc.startUpload(repo)
	if err != nil {
		return err
	}
	n := len(b.data) / serveChunks
	for i := 0; i < serveChunks-1; i++ {
		if err := rc.patch(loc, b.data, i*n, (i+1)*n); err != nil {
			return err
		}
	}
	return rc.finish(loc, b.data, (serveChunks-1)*n, b.d)
}

// putManifest sends the manifest PUT by tag; the caller decides what its
// outcome means.
func (rc *regClient) putManifest(ctx context.Context, img *srvImage) (reply, error) {
	return rc.do(ctx, http.MethodPut, "/v2/"+img.repo+"/manifests/"+img.tag, img.manifest, "Content-Type", v1.MediaTypeImageManifest)
}

// pushUpTo runs the push's steps before the manifest up to and including
// last, noting each blob acknowledged.
func (h *srvHarness) pushUpTo(rc *regClient, img *srvImage, last string, exp *srvExpect) error {
	for _, s := range pushSteps {
		if s == stepManifest {
			return nil
		}
		var err error
		var d digest.Digest
		var size int64
		switch s {
		case stepConfig:
			d, size, err = img.config.d, int64(len(img.config.data)), rc.monolithic(img.repo, img.config)
		case stepLayer:
			d, size, err = img.mono.d, int64(len(img.mono.data)), rc.monolithic(img.repo, img.mono)
		case stepMount:
			d, size, err = h.base.mount, h.base.mountSize, rc.mount(img.repo, h.base.mount, h.base.mountFrom)
		case stepChunked:
			d, size, err = img.chunked.d, int64(len(img.chunked.data)), rc.chunked(img.repo, img.chunked)
		}
		if err != nil {
			return fmt.Errorf("step %s: %w", s, err)
		}
		exp.acked[d] = size
		if s == last {
			return nil
		}
	}
	return nil
}

// server is a running `ocistore serve`.
type server struct {
	p  *proc
	rc *regClient
}

// startServe starts `ocistore serve` on dir, point armed (paused or
// killing, as pause says), and waits for the line that says where it
// listens.
func (h *srvHarness) startServe(dir, point string, pause bool) (*server, error) {
	p := h.startArmed(point, pause, "-l", dir, "serve", "--listen", "127.0.0.1:0", "--gc-interval", "0")
	deadline := time.Now().Add(pauseTimeout)
	for {
		out := p.stderr.String()
		if i := strings.Index(out, "ocistore: serving "); i >= 0 {
			line, _, complete := strings.Cut(out[i:], "\n")
			if _, u, ok := strings.Cut(line, " on "); ok && complete {
				if !strings.HasPrefix(u, "http://127.0.0.1:") {
					p.kill()
					return nil, fmt.Errorf("serve: listening on %q", u)
				}
				return &server{p: p, rc: newRegClient(u)}, nil
			}
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("serve exited (%v) before it listened: %s", p.err, out)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("serve did not listen within %s: %s", pauseTimeout, out)
		}
	}
}

// stop stops a server gracefully (SIGTERM), killing it if it lingers.
func (s *server) stop() error {
	s.rc.close()
	_ = s.p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.p.done:
	case <-time.After(runTimeout):
		s.p.kill()
		return fmt.Errorf("serve did not stop within %s of SIGTERM", runTimeout)
	}
	if code := s.p.code(); code != 0 {
		return fmt.Errorf("serve exit status %d after SIGTERM: %s", code, s.p.stderr.String())
	}
	return nil
}

// cutUnder cuts the power under a server, kills it and remounts.
func (h *srvHarness) cutUnder(s *server) error {
	err := h.cut(s.p, false)
	s.rc.close()
	return err
}

// runServeCase runs one case: the push and the cut, then the checks.
func (h *srvHarness) runServeCase(c srvCase) {
	h.n++
	name := c.String()
	start := time.Now()
	dir := filepath.Join(h.rig.Mnt, fmt.Sprintf("s%03d", h.n))
	if err := copyTree(h.base.template, dir); err != nil {
		h.errorf("%s: %v", name, err)
		return
	}
	if err := h.rig.Sync(); err != nil { // the baseline is on disk
		h.errorf("%s: syncfs: %v", name, err)
		return
	}
	exp := &srvExpect{img: h.base.image(uint64(h.n), c.move), acked: map[digest.Digest]int64{}}
	var err error
	switch c.kind {
	case srvAcked:
		err = h.cutAcked(c, dir, exp)
	case srvPoint:
		err = h.cutAtPoint(c, dir, exp)
	case srvTimed:
		err = h.cutTimed(c, dir, exp)
	case srvUpload:
		err = h.cutUpload(c, dir, exp)
	case srvRace:
		err = h.cutRace(c, dir, exp)
	case srvRetry:
		err = h.cutRetry(c, dir, exp)
	}
	if err != nil {
		h.errorf("%s: %v", name, err)
		return
	}
	state := h.check(name, dir, exp)
	h.t.Logf("%-38s %6s  %s", name, time.Since(start).Round(time.Millisecond), state)
	if err := os.RemoveAll(dir); err != nil {
		h.errorf("%s: %v", name, err)
	}
}

// cutAcked pushes up to a step and cuts right after its 201.
func (h *srvHarness) cutAcked(c srvCase, dir string, exp *srvExpect) error {
	s, err := h.startServe(dir, "", true)
	if err != nil {
		return err
	}
	if err := h.pushUpTo(s.rc, exp.img, c.after, exp); err != nil {
		s.p.kill()
		return err
	}
	if c.after == stepManifest {
		exp.sent = true
		start := time.Now()
		r, err := s.rc.putManifest(context.Background(), exp.img)
		h.putLatency = time.Since(start)
		if err != nil || r.code != http.StatusCreated {
			s.p.kill()
			return fmt.Errorf("manifest PUT: %v %v", r, err)
		}
		if got := r.h.Get("Docker-Content-Digest"); got != exp.img.md.String() {
			s.p.kill()
			return fmt.Errorf("manifest PUT: Docker-Content-Digest %s, want %s", got, exp.img.md)
		}
		exp.ackedManifest = true
	}
	return h.cutUnder(s)
}

// manifestPUT sends the manifest PUT in the background.
func manifestPUT(ctx context.Context, rc *regClient, img *srvImage) <-chan putResult {
	ch := make(chan putResult, 1)
	go func() {
		r, err := rc.putManifest(ctx, img)
		ch <- putResult{r, err}
	}()
	return ch
}

type putResult struct {
	r   reply
	err error
}

// cutAtPoint pushes the blobs, then the manifest with the server armed to
// pause at the case's crash point, and cuts there.
func (h *srvHarness) cutAtPoint(c srvCase, dir string, exp *srvExpect) error {
	s, err := h.startServe(dir, c.point, true)
	if err != nil {
		return err
	}
	if err := h.pushUpTo(s.rc, exp.img, stepChunked, exp); err != nil {
		s.p.kill()
		return err
	}
	select {
	case <-s.p.stderr.hit:
		s.p.kill()
		return fmt.Errorf("the server reached %s before the manifest PUT", c.point)
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exp.sent = true
	res := manifestPUT(ctx, s.rc, exp.img)
	select {
	case <-s.p.stderr.hit:
	case r := <-res:
		s.p.kill()
		return fmt.Errorf("the manifest PUT did not reach %s: it returned %v %v", c.point, r.r, r.err)
	case <-time.After(pauseTimeout):
		s.p.kill()
		return fmt.Errorf("%s not reported within %s: %s", c.point, pauseTimeout, s.p.stderr.String())
	}
	h.points[pointName(c.point)] = true
	exp.committed = c.committed()
	err = h.cutUnder(s)
	cancel()
	if r := <-res; r.err == nil && r.r.code == http.StatusCreated {
		return fmt.Errorf("the manifest PUT paused at %s returned 201", c.point)
	}
	return err
}

// cutTimed cuts a while after the manifest PUT is sent, wherever the server
// then is.
func (h *srvHarness) cutTimed(c srvCase, dir string, exp *srvExpect) error {
	s, err := h.startServe(dir, "", true)
	if err != nil {
		return err
	}
	if err := h.pushUpTo(s.rc, exp.img, stepChunked, exp); err != nil {
		s.p.kill()
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exp.sent = true
	latency := h.putLatency
	if latency == 0 {
		latency = 10 * time.Millisecond
	}
	delay := time.Duration(c.frac * float64(latency))
	res := manifestPUT(ctx, s.rc, exp.img)
	time.Sleep(delay)
	if err := h.rig.Cut(); err != nil {
		s.p.kill()
		return err
	}
	r := <-res // the server fails (EIO) or has answered; the timeout bounds it
	exp.ackedManifest = r.err == nil && r.r.code == http.StatusCreated
	s.p.kill()
	s.rc.close()
	h.t.Logf("cut %s after the manifest PUT (%.0f%% of %s): %v %v", delay, 100*c.frac, latency, r.r, r.err)
	return h.rig.Remount()
}

// cutUpload starts a chunked upload, has some chunks acknowledged, and cuts
// before its end.
func (h *srvHarness) cutUpload(c srvCase, dir string, exp *srvExpect) error {
	s, err := h.startServe(dir, "", true)
	if err != nil {
		return err
	}
	b := exp.img.chunked
	loc, err := s.rc.startUpload(exp.img.repo)
	if err != nil {
		s.p.kill()
		return err
	}
	u := &cutUpload{location: loc, id: loc[strings.LastIndexByte(loc, '/')+1:], blob: b}
	for i := 0; i < c.patches; i++ {
		if err := s.rc.patch(loc, b.data, i*serveChunk, (i+1)*serveChunk); err != nil {
			s.p.kill()
			return err
		}
		u.acked = int64((i + 1) * serveChunk)
	}
	switch c.sync {
	case "syncfs":
		if err := h.rig.Sync(); err != nil {
			s.p.kill()
			return err
		}
		u.mustResume = true
	case "push":
		if err := h.pushUpTo(s.rc, exp.img, stepLayer, exp); err != nil {
			s.p.kill()
			return err
		}
	}
	exp.upload = u
	return h.cutUnder(s)
}

// pushVia pushes a blob the way via says.
func (h *srvHarness) pushVia(rc *regClient, via, repo string, b pushBlob) error {
	switch via {
	case "monolithic":
		return rc.monolithic(repo, b)
	case "chunked":
		return rc.chunked(repo, b)
	case "mount":
		return rc.mount(repo, b.d, repo)
	}
	return fmt.Errorf("push via %q?", via)
}

// cutRace pauses a blob's push right after its rename into blobs/ (the
// directory not synced), has a second push of the same blob acknowledged
// meanwhile, and cuts.
func (h *srvHarness) cutRace(c srvCase, dir string, exp *srvExpect) error {
	point := crash.IngestRenamed + "@1"
	s, err := h.startServe(dir, point, true)
	if err != nil {
		return err
	}
	b := exp.img.mono
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := make(chan error, 1)
	go func() {
		_, err := s.rc.do(ctx, http.MethodPost, "/v2/"+exp.img.repo+"/blobs/uploads/?digest="+b.d.String(), b.data, "Content-Type", octets)
		first <- err
	}()
	select {
	case <-s.p.stderr.hit:
	case err := <-first:
		s.p.kill()
		return fmt.Errorf("the first push did not reach %s: %v", point, err)
	case <-time.After(pauseTimeout):
		s.p.kill()
		return fmt.Errorf("%s not reported within %s", point, pauseTimeout)
	}
	h.points[crash.IngestRenamed] = true
	if err := h.pushVia(s.rc, c.via, "example.com/other", b); err != nil {
		s.p.kill()
		return fmt.Errorf("the second push, while the first is paused at %s: %w", point, err)
	}
	exp.acked[b.d] = int64(len(b.data))
	err = h.cutUnder(s)
	cancel()
	<-first
	return err
}

// cutRetry kills the server at a crash point (in its default mode: the
// process SIGKILLs itself), restarts it, has the client push again what
// failed, and cuts after its 201. For a blob (via monolithic, chunked or
// mount) the point is its rename into blobs/, the directory not synced;
// for the manifest (via manifest) it is the case's point, reached by the
// manifest PUT after the blobs were pushed.
func (h *srvHarness) cutRetry(c srvCase, dir string, exp *srvExpect) error {
	point := c.point
	if point == "" {
		point = crash.IngestRenamed + "@1"
	}
	s, err := h.startServe(dir, point, false)
	if err != nil {
		return err
	}
	b := exp.img.mono
	var r reply
	if c.via == "manifest" {
		if err := h.pushUpTo(s.rc, exp.img, stepChunked, exp); err != nil {
			s.p.kill()
			return err
		}
		exp.sent = true
		r, err = s.rc.putManifest(context.Background(), exp.img)
	} else {
		r, err = s.rc.do(context.Background(), http.MethodPost, "/v2/"+exp.img.repo+"/blobs/uploads/?digest="+b.d.String(), b.data, "Content-Type", octets)
	}
	if err == nil {
		s.p.kill()
		return fmt.Errorf("the push armed to die at %s returned %v", point, r)
	}
	select {
	case <-s.p.done:
	case <-time.After(pauseTimeout):
		s.p.kill()
		return fmt.Errorf("the server armed to die at %s lives on", point)
	}
	s.rc.close()
	if st, ok := s.p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !st.Signaled() || st.Signal() != syscall.SIGKILL {
		return fmt.Errorf("the server armed to die at %s ended otherwise: %v", point, s.p.err)
	}
	h.points[pointName(point)] = true
	if s, err = h.startServe(dir, "", true); err != nil {
		return err
	}
	if c.via == "manifest" {
		r, err := s.rc.putManifest(context.Background(), exp.img)
		if err != nil || r.code != http.StatusCreated {
			s.p.kill()
			return fmt.Errorf("the manifest PUT again after a restart: %v %v", r, err)
		}
		exp.ackedManifest = true
	} else {
		if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", b.d.Encoded())); err != nil {
			s.p.kill()
			return fmt.Errorf("the server killed at %s left no blob: %v", point, err)
		}
		if err := h.pushVia(s.rc, c.via, exp.img.repo, b); err != nil {
			s.p.kill()
			return fmt.Errorf("the push again after a restart: %w", err)
		}
		exp.acked[b.d] = int64(len(b.data))
	}
	return h.cutUnder(s)
}

// fsckFinding is a finding of `ocistore fsck --format json`.
type fsckFinding struct {
	Kind     string `json:"kind"`
	Severity string `json:"severity"`
	Digest   string `json:"digest"`
	Path     string `json:"path"`
	Detail   string `json:"detail"`
}

// fsckClean runs fsck --deep on dir: nil when it exits 0 with no problem
// (notices, such as an orphan left by a push cut before its manifest, are
// normal).
func (h *srvHarness) fsckClean(dir string) error {
	out, errOut, code := h.ocistore("-l", dir, "fsck", "--deep", "--format", "json")
	var rep struct {
		Problems []fsckFinding `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return fmt.Errorf("exit %d, output does not parse (%v): %s %s", code, err, out, errOut)
	}
	var probs []string
	for _, p := range rep.Problems {
		if p.Severity != "notice" {
			probs = append(probs, fmt.Sprintf("%s %s %s: %s", p.Kind, p.Digest, p.Path, p.Detail))
		}
	}
	switch {
	case len(probs) > 0:
		return fmt.Errorf("exit %d: %d problems: %s", code, len(probs), abbrev(probs))
	case code != 0:
		return fmt.Errorf("exit %d with no problem: %s", code, errOut)
	}
	return nil
}

// blobOK checks that dir holds the blob d, size bytes that hash to d.
func blobOK(dir string, d digest.Digest, size int64) error {
	b, err := os.ReadFile(filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded()))
	if err != nil {
		return err
	}
	if int64(len(b)) != size {
		return fmt.Errorf("%d bytes, %d acknowledged", len(b), size)
	}
	if got := d.Algorithm().FromBytes(b); got != d {
		return fmt.Errorf("content hashes to %s", got)
	}
	return nil
}

// check recovers the layout a cut left and checks it: from its files, then
// through a restarted server. It returns what it saw, for the log.
func (h *srvHarness) check(name, dir string, exp *srvExpect) (state string) {
	before := h.base.before
	complete := &State{Tags: map[string]string{}}
	for k, v := range before.Tags {
		complete.Tags[k] = v
	}
	complete.Tags[exp.img.ref()] = exp.img.md.String()
	if old := before.Tags[exp.img.ref()]; old != "" {
		complete.Tags["<none>@"+old] = old // a moved tag leaves its manifest untagged
	}

	var bad []violation
	fail := func(kind, format string, args ...any) {
		bad = append(bad, violation{cas: name, kind: kind, detail: fmt.Sprintf(format, args...)})
	}
	defer func() {
		h.violations = append(h.violations, bad...)
	}()

	// What the cut left, before any recovery.
	if err := h.foreignCheck(dir); err != nil {
		fail("foreign", "after the cut, before recovery: %v", err)
	}
	pre, err := ReadState(dir)
	if err != nil {
		h.errorf("%s: %v", name, err)
		return
	}
	state = "index.json after the cut: " + h.whichIndex(pre, complete)

	out, errOut, code := h.ocistore("-l", dir, "recover", "--format", "json")
	var rec recoverReport
	if code != 0 || json.Unmarshal([]byte(out), &rec) != nil {
		fail("recover-failed", "exit %d: %s %s", code, out, errOut)
	}
	var kinds []string
	for _, a := range rec.Actions {
		h.actions[a.Kind]++
		kinds = append(kinds, a.Kind)
	}
	state += "; recover did [" + strings.Join(kinds, " ") + "]"
	if err := h.fsckClean(dir); err != nil {
		fail("fsck", "%v", err)
	}
	got, err := ReadState(dir)
	if err != nil {
		h.errorf("%s: %v", name, err)
		return
	}
	if len(got.Problems) > 0 {
		fail("closure", "%s", strings.Join(got.Problems, "; "))
	}
	isBefore, isComplete := SameTags(got, before), SameTags(got, complete)
	switch {
	case !isBefore && !isComplete:
		fail("atomicity", "tags are neither the baseline nor the baseline with %s: vs baseline: %s; vs complete: %s",
			exp.img.ref(), DiffTags(got, before), DiffTags(got, complete))
	case exp.ackedManifest && !isComplete:
		fail("durability", "the manifest PUT of %s was acknowledged (201), but the tag is the baseline's after the cut", exp.img.ref())
	case exp.committed > 0 && !isComplete:
		fail("durability", "the manifest's transaction was journaled before the cut, but the tag is the baseline's")
	case (exp.committed < 0 || !exp.sent) && !isBefore:
		fail("atomicity", "the manifest took effect although the cut came before its journal commit (or it was never sent)")
	}
	for d, size := range exp.acked {
		h.acked++
		if err := blobOK(dir, d, size); err != nil {
			fail("durability", "blob %s, acknowledged with 201 before the cut: %v", d, err)
			continue
		}
		h.survived++
	}
	if exp.ackedManifest {
		h.acked++
		if isComplete {
			h.survived++
		}
	}
	// A second recovery has nothing to do.
	out, errOut, code = h.ocistore("-l", dir, "recover", "--format", "json")
	var rec2 recoverReport
	if code != 0 || json.Unmarshal([]byte(out), &rec2) != nil {
		fail("recover-failed", "second recover: exit %d: %s %s", code, out, errOut)
	} else if len(rec2.Actions) > 0 {
		fail("idempotence", "second recover did something: %s", strings.TrimSpace(out))
	}

	// Through a restarted server: the tag, the blobs, the upload.
	var staged []byte
	if u := exp.upload; u != nil {
		staged, err = os.ReadFile(filepath.Join(dir, ".ocistore", "ingest", "uploads", u.id))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			h.errorf("%s: %v", name, err)
			return
		}
		if err == nil && !bytes.HasPrefix(u.blob.data, staged) {
			fail("upload", "the staged upload (%d bytes) is not a prefix of what was sent", len(staged))
		}
		if err == nil {
			state += fmt.Sprintf("; upload staged %d of %d bytes acknowledged", len(staged), u.acked)
		} else {
			state += "; upload staged file gone"
			staged = nil
		}
	}
	s, err := h.startServe(dir, "", true)
	if err != nil {
		h.errorf("%s: restart: %v", name, err)
		return
	}
	for _, v := range h.pull(s.rc, exp, isComplete) {
		fail("pull", "%s", v)
	}
	if u := exp.upload; u != nil {
		for _, v := range h.resume(s.rc, exp.img.repo, u, staged) {
			fail("upload", "%s", v)
		}
	}
	if err := s.stop(); err != nil {
		fail("serve", "%v", err)
	}
	if exp.upload != nil {
		if err := h.fsckClean(dir); err != nil {
			fail("fsck", "after the upload was finished: %v", err)
		}
	}
	for i := range bad {
		bad[i].state = state
	}
	return state
}

// whichIndex names the index.json a state has.
func (h *srvHarness) whichIndex(st *State, complete *State) string {
	switch {
	case st.IndexErr != "":
		return st.IndexErr
	case SameTags(st, h.base.before):
		return "baseline"
	case SameTags(st, complete):
		return "complete"
	}
	return "other (" + DiffTags(st, h.base.before) + ")"
}

// pull checks through the server what a pull sees: the tag, and every blob
// acknowledged or that the manifest references when it is there.
func (h *srvHarness) pull(rc *regClient, exp *srvExpect, complete bool) []string {
	var bad []string
	img := exp.img
	r, err := rc.do(context.Background(), http.MethodGet, "/v2/"+img.repo+"/manifests/"+img.tag, nil, "Accept", v1.MediaTypeImageManifest)
	switch {
	case err != nil:
		return []string{fmt.Sprintf("GET manifest %s: %v", img.ref(), err)}
	case complete && (r.code != http.StatusOK || r.h.Get("Docker-Content-Digest") != img.md.String() || !bytes.Equal(r.body, img.manifest)):
		bad = append(bad, fmt.Sprintf("GET manifest %s: %s (digest %s), want 200 with %s", img.ref(), r, r.h.Get("Docker-Content-Digest"), img.md))
	case !complete && img.repo == serveRepoMove && (r.code != http.StatusOK || r.h.Get("Docker-Content-Digest") != h.base.moveOld):
		bad = append(bad, fmt.Sprintf("GET manifest %s: %s (digest %s), want 200 with the baseline's %s", img.ref(), r, r.h.Get("Docker-Content-Digest"), h.base.moveOld))
	case !complete && img.repo != serveRepoMove && r.code != http.StatusNotFound:
		bad = append(bad, fmt.Sprintf("GET manifest %s: %s, want 404", img.ref(), r))
	}
	want := map[digest.Digest]int64{}
	for d, n := range exp.acked {
		want[d] = n
	}
	if complete {
		for _, b := range []pushBlob{img.config, img.mono, img.chunked} {
			want[b.d] = int64(len(b.data))
		}
		want[h.base.mount] = h.base.mountSize
	}
	for d, n := range want {
		r, err := rc.do(context.Background(), http.MethodGet, "/v2/"+img.repo+"/blobs/"+d.String(), nil)
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("GET blob %s: %v", d, err))
		case r.code != http.StatusOK:
			bad = append(bad, fmt.Sprintf("GET blob %s: %s", d, r))
		case int64(len(r.body)) != n || digest.FromBytes(r.body) != d:
			bad = append(bad, fmt.Sprintf("GET blob %s: %d bytes hashing to %s", d, len(r.body), digest.FromBytes(r.body)))
		}
	}
	return bad
}

// resume finds out what became of a cut upload and finishes the push:
// from where the session is when it is resumable, from nothing when it is
// unknown. staged is what its file held on disk (nil: gone).
func (h *srvHarness) resume(rc *regClient, repo string, u *cutUpload, staged []byte) []string {
	b := u.blob
	r, err := rc.do(context.Background(), http.MethodGet, u.location, nil)
	if err != nil {
		return []string{fmt.Sprintf("GET %s: %v", u.location, err)}
	}
	var bad []string
	switch r.code {
	case http.StatusNoContent:
		h.resumed++
		rg := r.h.Get("Range")
		var end int64
		if _, err := fmt.Sscanf(rg, "0-%d", &end); err != nil {
			return []string{fmt.Sprintf("GET %s: 204 with Range %q", u.location, rg)}
		}
		n := end + 1
		if end == 0 && len(staged) == 0 {
			n = 0 // "0-0": empty, as distribution says it
		}
		switch {
		case staged == nil:
			bad = append(bad, fmt.Sprintf("resumable at %d bytes, but its staged file is gone", n))
		case n != int64(len(staged)):
			bad = append(bad, fmt.Sprintf("resumable at %d bytes, but its staged file holds %d", n, len(staged)))
		case n > u.acked:
			bad = append(bad, fmt.Sprintf("resumable at %d bytes, more than the %d acknowledged", n, u.acked))
		case u.mustResume && n != u.acked:
			bad = append(bad, fmt.Sprintf("resumable at %d bytes after a syncfs of all %d acknowledged", n, u.acked))
		}
		if len(bad) > 0 {
			return bad
		}
		if err := rc.finish(u.location, b.data, int(n), b.d); err != nil {
			return []string{fmt.Sprintf("finishing the upload resumed at %d bytes: %v", n, err)}
		}
	case http.StatusNotFound:
		h.unknown++
		if u.mustResume {
			bad = append(bad, fmt.Sprintf("the session is unknown (404) after a syncfs of its %d bytes: %s", u.acked, r))
		}
		if err := rc.chunked(repo, b); err != nil {
			return append(bad, fmt.Sprintf("pushing the blob again after a 404: %v", err))
		}
	default:
		return []string{fmt.Sprintf("GET %s: %s, want 204 or 404", u.location, r)}
	}
	g, err := rc.do(context.Background(), http.MethodGet, "/v2/"+repo+"/blobs/"+b.d.String(), nil)
	if err != nil || g.code != http.StatusOK || !bytes.Equal(g.body, b.data) {
		bad = append(bad, fmt.Sprintf("GET blob %s after the upload: %v %v", b.d, g, err))
	}
	return bad
}
