package main

// TestServeCrash: `ocistore serve` SIGKILLed at random moments of
// concurrent pushes (tier 3 of "How crash safety is proven"). A trial:
//
//   - a new layout (ocistore init) and a server on it (--upload-ttl 3s,
//     --gc-interval 0: no GC but the test's own), armed or not with a crash
//     point (OCISTORE_CRASHPOINT=NAME@K, one of the ingest and transaction
//     points a push reaches; the binary of TestMain has them);
//   - four pushers (goroutines speaking the distribution API in raw HTTP)
//     push images of one to four layers (0 bytes to 1 MiB; half of them
//     drawn from a pool of six the pushers share) and a config: each blob
//     monolithic (POST ?digest=), mounted (POST ?mount=, a pool blob), or
//     in a session (POST, PATCH chunks with Content-Range, PUT ?digest=, the
//     last chunk in the PUT or not); then the manifest, PUT by tag or by
//     digest. Every answer received is recorded: 202 and the Range of each
//     chunk, 201 for each blob and manifest;
//   - the kill: the server dies at its crash point (a trial of even seed:
//     the point and its K drawn), or is SIGKILLed a random delay (up to
//     30 ms) after the pushers received their n-th answer, n drawn below
//     300 (odd seed); and at 5 s when that point or answer is not reached;
//     the layout as the kill left it must satisfy the invariant for foreign
//     readers (testutil.ForeignReadableDir);
//   - a restart on the layout (recovery runs at open), then every push is
//     checked through the API: a manifest acknowledged with 201 is there,
//     by tag and by digest, the bytes pushed, and every blob it references
//     has the bytes pushed; a blob acknowledged with 201 is there (its
//     session's lease keeps it; no GC runs); a manifest never sent is not;
//     an upload not acknowledged is absent, or complete (a 201 lost to the
//     kill: its bytes are the ones pushed), or its session is resumable
//     (GET: 204, a Range that holds at least every byte a 202 acknowledged
//     and no more than the blob); any blob served has the bytes pushed;
//   - half of the unacknowledged pushes are then finished on the restarted
//     server: resumable sessions resumed from their Range (PATCH the rest,
//     or PUT with it) and committed (201: the staged bytes were the ones
//     sent), missing blobs pushed again, the manifest PUT (201); the other
//     half are abandoned;
//   - the server stopped (SIGTERM: exit 0), `ocistore fsck --deep` is clean
//     (exit 0; orphan notices only: an unreferenced blob no lease holds,
//     e.g. the blob of a manifest whose transaction the kill stopped) and
//     index.json holds every acknowledged manifest under its tag or
//     untagged, and nothing the pushers did not send;
//   - past the upload TTL (every session and lease expired), `ocistore gc
//     --grace 0`, then `ocistore fsck --deep` finds nothing at all, not even
//     a notice (no orphan, no temp file), .ocistore/ingest/uploads is empty
//     (fsck does not look there: the test does), .ocistore/ingest holds no
//     file, and the blob files are exactly the closure of index.json
//     (computed from what the pushers sent), index.json unchanged by gc.
//
// A manifest served after the restart though its PUT got no answer is
// taken as committed (the answer lost to the kill): it must be in
// index.json, then and after gc. That is how the trial found the server
// serving by digest the blob of a manifest whose transaction the kill
// stopped, an orphan GC then removed (server.TestManifestByDigestNotHeld).
//
// Anything else is a violation; so is an answer other than the expected
// one from the server before the kill (it was alive to send it), or a
// server that exits before it is killed (a panic: its stderr is shown).
// A trial with a violation keeps its layout (the path is logged).
//
// Trials: 10 by default (8 under -race, 4 with -short), 120 with
// OCISTORE_CRASH_FULL=1 (make crash); OCISTORE_SERVE_CRASH_TRIALS=N sets
// the number. They run side by side, as many as -parallel (GOMAXPROCS):
// most of a trial is the wait for its upload TTL. Trial i uses the seed S+i, S the base seed (logged;
// OCISTORE_SERVE_CRASH_SEED=S sets it): OCISTORE_SERVE_CRASH_SEED=<a
// trial's seed> OCISTORE_SERVE_CRASH_TRIALS=1 replays that trial (its
// data, its kill point or answer, its choices; where the kill lands in the
// server still depends on the machine). The summary line, on stdout:
//
//	tier3-serve: trials=N kills=N crashpoints=N acked=N acked-blobs=N landed=N resumable=N resumed=N completed=N abandoned=N staged=N freed=N foreign=N violations=N
//
// kills counts every kill (crashpoints those where the server died at its
// crash point); acked, the manifest PUTs answered 201 before the kill;
// acked-blobs, the blob uploads answered 201 before the kill whose
// manifest was not; landed, the manifests and blobs found complete after
// the restart though their 201 was lost; resumable, the sessions found
// resumable; resumed, those finished; completed and abandoned, the
// unacknowledged pushes finished after the restart or left; staged, the
// staging files of sessions left when the final gc ran; freed, the blobs
// it removed; foreign, the layouts checked for foreign readers.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/crash"
	"github.com/ocistore/ocistore/internal/protocol"
	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/recovery"
)

