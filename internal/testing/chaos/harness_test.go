package chaos

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
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
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/gen"
	"github.com/ocistore/ocistore/internal/testing/testutil"
)

// The harness: the real binary, a template layout adopted once, import
// sources, and what the checks need to read a layout without trusting the
// engine (index.json, the blob closure, leftovers).

const (
	tplRepos     = 40   // template tags spread over this many repositories
	layerSize    = 1024 // bytes per generated layer
	srcImages    = 200  // images of each import source
	srcRepos     = 8
	srcBaseSets  = 12 // 10 base sets shared with the template (same seed), 2 of its own
	runTimeout   = 2 * time.Minute
	lockTimeout  = "60s" // children wait this long for the writer lock
	stableTags   = 40    // concurrent run: template tags never removed (tag sources)
	maxRmBatch   = 50
	maxImpBatch  = 50
	maxConcBatch = 8
)

// entry is one index.json entry as the checks compare them: its tag ("" when
// untagged) and its manifest digest.
type entry struct{ Name, Digest string }

func (e entry) String() string {
	if e.Name == "" {
		return "<none>@" + e.Digest
	}
	return e.Name + "@" + e.Digest
}

func sortEntries(es []entry) []entry {
	es = slices.Clone(es)
	slices.SortFunc(es, func(a, b entry) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Digest, b.Digest))
	})
	return es
}

// harness is what every trial shares.
type harness struct {
	root string   // module root
	work string   // scratch directory of this test run
	bin  string   // the ocistore binary
	env  []string // children's environment

	tpl        string            // the template layout (adopted), never run on
	tplEntries []entry           // sorted
	tplTags    []string          // in index order
	tplDigest  map[string]string // tag -> manifest digest
	tplFP      fingerprint

	src        string // the single-writer import source
	srcEntries []entry
	srcBlobs   map[digest.Digest]bool // every blob of every import source

	concSrc        [2]string // one import source per concurrent writer
	concSrcEntries [2][]entry

	prune []string // "prune" [fixed arguments]; nil when the CLI has none
	seq   int

	cache *blobCache
}

func newHarness(t *testing.T, cfg config) *harness {
	t.Helper()
	h := &harness{work: t.TempDir()}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		t.Fatalf("go env GOMOD: %v %q", err, out)
	}
	h.root = filepath.Dir(strings.TrimSpace(string(out)))

	start := time.Now()
	h.bin = filepath.Join(h.work, "ocistore")
	args := []string{"build", "-o", h.bin}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./cmd/ocistore")...)
	build.Dir = h.root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "OCISTORE_LAYOUT", "OCISTORE_CRASHPOINT", "GORACE":
			continue
		}
		h.env = append(h.env, kv)
	}
	h.env = append(h.env, "NO_COLOR=1")
	if raceBuild {
		h.env = append(h.env, "GORACE=atexit_sleep_ms=0")
	}
	t.Logf("built %s (race=%v) in %s", h.bin, raceBuild, time.Since(start).Round(time.Millisecond))

	// The template: written as another tool would, adopted once.
	start = time.Now()
	h.tpl = filepath.Join(h.work, "template")
	st, err := gen.Write(h.tpl, gen.Spec{Images: cfg.images, Repos: tplRepos, LayerSize: layerSize, Seed: cfg.seed})
	if err != nil {
		t.Fatal(err)
	}
	if r := h.exec(h.tpl, "recover"); r.code != 0 {
		t.Fatalf("adopting the template: %s", r)
	}
	rep, r, err := h.fsck(h.tpl)
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("template fsck: %v %v\n%s", err, rep, r)
	}
	h.cache = &blobCache{ino: map[digest.Digest]uint64{}, kids: map[digest.Digest][]v1.Descriptor{}}
	ls, orphans, probs := h.audit(h.tpl)
	if len(probs) > 0 || len(orphans) > 0 {
		t.Fatalf("template audit: %v, orphans %v", probs, orphans)
	}
	if err := h.cache.trust(h.tpl); err != nil {
		t.Fatal(err)
	}
	if len(ls.tags) != cfg.images || len(ls.dups) > 0 {
		t.Fatalf("template has %d tags (%d duplicated), want %d", len(ls.tags), len(ls.dups), cfg.images)
	}
	h.tplEntries, h.tplDigest = ls.entries, ls.tags
	for _, m := range ls.index.Manifests {
		h.tplTags = append(h.tplTags, m.Annotations[v1.AnnotationRefName])
	}
	if h.tplFP, err = fingerprintOf(h.tpl); err != nil {
		t.Fatal(err)
	}

	// Import sources: the same generator and seed with two more base sets,
	// so that their images share base layers and configs with the template
	// and bring layers of their own; tags renamed into a namespace of their
	// own so that an import only adds entries.
	raw := filepath.Join(h.work, "source-raw")
	if _, err := gen.Write(raw, gen.Spec{Images: srcImages, Repos: srcRepos, BaseSets: srcBaseSets, LayerSize: layerSize, Seed: cfg.seed}); err != nil {
		t.Fatal(err)
	}
	h.srcBlobs = map[digest.Digest]bool{}
	mk := func(name, prefix string) (string, []entry) {
		dir := filepath.Join(h.work, name)
		es, err := makeSource(raw, dir, prefix)
		if err != nil {
			t.Fatal(err)
		}
		blobs, _, err := listBlobs(dir)
		if err != nil {
			t.Fatal(err)
		}
		for d := range blobs {
			h.srcBlobs[d] = true
		}
		return dir, es
	}
	h.src, h.srcEntries = mk("source", "import.example.com/")
	for w := range h.concSrc {
		h.concSrc[w], h.concSrcEntries[w] = mk(fmt.Sprintf("source-w%d", w), fmt.Sprintf("w%d.example.com/imported/", w))
	}
	tplBlobs, _, err := listBlobs(h.tpl)
	if err != nil {
		t.Fatal(err)
	}
	shared := 0
	for d := range h.srcBlobs {
		if _, ok := tplBlobs[d]; ok {
			shared++
		}
	}
	if shared == 0 || shared == len(h.srcBlobs) {
		t.Fatalf("import sources share %d of %d blobs with the template: want some, not all", shared, len(h.srcBlobs))
	}
	t.Logf("template: %d images, %d blobs; import sources: %d images, %d blobs (%d shared with the template); set up in %s",
		st.Images, len(tplBlobs), srcImages, len(h.srcBlobs), shared, time.Since(start).Round(time.Millisecond))

	// prune, if the CLI has it by now: a rule drawn per trial, or the
	// arguments of OCISTORE_CHAOS_PRUNE_ARGS.
	if r := h.exec(h.tpl, "prune", "-h"); r.code == 0 {
		h.prune = append([]string{"prune"}, strings.Fields(os.Getenv(envPruneArgs))...)
		if len(h.prune) == 1 {
			t.Logf("the CLI has prune: prune trials draw a rule (keep-last, keep-last with a ref filter, until with a ref filter)")
		} else {
			t.Logf("the CLI has prune: prune trials run %q", strings.Join(h.prune, " "))
		}
	} else {
		t.Logf("the CLI has no prune command (exit %d): prune trials skipped", r.code)
	}
	return h
}

// makeSource copies the generated layout raw to dir with every tag
// "example.com/REST" renamed to prefix+REST. It returns the entries in index
// order.
func makeSource(raw, dir, prefix string) ([]entry, error) {
	if err := copyLayout(raw, dir); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	var ix v1.Index
	if err := json.Unmarshal(b, &ix); err != nil {
		return nil, err
	}
	var es []entry
	for i, m := range ix.Manifests {
		name, ok := strings.CutPrefix(m.Annotations[v1.AnnotationRefName], "example.com/")
		if !ok {
			return nil, fmt.Errorf("source tag %q: want example.com/...", m.Annotations[v1.AnnotationRefName])
		}
		ix.Manifests[i].Annotations = map[string]string{v1.AnnotationRefName: prefix + name}
		es = append(es, entry{prefix + name, m.Digest.String()})
	}
	if b, err = json.Marshal(ix); err != nil {
		return nil, err
	}
	// A real copy (copyLayout links only blobs): replacing it is safe.
	return es, os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644)
}

// fresh returns a new copy of the template.
func (h *harness) fresh(t *testing.T, what string) string {
	t.Helper()
	h.seq++
	dir := filepath.Join(h.work, fmt.Sprintf("%s-%04d", what, h.seq))
	if err := copyLayout(h.tpl, dir); err != nil {
		t.Fatalf("copy template: %v", err)
	}
	return dir
}