const (
	envServeCrashSeed     = "OCISTORE_SERVE_CRASH_SEED"
	envServeCrashTrials   = "OCISTORE_SERVE_CRASH_TRIALS"
	defaultServeCrashSeed = 20260501
	// scTTL is the servers' --upload-ttl: the life of a session without a
	// write, and of the lease that keeps a blob pushed without its manifest.
	scTTL      = 3 * time.Second
	scPushers  = 4
	scPoolSize = 6
	// A kill that is not at a crash point comes a delay of up to
	// scMaxDelay after the pushers received their n-th answer, n drawn
	// below scMaxAnswers (a moment of the pushes, not of the clock: a
	// loaded machine pushes as much before it). scWait is how long a server
	// may push before it is SIGKILLed all the same (its crash point, or
	// that answer, not reached).
	scMaxAnswers = 300
	scMaxDelay   = 30 * time.Millisecond
	scWait       = 5 * time.Second
)

// scPoints are the crash points a push reaches, each with the largest K
// of the NAME@K drawn: the ingest points are passed by every blob
// committed (and every manifest's own blob), the others by each
// transaction (a manifest PUT).
var scPoints = []struct {
	name string
	maxK int
}{
	{crash.IngestWritten, 60}, {crash.IngestRenamed, 60}, {crash.IngestSynced, 60},
	{crash.IndexTempWritten, 16}, {crash.TxnJournaled, 16}, {crash.IndexRenamed, 16},
	{crash.IndexSynced, 16}, {crash.TxnCleared, 16},
}

// scStats are the counts of the summary line.
type scStats struct {
	trials, kills, points, missed                 int
	acked, ackedBlobs, landed, resumable, resumed int
	completed, abandoned, staged, freed, foreign  int
	violations                                    int
	images, sessions, requests                    int
}

func (s *scStats) add(o scStats) {
	s.trials += o.trials
	s.kills += o.kills
	s.points += o.points
	s.missed += o.missed
	s.acked += o.acked
	s.ackedBlobs += o.ackedBlobs
	s.landed += o.landed
	s.resumable += o.resumable
	s.resumed += o.resumed
	s.completed += o.completed
	s.abandoned += o.abandoned
	s.staged += o.staged
	s.freed += o.freed
	s.foreign += o.foreign
	s.violations += o.violations
	s.images += o.images
	s.sessions += o.sessions
	s.requests += o.requests
}

func TestServeCrash(t *testing.T) {
	seed := uint64(defaultServeCrashSeed)
	trials := 10
	mode := "bounded"
	if raceBuild {
		trials = 8
	}
	if testing.Short() {
		trials, mode = 4, "short"
	}
	if v := os.Getenv("OCISTORE_CRASH_FULL"); v != "" && v != "0" {
		trials, mode = 120, "full"
	}
	if v := os.Getenv(envServeCrashSeed); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envServeCrashSeed, v, err)
		}
		seed = n
	}
	if v := os.Getenv(envServeCrashTrials); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", envServeCrashTrials, v)
		}
		trials = n
	}
	fmt.Printf("serve-crash: seed=%d mode=%s trials=%d race=%v (%s=S replays from seed S, trial i has seed S+i; %s=N trials)\n",
		seed, mode, trials, raceBuild, envServeCrashSeed, envServeCrashTrials)
	var total scStats
	begin := time.Now()
	defer func() {
		t.Logf("%d trials in %s: %d images pushed, %d upload sessions, %d requests answered; kills at a crash point %d, by SIGKILL %d (crash point or answer not reached in time: %d)",
			total.trials, time.Since(begin).Round(time.Millisecond), total.images, total.sessions, total.requests,
			total.points, total.kills-total.points, total.missed)
		fmt.Printf("tier3-serve: trials=%d kills=%d crashpoints=%d acked=%d acked-blobs=%d landed=%d resumable=%d resumed=%d completed=%d abandoned=%d staged=%d freed=%d foreign=%d violations=%d\n",
			total.trials, total.kills, total.points, total.acked, total.ackedBlobs, total.landed, total.resumable, total.resumed,
			total.completed, total.abandoned, total.staged, total.freed, total.foreign, total.violations)
	}()
	// Trials run side by side (as many as -parallel, GOMAXPROCS by
	// default): most of a trial is the wait for its upload TTL.
	var mu sync.Mutex
	t.Run("trials", func(t *testing.T) {
		for i := range trials {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				tr := newSCTrial(t, i, seed+uint64(i))
				defer func() {
					if t.Failed() && tr.st.violations == 0 {
						tr.st.violations = 1 // stopped by a failure of its own
					}
					mu.Lock()
					total.add(tr.st)
					mu.Unlock()
				}()
				tr.run()
			})
		}
	})
}

// scBlob is a blob a pusher pushes: its bytes and digest.
type scBlob struct {
	data []byte
	d    digest.Digest
}

func newSCBlob(b []byte) *scBlob { return &scBlob{data: b, d: digest.FromBytes(b)} }

// scUpload is one upload of a blob, as its answers told it.
type scUpload struct {
	blob     *scBlob
	how      string // "monolithic", "mount" or "session"
	location string // the session's URL, once a POST was answered 202
	acked    int64  // the bytes the session holds, by the last 202
	created  bool   // answered 201: the blob is in the layout
	// What the restarted server says of the session.
	resumable bool
	size      int64 // the bytes it holds, by its Range
	ambiguous bool  // Range 0-0: 0 bytes or 1
}

// scImage is an image a pusher pushes.
type scImage struct {
	repo     string
	tag      string // "" when pushed by digest
	layers   []*scBlob
	config   *scBlob
	manifest []byte
	md       digest.Digest
	uploads  []*scUpload
	putSent  bool // its manifest PUT was sent
	acked    bool // its manifest PUT was answered 201 (or it landed)
	landed   bool // served after the restart, though its PUT got no answer
	again    bool // pushed again after the restart
}

// why says why im must be in the layout.
func (im *scImage) why() string {
	switch {
	case im.landed:
		return "served after the restart though its PUT got no answer"
	case im.again:
		return "pushed again after the restart (201)"
	}
	return "acknowledged with 201 before the kill"
}

func (im *scImage) ref() string {
	if im.tag != "" {
		return im.tag
	}
	return im.md.String()
}

func (im *scImage) blobs() []*scBlob { return append(slices.Clone(im.layers), im.config) }

func (im *scImage) name() string {
	if im.tag != "" {
		return im.repo + ":" + im.tag
	}
	return im.repo + "@" + im.md.String()
}

// scTrial is one trial: a layout, a server killed, a restart, the checks.
type scTrial struct {
	t    *testing.T
	n    int
	seed uint64
	dir  string
	rng  *rand.Rand
	pool []*scBlob
	st   scStats

	mu         sync.Mutex
	images     []*scImage
	violations []string
	verified   map[digest.Digest]bool // blobs served with their bytes after the restart
}

func newSCTrial(t *testing.T, n int, seed uint64) *scTrial {
	tr := &scTrial{t: t, n: n, seed: seed, rng: rand.New(rand.NewPCG(seed, 0)), verified: map[digest.Digest]bool{}}
	tr.st.trials = 1
	src := scSource(seed, 0)
	for range scPoolSize {
		tr.pool = append(tr.pool, newSCBlob(scData(src, scSize(tr.rng))))
	}
	return tr
}

// scSource is the random source of a trial's (or a pusher's) bytes.
func scSource(seed uint64, stream uint64) *rand.ChaCha8 {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	binary.LittleEndian.PutUint64(s[8:], stream)
	copy(s[16:], "ocistore-serve")
	return rand.NewChaCha8(s)
}

func scData(src *rand.ChaCha8, n int) []byte {
	b := make([]byte, n)
	src.Read(b)
	return b
}

// scSize draws a blob size: 0 bytes (1 in 10), up to 4 KiB, up to 64 KiB,
// up to 1 MiB (3 in 10 each).
func scSize(r *rand.Rand) int {
	switch x := r.IntN(10); {
	case x == 0:
		return 0
	case x < 4:
		return 1 + r.IntN(4<<10)
	case x < 7:
		return 1 + r.IntN(64<<10)
	default:
		return 1 + r.IntN(1<<20)
	}
}

func (tr *scTrial) violate(format string, args ...any) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.violations = append(tr.violations, fmt.Sprintf(format, args...))
}

func (tr *scTrial) pooled(b *scBlob) bool { return slices.Contains(tr.pool, b) }