// copyLayout copies the layout src to dst (which must not exist): blobs/
// with hard links (cp -al), everything else (index.json, oci-layout, the
// journal and its directory) as real copies.
//
// Linking blobs is safe because ocistore never writes a blob file in place:
// a blob is published by renaming a new temp file over its name (the old
// inode, shared with the template, is left alone) and removed by unlink,
// which drops only this copy's link; the journal, the one file written in
// place, is copied (and bbolt's flock is per inode, so a linked journal
// would also share the writer lock between trials). checkTemplate verifies
// the assumption at the end of the run.
func copyLayout(src, dst string) error {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-al", filepath.Join(src, "blobs"), filepath.Join(dst, "blobs")).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -al: %v: %s", err, out)
	}
	return testutil.WalkRel(src, func(rel, p string, d fs.DirEntry) error {
		switch rel {
		case ".":
			return nil
		case "blobs":
			return filepath.SkipDir
		}
		target := filepath.Join(dst, filepath.FromSlash(rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(target, info.Mode().Perm())
		case !d.Type().IsRegular():
			return fmt.Errorf("copy %s: not a regular file", p)
		}
		return testutil.CopyFile(p, target, info.Mode().Perm())
	})
}

// keep moves a layout that showed a violation out of the scratch directory,
// so that it survives the test, and returns where it went.
func (h *harness) keep(dir string) string {
	kept, err := os.MkdirTemp("", "ocistore-chaos-violation-")
	if err != nil {
		return "(not kept: " + err.Error() + ")"
	}
	dst := filepath.Join(kept, filepath.Base(dir))
	if err := os.Rename(dir, dst); err != nil {
		if err := exec.Command("cp", "-a", dir, dst).Run(); err != nil {
			return "(not kept: " + err.Error() + ")"
		}
	}
	return dst
}

// Running the binary ----------------------------------------------------------

// run is one run of the binary.
type run struct {
	args           []string
	code           int  // exit code; -1 when a signal ended it
	killed         bool // SIGKILL ended it (ours)
	dur            time.Duration
	stdout, stderr string
}

func (r *run) String() string {
	how := fmt.Sprintf("exit %d", r.code)
	if r.killed {
		how = "killed"
	}
	return fmt.Sprintf("ocistore %s: %s after %s\n--- stdout:\n%s--- stderr:\n%s", strings.Join(r.args, " "), how,
		r.dur.Round(time.Microsecond), tail(r.stdout, 2000), tail(r.stderr, 4000))
}

func tail(s string, n int) string {
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return s
}

// suspicious reports output that is wrong whatever the exit status.
func (r *run) suspicious() bool {
	return strings.Contains(r.stderr, "DATA RACE") || strings.Contains(r.stderr, "panic:") ||
		strings.Contains(r.stderr, "fatal error:")
}

// exec runs the binary on the layout dir to completion.
func (h *harness) exec(dir string, args ...string) *run {
	return h.start(dir, args...).wait(-1, nil)
}

// child is a started run.
type child struct {
	cmd         *exec.Cmd
	r           *run
	begin       time.Time
	out, errOut bytes.Buffer
	startErr    error
}

func (h *harness) start(dir string, args ...string) *child {
	c := &child{r: &run{args: args}}
	c.cmd = exec.Command(h.bin, append([]string{"-l", dir, "--lock-timeout", lockTimeout}, args...)...)
	c.cmd.Env = h.env
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.errOut
	c.begin = time.Now()
	c.startErr = c.cmd.Start()
	return c
}