func (tr *scTrial) run() {
	t := tr.t
	start := time.Now()
	root, err := os.MkdirTemp("", "ocistore-serve-crash-")
	if err != nil {
		t.Fatal(err)
	}
	keep := false
	defer func() {
		if !keep {
			os.RemoveAll(root)
		}
	}()
	tr.dir = filepath.Join(root, "layout")
	must(t, 0, "-l", tr.dir, "init")
	args := []string{"--upload-ttl", scTTL.String(), "--gc-interval", "0"}

	// The kill: at a crash point, or a delay after an answer.
	var env []string
	var kill string
	var answers int64
	var delay time.Duration
	if tr.seed%2 == 0 {
		p := scPoints[tr.rng.IntN(len(scPoints))]
		kill = fmt.Sprintf("%s@%d", p.name, 1+tr.rng.IntN(p.maxK))
		env = []string{crash.EnvVar + "=" + kill}
	} else {
		answers = tr.rng.Int64N(scMaxAnswers)
		delay = time.Duration(tr.rng.Int64N(int64(scMaxDelay)))
		kill = fmt.Sprintf("SIGKILL %s after answer %d", delay.Round(time.Microsecond), answers)
	}
	srv := startServeEnv(t, env, tr.dir, args...)
	c := newSCClient(srv.url)
	c.at, c.reached = answers, make(chan struct{})
	if answers == 0 {
		close(c.reached)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for i := range scPushers {
		p := &scPusher{tr: tr, id: i, rng: rand.New(rand.NewPCG(tr.seed, uint64(i)+1)), src: scSource(tr.seed, uint64(i)+1), c: c, stop: &stop}
		wg.Go(p.run)
	}
	pushStart := time.Now()
	var exited error
	selfKilled := false
	died := func() {
		tr.violate("the server exited before it was killed: %v\n%s", exited, srv.stderr)
	}
	if env != nil {
		select {
		case exited = <-srv.done:
			selfKilled = true
		case <-time.After(scWait):
			srv.cmd.Process.Kill()
			exited = <-srv.done
			tr.st.missed++
			kill += " (not reached: SIGKILL after " + scWait.String() + ")"
		}
	} else {
		select {
		case exited = <-srv.done:
			died()
		case <-c.reached:
			select {
			case exited = <-srv.done:
				died()
			case <-time.After(delay):
				srv.cmd.Process.Kill()
				exited = <-srv.done
			}
		case <-time.After(scWait):
			srv.cmd.Process.Kill()
			exited = <-srv.done
			tr.st.missed++
			kill += " (not reached: SIGKILL after " + scWait.String() + ")"
		}
	}
	killedAfter := time.Since(pushStart)
	stop.Store(true)
	wg.Wait()
	c.close()
	tr.st.kills++
	if ws, ok := srv.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		tr.violate("the server ended with %v, not SIGKILL (kill %s):\n%s", exited, kill, srv.stderr)
	} else if selfKilled {
		tr.st.points++
	}
	tr.st.requests += int(c.answered.Load())
	tr.st.images += len(tr.images)
	for _, im := range tr.images {
		if im.acked {
			tr.st.acked++
		}
		for _, u := range im.uploads {
			if u.location != "" {
				tr.st.sessions++
			}
			if u.created && !im.acked {
				tr.st.ackedBlobs++
			}
		}
	}
	tr.st.foreign++
	if err := testutil.ForeignReadableDir(tr.dir, ""); err != nil {
		tr.violate("foreign reader, after the kill and before recovery: %v", err)
	}

	// The restart: recovery at open, then the pushes checked and half of
	// the unfinished ones finished.
	srv2 := startServe(t, tr.dir, args...)
	c2 := newSCClient(srv2.url)
	tr.verify(c2)
	tr.complete(c2)
	c2.close()
	tr.st.requests += int(c2.answered.Load())
	if code := srv2.stop(t); code != 0 {
		tr.violate("the restarted server exited %d on SIGTERM, want 0:\n%s", code, srv2.stderr)
	}
	// Every lease the servers made or renewed expires within twice scTTL
	// of their last request (a session lives at least its TTL after its
	// last write, at most twice that).
	expired := time.Now().Add(2*scTTL + 500*time.Millisecond)
	tr.fsck("after the restart", func(p recovery.Problem) bool { return p.Kind == recovery.KindOrphan })
	index := tr.checkIndex("after the restart")

	time.Sleep(time.Until(expired))
	uploadsDir := filepath.Join(tr.dir, filepath.FromSlash(protocol.UploadsDir))
	staged, _ := os.ReadDir(uploadsDir)
	tr.st.staged += len(staged)
	r := cli(t, "-l", tr.dir, "gc", "--grace", "0", "--format", "json")
	if r.code != 0 {
		tr.violate("gc --grace 0 past the upload TTL: %s", r)
	} else {
		var out gcOutput
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			tr.violate("gc --format json: %v\n%s", err, r)
		}
		tr.st.freed += len(out.Freed)
	}
	tr.fsck("after the upload TTL and gc --grace 0", func(recovery.Problem) bool { return false })
	if after := tr.checkIndex("after gc"); !bytes.Equal(after, index) {
		tr.violate("gc changed index.json")
	}
	if left, err := os.ReadDir(uploadsDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		tr.violate("list %s: %v", protocol.UploadsDir, err)
	} else if len(left) > 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		tr.violate("after the upload TTL and gc: %d staging files left in %s: %s", len(left), protocol.UploadsDir, strings.Join(names, " "))
	}
	if ents, err := os.ReadDir(filepath.Join(tr.dir, filepath.FromSlash(protocol.IngestDir))); err == nil {
		for _, e := range ents {
			if !e.IsDir() {
				tr.violate("after gc: file left in %s: %s", protocol.IngestDir, e.Name())
			}
		}
	}
	tr.checkBlobFiles()

	t.Logf("trial %d (seed %d): kill %s, %s after the pushes began; %d images (%d acknowledged), %d sessions; after the restart: landed %d, resumable %d, resumed %d, completed %d, abandoned %d; gc: %d staging files, %d blobs freed; %s",
		tr.n, tr.seed, kill, killedAfter.Round(time.Millisecond), tr.st.images, tr.st.acked, tr.st.sessions,
		tr.st.landed, tr.st.resumable, tr.st.resumed, tr.st.completed, tr.st.abandoned, tr.st.staged, tr.st.freed,
		time.Since(start).Round(time.Millisecond))
	tr.st.violations = len(tr.violations)
	for i, v := range tr.violations {
		t.Errorf("trial %d (seed %d, kill %s), violation %d of %d: %s", tr.n, tr.seed, kill, i+1, len(tr.violations), v)
	}
	if len(tr.violations) > 0 {
		keep = true
		t.Logf("trial %d: layout kept in %s; %s=%d %s=1 replays the trial; the killed server's stderr:\n%s",
			tr.n, tr.dir, envServeCrashSeed, tr.seed, envServeCrashTrials, srv.stderr)
	}
}

// scClient speaks HTTP to one server.
type scClient struct {
	base     string
	hc       *http.Client
	answered atomic.Int64
	// reached, when not nil, is closed at the at-th answer (at > 0).
	at      int64
	reached chan struct{}
}

func newSCClient(base string) *scClient {
	return &scClient{base: base, hc: &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: scPushers}}}
}

func (c *scClient) close() { c.hc.CloseIdleConnections() }

// scResp is an answer: its status and headers were received; its body
// may not have been (bodyErr).
type scResp struct {
	method, path string
	status       int
	header       http.Header
	body         []byte
	bodyErr      error
}

func (r *scResp) String() string {
	return fmt.Sprintf("%s %s: %d %s", r.method, r.path, r.status, bytes.TrimSpace(r.body))
}

// do sends a request; an error means no answer was received (the server
// is gone, or was never there).
func (c *scClient) do(method, path string, header http.Header, body []byte) (*scResp, error) {
	var rd io.Reader = http.NoBody
	if len(body) > 0 {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.ContentLength = int64(len(body))
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if n := c.answered.Add(1); n == c.at && c.reached != nil {
		close(c.reached)
	}
	r := &scResp{method: method, path: path, status: resp.StatusCode, header: resp.Header}
	r.body, r.bodyErr = io.ReadAll(resp.Body)
	return r, nil
}

func scHeader(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// withQuery adds the parameter k=v to the URL u.
func withQuery(u, k, v string) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + k + "=" + url.QueryEscape(v)
}

// scRange parses a Range header "0-N".
func scRange(h http.Header) (end int64, ok bool) {
	a, b, found := strings.Cut(h.Get("Range"), "-")
	if !found || a != "0" {
		return 0, false
	}
	n, err := strconv.ParseInt(b, 10, 64)
	return n, err == nil && n >= 0
}

// scPusher pushes images until the server is gone.
type scPusher struct {
	tr   *scTrial
	id   int
	rng  *rand.Rand
	src  *rand.ChaCha8
	c    *scClient
	stop *atomic.Bool
}

// errGone: a request got no answer (the server was killed).
var errGone = errors.New("no answer: the server is gone")

func (p *scPusher) run() {
	for k := 0; !p.stop.Load(); k++ {
		im := p.newImage(k)
		p.tr.mu.Lock()
		p.tr.images = append(p.tr.images, im)
		p.tr.mu.Unlock()
		if err := p.push(im); err != nil {
			return
		}
	}
}

func (p *scPusher) newImage(k int) *scImage {
	im := &scImage{repo: fmt.Sprintf("crash/r%d", p.rng.IntN(3))}
	if p.rng.IntN(10) < 7 {
		im.tag = fmt.Sprintf("p%d-i%d", p.id, k)
	}
	seen := map[digest.Digest]bool{}
	for range 1 + p.rng.IntN(4) {
		b := p.tr.pool[p.rng.IntN(len(p.tr.pool))]
		if p.rng.IntN(2) == 0 {
			b = newSCBlob(scData(p.src, scSize(p.rng)))
		}
		if !seen[b.d] {
			seen[b.d] = true
			im.layers = append(im.layers, b)
		}
	}
	im.config = newSCBlob(fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Labels":{"seed":"%d","pusher":"%d","image":"%d"}}}`, p.tr.seed, p.id, k))
	m := v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: im.config.d, Size: int64(len(im.config.data))},
	}
	for _, l := range im.layers {
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: l.d, Size: int64(len(l.data))})
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	im.manifest, im.md = b, digest.FromBytes(b)
	return im
}

// unexpected reports an answer the server should not have given: it was
// alive to give it.
func (p *scPusher) unexpected(r *scResp, want int) {
	p.tr.violate("pusher %d, before the kill: %s, want %d", p.id, r, want)
}

// push pushes im's blobs, then its manifest; errGone once the server is.
func (p *scPusher) push(im *scImage) error {
	for _, b := range im.blobs() {
		u := &scUpload{blob: b}
		im.uploads = append(im.uploads, u)
		if err := p.pushBlob(im, u); err != nil {
			return err
		}
		if !u.created {
			return nil // refused (a violation, reported): the next image
		}
	}
	im.putSent = true
	path := "/v2/" + im.repo + "/manifests/" + im.ref()
	r, err := p.c.do(http.MethodPut, path, scHeader("Content-Type", v1.MediaTypeImageManifest), im.manifest)
	if err != nil {
		return errGone
	}
	if r.status != http.StatusCreated {
		p.unexpected(r, http.StatusCreated)
		return nil
	}
	if got := r.header.Get("Docker-Content-Digest"); got != im.md.String() {
		p.tr.violate("pusher %d: %s: Docker-Content-Digest %q, want %s", p.id, r, got, im.md)
	}
	im.acked = true
	return nil
}