// wait waits for the child, SIGKILLing it after delay unless delay < 0.
// started, when not nil, is called with the process once it runs (the
// concurrent killer uses it).
func (c *child) wait(delay time.Duration, started func(*os.Process)) *run {
	r := c.r
	if c.startErr != nil {
		r.code, r.stderr = -2, c.startErr.Error()
		return r
	}
	if started != nil {
		started(c.cmd.Process)
	}
	kill := func() { _ = c.cmd.Process.Signal(syscall.SIGKILL) }
	var timer *time.Timer
	if delay >= 0 {
		timer = time.AfterFunc(delay, kill)
	}
	hang := time.AfterFunc(runTimeout, kill)
	err := c.cmd.Wait()
	r.dur = time.Since(c.begin)
	hang.Stop()
	if timer != nil {
		timer.Stop()
	}
	r.stdout, r.stderr = c.out.String(), c.errOut.String()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws, ok := ee.Sys().(syscall.WaitStatus)
		if ok && ws.Signaled() {
			r.code, r.killed = -1, ws.Signal() == syscall.SIGKILL
		} else {
			r.code = ee.ExitCode()
		}
	default:
		r.code, r.stderr = -2, r.stderr+err.Error()
	}
	if r.dur >= runTimeout {
		r.killed = false // hung: not one of our kills
		r.stderr += fmt.Sprintf("\n(hung: killed after %s)", runTimeout)
	}
	return r
}

// fsckReport is `ocistore fsck --format json`.
type fsckReport struct {
	Images   int       `json:"images"`
	Blobs    int       `json:"blobs"`
	Bytes    int64     `json:"bytes"`
	Problems []problem `json:"problems"`
}

type problem struct {
	Kind   string `json:"kind"`
	Digest string `json:"digest"`
	Path   string `json:"path"`
	Detail string `json:"detail"`
}

func (h *harness) fsck(dir string) (*fsckReport, *run, error) {
	r := h.exec(dir, "fsck", "--format", "json")
	if r.code != 0 && r.code != 3 {
		return nil, r, fmt.Errorf("fsck: exit %d", r.code)
	}
	var rep fsckReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		return nil, r, fmt.Errorf("fsck output: %w", err)
	}
	if (r.code == 0) != (len(rep.Problems) == 0) {
		return &rep, r, fmt.Errorf("fsck: exit %d with %d problems", r.code, len(rep.Problems))
	}
	return &rep, r, nil
}

// pending counts the journal's unfinished records without running recovery.
func (h *harness) pending(dir string) (int, *run, error) {
	r := h.exec(dir, "journal", "--format", "json")
	if r.code != 0 {
		return 0, r, fmt.Errorf("journal: exit %d", r.code)
	}
	var out struct {
		Journal bool              `json:"journal"`
		Pending []json.RawMessage `json:"pending"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		return 0, r, fmt.Errorf("journal output: %w", err)
	}
	if !out.Journal {
		return 0, r, errors.New("journal: the layout has no journal")
	}
	return len(out.Pending), r, nil
}

type action struct {
	Kind   string `json:"kind"`
	Txn    uint64 `json:"txn"`
	Detail string `json:"detail"`
}

func (h *harness) recover(dir string) ([]action, *run, error) {
	r := h.exec(dir, "recover", "--format", "json")
	if r.code != 0 {
		return nil, r, fmt.Errorf("recover: exit %d", r.code)
	}
	var out struct {
		Actions []action `json:"actions"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		return nil, r, fmt.Errorf("recover output: %w", err)
	}
	return out.Actions, r, nil
}

// Reading a layout without the engine ------------------------------------------

type layoutState struct {
	raw     []byte
	digest  digest.Digest
	index   v1.Index
	entries []entry           // sorted
	tags    map[string]string // tag -> manifest digest
	dups    []string          // tags on more than one entry
}

func readLayout(dir string) (*layoutState, error) {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, err
	}
	s := &layoutState{raw: b, digest: digest.FromBytes(b), tags: map[string]string{}}
	if err := json.Unmarshal(b, &s.index); err != nil {
		return nil, fmt.Errorf("index.json (%d bytes): %w", len(b), err)
	}
	if s.index.SchemaVersion != 2 {
		return nil, fmt.Errorf("index.json: schemaVersion %d", s.index.SchemaVersion)
	}
	for _, m := range s.index.Manifests {
		name := m.Annotations[v1.AnnotationRefName]
		s.entries = append(s.entries, entry{name, m.Digest.String()})
		if name == "" {
			continue
		}
		if _, ok := s.tags[name]; ok {
			s.dups = append(s.dups, name)
		}
		s.tags[name] = m.Digest.String()
	}
	s.entries = sortEntries(s.entries)
	return s, nil
}