func (p *scPusher) pushBlob(im *scImage, u *scUpload) error {
	b := u.blob
	uploads := "/v2/" + im.repo + "/blobs/uploads/"
	octet := scHeader("Content-Type", "application/octet-stream")
	x := p.rng.IntN(10)
	switch {
	case x < 3:
		u.how = "monolithic"
		r, err := p.c.do(http.MethodPost, withQuery(uploads, "digest", b.d.String()), octet, b.data)
		if err != nil {
			return errGone
		}
		if r.status != http.StatusCreated {
			p.unexpected(r, http.StatusCreated)
			return nil
		}
		u.created = true
		return nil
	case x < 5 && p.tr.pooled(b):
		u.how = "mount"
		r, err := p.c.do(http.MethodPost, withQuery(withQuery(uploads, "mount", b.d.String()), "from", fmt.Sprintf("crash/r%d", p.rng.IntN(3))), nil, nil)
		if err != nil {
			return errGone
		}
		switch r.status {
		case http.StatusCreated:
			u.created = true
			return nil
		case http.StatusAccepted: // not there yet: a session
			u.location = r.header.Get("Location")
		default:
			p.unexpected(r, http.StatusAccepted)
			return nil
		}
	default:
		u.how = "session"
		r, err := p.c.do(http.MethodPost, uploads, nil, nil)
		if err != nil {
			return errGone
		}
		if r.status != http.StatusAccepted {
			p.unexpected(r, http.StatusAccepted)
			return nil
		}
		u.location = r.header.Get("Location")
	}
	if u.location == "" {
		p.tr.violate("pusher %d: a 202 to start an upload without a Location", p.id)
		return nil
	}
	// Chunks: 1 to 4 parts; the last one in the PUT, or the PUT empty.
	n := len(b.data)
	parts := 1 + p.rng.IntN(4)
	var cuts []int
	for i := 1; i < parts; i++ {
		cuts = append(cuts, p.rng.IntN(n+1))
	}
	slices.Sort(cuts)
	cuts = append(cuts, n)
	if p.rng.IntN(2) == 0 {
		cuts = cuts[:len(cuts)-1] // the rest goes in the PUT
	}
	off := 0
	for _, end := range cuts {
		if end == off {
			continue
		}
		time.Sleep(time.Duration(p.rng.IntN(20)) * time.Millisecond)
		h := scHeader("Content-Type", "application/octet-stream", "Content-Range", fmt.Sprintf("%d-%d", off, end-1))
		r, err := p.c.do(http.MethodPatch, u.location, h, b.data[off:end])
		if err != nil {
			return errGone
		}
		if r.status != http.StatusAccepted {
			p.unexpected(r, http.StatusAccepted)
			return nil
		}
		if e, ok := scRange(r.header); !ok || e != int64(end-1) {
			p.tr.violate("pusher %d: %s: Range %q after a chunk that ends at %d", p.id, r, r.header.Get("Range"), end-1)
		}
		u.acked, off = int64(end), end
	}
	h := octet
	if off < n {
		h = scHeader("Content-Type", "application/octet-stream", "Content-Range", fmt.Sprintf("%d-%d", off, n-1))
	}
	r, err := p.c.do(http.MethodPut, withQuery(u.location, "digest", b.d.String()), h, b.data[off:])
	if err != nil {
		return errGone
	}
	if r.status != http.StatusCreated {
		p.unexpected(r, http.StatusCreated)
		return nil
	}
	u.created = true
	return nil
}

// get GETs path on the restarted server; a request without an answer
// fails the test (that server is not killed).
func (tr *scTrial) get(c *scClient, method, path string, header http.Header, body []byte) *scResp {
	tr.t.Helper()
	r, err := c.do(method, path, header, body)
	if err != nil {
		tr.t.Fatalf("trial %d: the restarted server: %s %s: %v", tr.n, method, path, err)
	}
	if r.bodyErr != nil {
		tr.violate("%s %s: %d, reading the body: %v", method, path, r.status, r.bodyErr)
	}
	return r
}

// checkManifest GETs im's manifest by its reference (and by digest after
// a tag): it must be there with the bytes pushed when must, and it may be
// there, with them, otherwise. It returns whether it is.
func (tr *scTrial) checkManifest(c *scClient, im *scImage, must bool) bool {
	refs := []string{im.ref()}
	if im.tag != "" {
		refs = append(refs, im.md.String())
	}
	accept := scHeader("Accept", v1.MediaTypeImageManifest)
	present := false
	for i, ref := range refs {
		if i > 0 && !present {
			break
		}
		r := tr.get(c, http.MethodGet, "/v2/"+im.repo+"/manifests/"+ref, accept, nil)
		switch {
		case r.status == http.StatusOK:
			if !bytes.Equal(r.body, im.manifest) {
				tr.violate("%s: %d bytes, not the %d bytes pushed", r, len(r.body), len(im.manifest))
			}
			if got := r.header.Get("Docker-Content-Digest"); got != im.md.String() {
				tr.violate("%s: Docker-Content-Digest %q, want %s", r, got, im.md)
			}
			present = true
		case r.status == http.StatusNotFound && i == 0:
			if must {
				tr.violate("manifest %s, acknowledged with 201, lost after the restart: %s", im.name(), r)
			}
		default:
			tr.violate("manifest %s (acknowledged %v): %s", im.name(), im.acked, r)
		}
	}
	return present
}

// checkBlob GETs the blob b: it must be there, with the bytes pushed, when
// must; it may be there, with them, otherwise. It returns whether it is.
func (tr *scTrial) checkBlob(c *scClient, repo string, b *scBlob, must bool, why string) bool {
	if tr.verified[b.d] {
		return true
	}
	r := tr.get(c, http.MethodGet, "/v2/"+repo+"/blobs/"+b.d.String(), nil, nil)
	switch r.status {
	case http.StatusOK:
		if !bytes.Equal(r.body, b.data) {
			tr.violate("blob %s: the server gives %d bytes of digest %s, not the %d bytes pushed", b.d, len(r.body), digest.FromBytes(r.body), len(b.data))
			return true
		}
		tr.verified[b.d] = true
		return true
	case http.StatusNotFound:
		if must {
			tr.violate("blob %s (%s) lost after the restart: %s", b.d, why, r)
		}
		return false
	}
	tr.violate("blob %s (%s): %s", b.d, why, r)
	return false
}

// verify checks every push after the restart.
func (tr *scTrial) verify(c *scClient) {
	for _, im := range tr.images {
		switch {
		case im.acked:
			tr.checkManifest(c, im, true)
			for _, b := range im.blobs() {
				tr.checkBlob(c, im.repo, b, true, "referenced by manifest "+im.name()+", acknowledged with 201")
			}
		case im.putSent:
			if tr.checkManifest(c, im, false) {
				// Committed: the 201 was lost to the kill.
				im.acked, im.landed = true, true
				tr.st.landed++
				for _, b := range im.blobs() {
					tr.checkBlob(c, im.repo, b, true, "referenced by manifest "+im.name()+", there after the restart")
				}
			}
		default:
			for _, ref := range []string{im.md.String(), im.tag} {
				if ref == "" {
					continue
				}
				if r := tr.get(c, http.MethodGet, "/v2/"+im.repo+"/manifests/"+ref, nil, nil); r.status != http.StatusNotFound {
					tr.violate("manifest %s, never sent: %s, want 404", im.name(), r)
				}
			}
		}
		for _, u := range im.uploads {
			if u.created {
				tr.checkBlob(c, im.repo, u.blob, true, "its upload ("+u.how+") acknowledged with 201")
				continue
			}
			if u.location != "" {
				tr.checkSession(c, im, u)
			}
			if tr.checkBlob(c, im.repo, u.blob, false, "") && !u.resumable && !tr.pooled(u.blob) && len(u.blob.data) > 0 {
				tr.st.landed++ // its own blob, there: its 201 lost to the kill
			}
		}
	}
}

// checkSession asks the restarted server for an unacknowledged session:
// 204 with a Range that holds every byte acknowledged and no more than
// the blob (resumable), or 404 (expired, never made, or committed).
func (tr *scTrial) checkSession(c *scClient, im *scImage, u *scUpload) {
	r := tr.get(c, http.MethodGet, u.location, nil, nil)
	switch r.status {
	case http.StatusNoContent:
		end, ok := scRange(r.header)
		if !ok {
			tr.violate("session of blob %s: %s with Range %q", u.blob.d, r, r.header.Get("Range"))
			return
		}
		u.resumable, u.size, u.ambiguous = true, end+1, end == 0
		tr.st.resumable++
		switch {
		case u.ambiguous && u.acked > 1, !u.ambiguous && u.size < u.acked:
			tr.violate("session of blob %s after the restart holds %d bytes (Range %s), but %d were acknowledged (202)", u.blob.d, u.size, r.header.Get("Range"), u.acked)
		case !u.ambiguous && u.size > int64(len(u.blob.data)):
			tr.violate("session of blob %s after the restart holds %d bytes, more than the %d of the blob", u.blob.d, u.size, len(u.blob.data))
		}
	case http.StatusNotFound:
	default:
		tr.violate("session of blob %s after the restart: %s, want 204 or 404", u.blob.d, r)
	}
}

// complete finishes half of the unacknowledged pushes on the restarted
// server and abandons the others.
func (tr *scTrial) complete(c *scClient) {
	for _, im := range tr.images {
		if im.acked {
			continue
		}
		if tr.rng.IntN(2) == 0 {
			tr.st.abandoned++
			continue
		}
		if tr.finish(c, im) {
			tr.st.completed++
		}
	}
}

func (tr *scTrial) finish(c *scClient, im *scImage) bool {
	for _, b := range im.blobs() {
		var u *scUpload
		for _, x := range im.uploads {
			if x.blob == b {
				u = x
			}
		}
		if u != nil && u.created {
			continue
		}
		if u != nil && u.resumable && tr.resume(c, im, u) {
			tr.st.resumed++
			continue
		}
		if r := tr.get(c, http.MethodHead, "/v2/"+im.repo+"/blobs/"+b.d.String(), nil, nil); r.status == http.StatusOK {
			continue
		}
		r := tr.get(c, http.MethodPost, withQuery("/v2/"+im.repo+"/blobs/uploads/", "digest", b.d.String()), scHeader("Content-Type", "application/octet-stream"), b.data)
		if r.status != http.StatusCreated {
			tr.violate("push of blob %s again after the restart: %s, want 201", b.d, r)
			return false
		}
	}
	r := tr.get(c, http.MethodPut, "/v2/"+im.repo+"/manifests/"+im.ref(), scHeader("Content-Type", v1.MediaTypeImageManifest), im.manifest)
	if r.status != http.StatusCreated {
		tr.violate("manifest %s pushed again after the restart: %s, want 201", im.name(), r)
		return false
	}
	im.putSent, im.acked, im.again = true, true, true
	return true
}