// listBlobs returns every blob file of dir with its size, and files under
// blobs/ that are not named by a digest.
func listBlobs(dir string) (map[digest.Digest]int64, []string, error) {
	out := map[digest.Digest]int64{}
	var odd []string
	algs, err := os.ReadDir(filepath.Join(dir, "blobs"))
	if err != nil {
		return nil, nil, err
	}
	for _, a := range algs {
		if !a.IsDir() {
			odd = append(odd, "blobs/"+a.Name())
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, "blobs", a.Name()))
		if err != nil {
			return nil, nil, err
		}
		for _, f := range files {
			d := digest.NewDigestFromEncoded(digest.Algorithm(a.Name()), f.Name())
			info, err := f.Info()
			if err != nil {
				return nil, nil, err
			}
			if d.Validate() != nil || !info.Mode().IsRegular() {
				odd = append(odd, "blobs/"+a.Name()+"/"+f.Name())
				continue
			}
			out[d] = info.Size()
		}
	}
	return out, odd, nil
}

var manifestTypes = map[string]bool{
	v1.MediaTypeImageManifest: true, v1.MediaTypeImageIndex: true,
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
}

// blobCache spares the audit from hashing, for every trial, the thousands
// of blobs that are still the template's files: the template is hashed
// once at start (and again by checkTemplate at the end), and a blob whose
// file is the template's inode with the template's size is trusted.
// Manifests are parsed once per digest, after their content was verified.
type blobCache struct {
	ino  map[digest.Digest]uint64          // template blob -> its inode
	kids map[digest.Digest][]v1.Descriptor // verified manifest -> its children
}

func (c *blobCache) trust(dir string) error {
	blobs, _, err := listBlobs(dir)
	if err != nil {
		return err
	}
	for d := range blobs {
		fi, err := os.Lstat(blobFile(dir, d))
		if err != nil {
			return err
		}
		c.ino[d] = fi.Sys().(*syscall.Stat_t).Ino
	}
	return nil
}

func blobFile(dir string, d digest.Digest) string {
	return filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
}

// closure walks the graph of s from index.json, checking that every
// reachable blob is there with its descriptor's size and digest (read and
// hashed unless it is the template's untouched file). It returns the
// reachable set and every problem: a missing blob, a wrong size or digest, a
// manifest that does not parse.
func (c *blobCache) closure(dir string, s *layoutState) (map[digest.Digest]bool, []string) {
	reach := map[digest.Digest]bool{}
	var probs []string
	var walk func(d v1.Descriptor, depth int)
	walk = func(d v1.Descriptor, depth int) {
		if reach[d.Digest] {
			return
		}
		reach[d.Digest] = true
		if err := d.Digest.Validate(); err != nil || depth > 16 {
			probs = append(probs, fmt.Sprintf("descriptor %q at depth %d: %v", d.Digest, depth, err))
			return
		}
		p := blobFile(dir, d.Digest)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) && len(d.URLs) > 0:
			return
		case err != nil:
			probs = append(probs, fmt.Sprintf("dangling %s (%s): %v", d.Digest, d.MediaType, err))
			return
		case !fi.Mode().IsRegular():
			probs = append(probs, fmt.Sprintf("blob %s is not a regular file", d.Digest))
			return
		case fi.Size() != d.Size:
			probs = append(probs, fmt.Sprintf("size %s: %d bytes on disk, descriptor says %d", d.Digest, fi.Size(), d.Size))
			return
		}
		kids, parsed := c.kids[d.Digest]
		if ino, ok := c.ino[d.Digest]; !ok || ino != fi.Sys().(*syscall.Stat_t).Ino || (manifestTypes[d.MediaType] && !parsed) {
			b, err := os.ReadFile(p)
			if err != nil {
				probs = append(probs, fmt.Sprintf("read %s: %v", d.Digest, err))
				return
			}
			if got := d.Digest.Algorithm().FromBytes(b); got != d.Digest {
				probs = append(probs, fmt.Sprintf("digest %s: content hashes to %s", d.Digest, got))
				return
			}
			if manifestTypes[d.MediaType] && !parsed {
				if kids, err = testutil.Listed(b); err != nil {
					probs = append(probs, fmt.Sprintf("manifest %s: %v", d.Digest, err))
					return
				}
				c.kids[d.Digest] = kids
			}
		}
		if !manifestTypes[d.MediaType] {
			return
		}
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	for _, m := range s.index.Manifests {
		walk(m, 0)
	}
	return reach, probs
}