// resume finishes the resumable session u from where its Range says it
// ends (from 0, then 1, when Range 0-0 leaves it open): false when the
// session has expired meanwhile.
func (tr *scTrial) resume(c *scClient, im *scImage, u *scUpload) bool {
	b := u.blob
	offs := []int64{u.size}
	if u.ambiguous {
		offs = []int64{0, 1}
	}
	for _, off := range offs {
		if off > int64(len(b.data)) {
			continue
		}
		rest := b.data[off:]
		put := withQuery(u.location, "digest", b.d.String())
		rng := scHeader("Content-Type", "application/octet-stream", "Content-Range", fmt.Sprintf("%d-%d", off, int64(len(b.data))-1))
		var r *scResp
		if len(rest) > 0 && tr.rng.IntN(2) == 0 {
			r = tr.get(c, http.MethodPatch, u.location, rng, rest)
			if r.status == http.StatusAccepted {
				r = tr.get(c, http.MethodPut, put, nil, nil)
			}
		} else if len(rest) > 0 {
			r = tr.get(c, http.MethodPut, put, rng, rest)
		} else {
			r = tr.get(c, http.MethodPut, put, nil, nil)
		}
		switch {
		case r.status == http.StatusCreated:
			return true
		case r.status == http.StatusRequestedRangeNotSatisfiable && u.ambiguous && off == 0:
			continue // it holds 1 byte
		case r.status == http.StatusNotFound:
			return false // expired since: pushed again
		}
		tr.violate("resuming the session of blob %s from %d (Range said %d bytes, %d acknowledged before the kill): %s", b.d, off, u.size, u.acked, r)
		return false
	}
	return false
}

// fsck runs `ocistore fsck --deep --format json` (the server stopped): exit 0,
// and no finding but those allowed.
func (tr *scTrial) fsck(stage string, allowed func(recovery.Problem) bool) {
	r := cli(tr.t, "-l", tr.dir, "fsck", "--deep", "--format", "json")
	if r.code != 0 {
		tr.violate("fsck %s: %s", stage, r)
	}
	var rep recovery.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		tr.violate("fsck %s: %v\n%s", stage, err, r)
		return
	}
	for _, p := range rep.Problems {
		if !allowed(p) {
			tr.violate("fsck %s: %s", stage, p)
		}
	}
}

// checkIndex reads index.json: every acknowledged manifest is an entry,
// under its tag or untagged, and every entry is one the pushers sent. It
// returns the raw index.
func (tr *scTrial) checkIndex(stage string) []byte {
	raw, err := os.ReadFile(filepath.Join(tr.dir, "index.json"))
	if err != nil {
		tr.violate("%s: %v", stage, err)
		return nil
	}
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		tr.violate("%s: index.json: %v", stage, err)
		return raw
	}
	byDigest := map[digest.Digest]*scImage{}
	for _, im := range tr.images {
		byDigest[im.md] = im
	}
	has := map[string]bool{}
	for _, e := range ix.Manifests {
		name := e.Annotations[v1.AnnotationRefName]
		im := byDigest[e.Digest]
		switch {
		case im == nil:
			tr.violate("%s: index.json entry %q %s: no pusher pushed it", stage, name, e.Digest)
		case !im.putSent:
			tr.violate("%s: index.json entry %q %s: its manifest was never sent", stage, name, e.Digest)
		case im.tag != "" && name != im.repo+":"+im.tag || im.tag == "" && name != "":
			tr.violate("%s: index.json entry %q %s: manifest %s was pushed as %s", stage, name, e.Digest, e.Digest, im.name())
		}
		has[name+" "+e.Digest.String()] = true
	}
	for _, im := range tr.images {
		if !im.acked {
			continue
		}
		name := ""
		if im.tag != "" {
			name = im.repo + ":" + im.tag
		}
		if !has[name+" "+im.md.String()] {
			tr.violate("%s: manifest %s, %s, is not in index.json", stage, im.name(), im.why())
		}
	}
	return raw
}

// checkBlobFiles: the blob files are the closure of index.json, as the
// pushers built it.
func (tr *scTrial) checkBlobFiles() {
	raw, err := os.ReadFile(filepath.Join(tr.dir, "index.json"))
	if err != nil {
		return // reported
	}
	var ix v1.Index
	if json.Unmarshal(raw, &ix) != nil {
		return // reported
	}
	want := map[digest.Digest]bool{}
	for _, e := range ix.Manifests {
		for _, im := range tr.images {
			if im.md == e.Digest {
				want[im.md] = true
				for _, b := range im.blobs() {
					want[b.d] = true
				}
			}
		}
	}
	have := map[digest.Digest]bool{}
	for _, p := range blobFiles(tr.t, tr.dir) {
		d := digest.NewDigestFromEncoded(digest.Algorithm(filepath.Base(filepath.Dir(p))), filepath.Base(p))
		have[d] = true
		if !want[d] {
			tr.violate("after the upload TTL and gc: blob %s is an orphan (nothing in index.json references it)", d)
		}
	}
	for d := range want {
		if !have[d] {
			tr.violate("after gc: blob %s, referenced, is missing", d)
		}
	}
}