var indexTemp = regexp.MustCompile(`^\.index\.json`)

// leftovers lists temp files: renameio's in the root, ingest files.
func leftovers(dir string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if indexTemp.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	ents, _ = os.ReadDir(filepath.Join(dir, ".ocistore", "ingest"))
	for _, e := range ents {
		out = append(out, ".ocistore/ingest/"+e.Name())
	}
	return out
}

// audit is the engine-independent check of a recovered layout: index.json
// parses, no tag twice, the closure is complete and intact, no temp files
// left. It returns the problems and the orphan blobs.
func (h *harness) audit(dir string) (*layoutState, []digest.Digest, []string) {
	s, err := readLayout(dir)
	if err != nil {
		return nil, nil, []string{"index.json: " + err.Error()}
	}
	var probs []string
	if len(s.dups) > 0 {
		probs = append(probs, fmt.Sprintf("tags on more than one entry: %v", s.dups))
	}
	reach, cp := h.cache.closure(dir, s)
	probs = append(probs, cp...)
	blobs, odd, err := listBlobs(dir)
	if err != nil {
		return s, nil, append(probs, err.Error())
	}
	for _, o := range odd {
		probs = append(probs, "unexpected file "+o)
	}
	var orphans []digest.Digest
	for d := range blobs {
		if !reach[d] {
			orphans = append(orphans, d)
		}
	}
	slices.Sort(orphans)
	for _, l := range leftovers(dir) {
		probs = append(probs, "leftover temp file "+l)
	}
	return s, orphans, probs
}

// files lists every file of the layout with its size (-1 for blobs, which
// are never rewritten in place), except the journal (bbolt may touch its
// pages without a change of state).
func files(dir string) (map[string]int64, error) {
	out := map[string]int64{}
	err := testutil.WalkRel(dir, func(rel, _ string, d fs.DirEntry) error {
		switch {
		case d.IsDir(), strings.HasPrefix(rel, ".ocistore/journal.db"):
			return nil
		case strings.HasPrefix(rel, "blobs/"):
			out[rel] = -1
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[rel] = info.Size()
		return nil
	})
	return out, err
}

func diffFiles(a, b map[string]int64) string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "-"+k)
		} else if v != w {
			d = append(d, fmt.Sprintf("~%s (%d -> %d bytes)", k, v, w))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "+"+k)
		}
	}
	slices.Sort(d)
	return strings.Join(d, " ")
}

// The template never changes ------------------------------------------------

type fingerprint struct {
	index, journal string
	blobs          map[digest.Digest]int64
}

func fingerprintOf(dir string) (fingerprint, error) {
	var fp fingerprint
	sum := func(p string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, p))
		s := sha256.Sum256(b)
		return hex.EncodeToString(s[:]), err
	}
	var err error
	if fp.index, err = sum("index.json"); err != nil {
		return fp, err
	}
	if fp.journal, err = sum(".ocistore/journal.db"); err != nil {
		return fp, err
	}
	fp.blobs, _, err = listBlobs(dir)
	return fp, err
}

// checkTemplate verifies that no trial wrote through a hard link into the
// template: same index.json and journal bytes, same blob files, and every
// blob still hashes to its name.
func (h *harness) checkTemplate() []string {
	fp, err := fingerprintOf(h.tpl)
	if err != nil {
		return []string{"template: " + err.Error()}
	}
	var probs []string
	if fp.index != h.tplFP.index || fp.journal != h.tplFP.journal {
		probs = append(probs, "template: index.json or journal.db changed during the run")
	}
	if !maps.Equal(fp.blobs, h.tplFP.blobs) {
		probs = append(probs, "template: its blob files changed during the run")
	}
	for d := range fp.blobs {
		b, err := os.ReadFile(filepath.Join(h.tpl, "blobs", d.Algorithm().String(), d.Encoded()))
		if err != nil || d.Algorithm().FromBytes(b) != d {
			probs = append(probs, fmt.Sprintf("template: blob %s was written in place through a hard link (%v)", d, err))
		}
	}
	return probs
}
