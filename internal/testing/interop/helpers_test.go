package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// ocistoreBin is the CLI built by TestMain from this checkout.
var ocistoreBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

// testMain builds cmd/ocistore once, from the module root, into a temp dir
// that it removes after the tests ran.
func testMain(m *testing.M) int {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		fmt.Fprintf(os.Stderr, "interop: go env GOMOD: %q, %v\n", gomod, err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "ocistore-interop-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "interop:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	ocistoreBin = filepath.Join(tmp, "ocistore")
	args := []string{"build", "-o", ocistoreBin}
	if raceBuild {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/ocistore")
	build := exec.Command("go", args...)
	build.Dir = filepath.Dir(gomod)
	var stderr bytes.Buffer
	build.Stderr = &stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "interop: (cd %s && go %s): %v\n%s", build.Dir, strings.Join(args, " "), err, stderr.String())
		return 1
	}
	return m.Run()
}

// requireTools fails the test when skopeo or umoci is missing: the interop
// suite never skips.
func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"skopeo", "umoci"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (%v): run make tools (installs skopeo and umoci from Debian, as root)", tool, err)
		}
	}
}

// Running commands ------------------------------------------------------------

// cmdTimeout bounds one run of a tool; the whole suite takes a few seconds.
const cmdTimeout = time.Minute

// result is what one run of a program did.
type result struct {
	name           string
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("$ %s %s\nexit status %d\n--- stderr:\n%s--- stdout:\n%s", r.name, strings.Join(r.args, " "), r.code, r.stderr, r.stdout)
}

// run runs name with args and returns what it did; only a program that
// cannot be started fails the test.
func run(t *testing.T, name string, args ...string) result {
	t.Helper()
	return runEnv(t, nil, name, args...)
}

// runEnv is run with env added to the environment.
func runEnv(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{name: filepath.Base(name), args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
		if ctx.Err() != nil {
			t.Fatalf("timed out after %s:\n%v", cmdTimeout, r)
		}
	default:
		t.Fatalf("$ %s %s: %v", name, strings.Join(args, " "), err)
	}
	return r
}

// succeeded fails the test when r, a run of what, exited with a non-zero
// status; it returns r.
func succeeded(t *testing.T, what string, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s failed:\n%v", what, r)
	}
	return r
}

// mustRun is run that fails the test on a non-zero exit status.
func mustRun(t *testing.T, name string, args ...string) result {
	t.Helper()
	return succeeded(t, "command", run(t, name, args...))
}

// ocistoreEnv is the CLI's extra environment: a race-enabled binary would
// sleep a second at exit to let other goroutines report (a race still
// fails the command with exit status 66).
var ocistoreEnv = []string{strings.TrimSpace("GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0")}

// ocistore runs the CLI on the layout dir.
func ocistore(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runEnv(t, ocistoreEnv, ocistoreBin, append([]string{"-l", dir}, args...)...)
}

func mustOcistore(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return succeeded(t, "ocistore", ocistore(t, dir, args...))
}

// skopeo runs skopeo with --insecure-policy (no policy.json needed).
func skopeo(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, "skopeo", append([]string{"--insecure-policy"}, args...)...)
}

func mustSkopeo(t *testing.T, args ...string) result {
	t.Helper()
	return succeeded(t, "skopeo", skopeo(t, args...))
}

func mustUmoci(t *testing.T, args ...string) result {
	t.Helper()
	return mustRun(t, "umoci", args...)
}

func ociRef(dir, tag string) string { return "oci:" + dir + ":" + tag }

// skopeoInspect runs skopeo inspect oci:DIR:TAG and fails unless it
// succeeds and reports the manifest digest want.
func skopeoInspect(t *testing.T, dir, tag, want string) {
	t.Helper()
	r := mustSkopeo(t, "inspect", ociRef(dir, tag))
	var out struct{ Digest string }
	decodeJSON(t, r, &out)
	if out.Digest != want {
		t.Fatalf("skopeo reports digest %s, want %s (index.json's):\n%v", out.Digest, want, r)
	}
}

// skopeoCopy copies oci:SRC:TAG to oci:DST:DSTTAG.
func skopeoCopy(t *testing.T, src, tag, dst, dstTag string) result {
	t.Helper()
	return mustSkopeo(t, "copy", "-q", ociRef(src, tag), ociRef(dst, dstTag))
}

// decodeJSON decodes r's output into out; output that is not JSON fails the
// test.
func decodeJSON(t *testing.T, r result, out any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.stdout), out); err != nil {
		t.Fatalf("%s output is not JSON (%v):\n%v", r.name, err, r)
	}
}

// show lists the commands that led to a failed check.
func show(rs ...result) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.String())
		b.WriteString("\n")
	}
	return b.String()
}

// Building layouts with umoci -------------------------------------------------

// umociLayout builds an OCI layout with umoci from small files.
type umociLayout struct {
	t   *testing.T
	dir string
	src string // the files inserted; layers of the same file are identical
}

// newUmociLayout runs umoci init on dir; src holds the files to insert and
// may be shared between layouts.
func newUmociLayout(t *testing.T, dir, src string) *umociLayout {
	t.Helper()
	mustUmoci(t, "init", "--layout", dir)
	return &umociLayout{t: t, dir: dir, src: src}
}

func (u *umociLayout) image(tag string) string { return u.dir + ":" + tag }

// newImage makes an empty image.
func (u *umociLayout) newImage(tag string) {
	u.t.Helper()
	mustUmoci(u.t, "new", "--image", u.image(tag))
}

// insert adds a layer holding the file name (created in src with content
// name+"\n" if needed) at /name on top of image from; the result is tag
// ("" rewrites from in place).
func (u *umociLayout) insert(from, tag, name string) {
	u.t.Helper()
	p := filepath.Join(u.src, name)
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		if err := os.WriteFile(p, []byte(name+"\n"), 0o644); err != nil {
			u.t.Fatal(err)
		}
	}
	args := []string{"insert", "--image", u.image(from)}
	if tag != "" {
		args = append(args, "--tag", tag)
	}
	mustUmoci(u.t, append(args, p, "/"+name)...)
}

func (u *umociLayout) tag(src, dst string) {
	u.t.Helper()
	mustUmoci(u.t, "tag", "--image", u.image(src), dst)
}

func (u *umociLayout) gc() {
	u.t.Helper()
	mustUmoci(u.t, "gc", "--layout", u.dir)
}

// buildBase builds the layout of the issue: base (one layer), app1 and app2
// (base layer + one own layer each), latest (a second tag of app1's
// manifest), then umoci gc.
func buildBase(t *testing.T, dir, src string) *umociLayout {
	t.Helper()
	u := newUmociLayout(t, dir, src)
	u.newImage("base")
	u.insert("base", "", "base.txt")
	u.insert("base", "app1", "one.txt")
	u.insert("base", "app2", "two.txt")
	u.tag("app1", "latest")
	u.gc()
	return u
}

// Reading layouts -------------------------------------------------------------

// entries returns the descriptors of dir's index.json, in file order.
func entries(t *testing.T, dir string) []v1.Descriptor {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ix v1.Index
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatalf("%s/index.json: %v\n%s", dir, err, raw)
	}
	return ix.Manifests
}

func refName(d v1.Descriptor) string { return d.Annotations[v1.AnnotationRefName] }

// entryKey names an index.json entry in messages: "tag@digest", "<none>@digest"
// when untagged.
func entryKey(d v1.Descriptor) string {
	n := refName(d)
	if n == "" {
		n = "<none>"
	}
	return n + "@" + d.Digest.String()
}

// tags maps every tag of dir's index.json to its digest.
func tags(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, d := range entries(t, dir) {
		if n := refName(d); n != "" {
			if prev, ok := m[n]; ok {
				t.Fatalf("%s/index.json: tag %s twice (%s and %s)", dir, n, prev, d.Digest)
			}
			m[n] = d.Digest.String()
		}
	}
	return m
}

// untagged returns the digests of the entries without a tag.
func untagged(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, d := range entries(t, dir) {
		if refName(d) == "" {
			out = append(out, d.Digest.String())
		}
	}
	return out
}

// blobFiles maps "alg:hex" to the size of every file under dir/blobs.
func blobFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	algs, err := os.ReadDir(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range algs {
		files, err := os.ReadDir(filepath.Join(dir, "blobs", a.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			fi, err := f.Info()
			if err != nil {
				t.Fatal(err)
			}
			out[a.Name()+":"+f.Name()] = fi.Size()
		}
	}
	return out
}

func blobPath(dir, dgst string) string {
	alg, hex, _ := strings.Cut(dgst, ":")
	return filepath.Join(dir, "blobs", alg, hex)
}

// manifestDoc is the part of an image manifest or index that names blobs.
type manifestDoc struct {
	MediaType string          `json:"mediaType"`
	Config    *v1.Descriptor  `json:"config"`
	Layers    []v1.Descriptor `json:"layers"`
	Manifests []v1.Descriptor `json:"manifests"`
}

// children lists the descriptors m names: its config, layers and manifests.
func (m manifestDoc) children() []v1.Descriptor {
	kids := slices.Concat(m.Layers, m.Manifests)
	if m.Config != nil {
		kids = append(kids, *m.Config)
	}
	return kids
}

func readManifest(t *testing.T, dir, dgst string) manifestDoc {
	t.Helper()
	raw, err := os.ReadFile(blobPath(dir, dgst))
	if err != nil {
		t.Fatalf("manifest %s: %v", dgst, err)
	}
	var m manifestDoc
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("manifest %s: %v", dgst, err)
	}
	return m
}

// closure adds to set every blob of the image or index dgst: itself, its
// config and layers, nested manifests.
func closure(t *testing.T, dir, dgst string, set map[string]bool) map[string]bool {
	t.Helper()
	if set == nil {
		set = map[string]bool{}
	}
	if set[dgst] {
		return set
	}
	set[dgst] = true
	m := readManifest(t, dir, dgst)
	if m.Config != nil {
		set[m.Config.Digest.String()] = true
	}
	for _, l := range m.Layers {
		set[l.Digest.String()] = true
	}
	for _, c := range m.Manifests {
		closure(t, dir, c.Digest.String(), set)
	}
	return set
}

// reachable is the closure of every index.json entry that keep accepts.
func reachable(t *testing.T, dir string, keep func(v1.Descriptor) bool) map[string]bool {
	t.Helper()
	set := map[string]bool{}
	for _, d := range entries(t, dir) {
		if keep(d) {
			closure(t, dir, d.Digest.String(), set)
		}
	}
	return set
}

func all(v1.Descriptor) bool { return true }

// layers returns the layer digests of the manifest dgst.
func layers(t *testing.T, dir, dgst string) []string {
	t.Helper()
	var out []string
	for _, l := range readManifest(t, dir, dgst).Layers {
		out = append(out, l.Digest.String())
	}
	return out
}

// requireBlobs fails unless every blob of set is a file of dir.
func requireBlobs(t *testing.T, dir string, set map[string]bool, what string) {
	t.Helper()
	have := blobFiles(t, dir)
	var missing []string
	for d := range set {
		if _, ok := have[d]; !ok {
			missing = append(missing, d)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Fatalf("%s: blobs missing from %s:\n  %s", what, dir, strings.Join(missing, "\n  "))
	}
}

// treeSnapshot maps every file under dir to its mode, size, mtime and
// content, to prove that a command left a directory alone.
func treeSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = fmt.Sprintf("%v %d %s %x", fi.Mode(), fi.Size(), fi.ModTime().Format(time.RFC3339Nano), b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// changed lists the files of before that after lacks or has with another
// mode, size, mtime or content, and the files only after has.
func changed(before, after map[string]string) []string {
	var out []string
	for p, s := range before {
		if a, ok := after[p]; !ok {
			out = append(out, p+" (removed)")
		} else if a != s {
			out = append(out, p+" (changed)")
		}
	}
	for _, p := range minus(after, before) {
		out = append(out, p+" (added)")
	}
	sort.Strings(out)
	return out
}

// Sets -------------------------------------------------------------------------

func setOf[K comparable, V any](m map[K]V) map[K]bool {
	s := make(map[K]bool, len(m))
	for k := range m {
		s[k] = true
	}
	return s
}

// minus returns the keys of a that are not in b, sorted.
func minus[V, W any](a map[string]V, b map[string]W) []string {
	var out []string
	for k := range a {
		if _, ok := b[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// ocistore checks -------------------------------------------------------------

// fsckReport is `ocistore fsck --format json`.
type fsckReport struct {
	Images   int   `json:"images"`
	Blobs    int   `json:"blobs"`
	Bytes    int64 `json:"bytes"`
	Problems []struct {
		Kind     string `json:"kind"`
		Severity string `json:"severity"` // "problem" or "notice"
		Digest   string `json:"digest"`
		Path     string `json:"path"`
		Detail   string `json:"detail"`
	} `json:"problems"`
}

// problems counts the findings that are problems (not notices).
func (r *fsckReport) problems() int {
	n := 0
	for _, p := range r.Problems {
		if p.Severity != "notice" {
			n++
		}
	}
	return n
}

func (r *fsckReport) kinds() []string {
	var out []string
	for _, p := range r.Problems {
		out = append(out, p.Kind)
	}
	return out
}

// fsck runs ocistore fsck --format json on dir.
func fsck(t *testing.T, dir string) (*fsckReport, result) {
	t.Helper()
	r := ocistore(t, dir, "fsck", "--format", "json")
	var rep fsckReport
	decodeJSON(t, r, &rep)
	if (r.code == 0) != (rep.problems() == 0) || (r.code != 0 && r.code != 3) {
		t.Fatalf("fsck exit status does not match its report (want 0 without problems, notices or not, 3 with):\n%v", r)
	}
	return &rep, r
}

// fsckClean fails unless ocistore fsck exits 0 with no finding (no
// problem, no notice).
func fsckClean(t *testing.T, dir, when string) *fsckReport {
	t.Helper()
	rep, r := fsck(t, dir)
	if r.code != 0 || len(rep.Problems) != 0 {
		t.Fatalf("%s: ocistore fsck is not clean:\n%v", when, r)
	}
	return rep
}

// lsRow is one row of `ocistore ls --format json`.
type lsRow struct {
	Name   string `json:"ref"` // null (here "") when untagged
	Digest string `json:"digest"`
}

// ls runs ocistore ls --format json on dir.
func ls(t *testing.T, dir string) ([]lsRow, result) {
	t.Helper()
	r := mustOcistore(t, dir, "ls", "--format", "json")
	var rows []lsRow
	decodeJSON(t, r, &rows)
	return rows, r
}

// recoverOutput is `ocistore recover --format json`.
type recoverOutput struct {
	Actions []struct {
		Kind   string `json:"kind"`
		Detail string `json:"detail"`
	} `json:"actions"`
}

func recoverLayout(t *testing.T, dir string) (*recoverOutput, result) {
	t.Helper()
	r := mustOcistore(t, dir, "recover", "--format", "json")
	var out recoverOutput
	decodeJSON(t, r, &out)
	return &out, r
}

// adopt is ocistore's first contact with a layout another tool wrote: fsck
// before adoption may report only journal-missing; `ocistore recover`
// adopts it (builds the journal: one recount, nothing else) without changing
// index.json or any blob; fsck is clean afterwards and `ocistore ls` lists
// every entry of index.json in order. (ls and inspect open read-only and do
// not adopt.)
func adopt(t *testing.T, dir string) {
	t.Helper()
	rep, r := fsck(t, dir)
	if k := rep.kinds(); r.code != 0 || len(k) > 0 && !slices.Equal(k, []string{"journal-missing"}) {
		t.Fatalf("first fsck of a layout ocistore never opened: want exit 0 and at most journal-missing (a notice), got %v:\n%v", k, r)
	}
	before := treeSnapshot(t, dir)
	out, r := recoverLayout(t, dir)
	for _, a := range out.Actions {
		if a.Kind != "recount" {
			t.Fatalf("adopting %s: ocistore recover did %s, want only a recount:\n%v", dir, a.Kind, r)
		}
	}
	var touched []string
	for _, c := range changed(before, treeSnapshot(t, dir)) {
		if !strings.HasPrefix(c, ".ocistore/") {
			touched = append(touched, c)
		}
	}
	if len(touched) > 0 {
		t.Fatalf("adopting %s (ocistore recover) touched files of the layout: %v\n%v", dir, touched, r)
	}
	if _, err := os.Stat(filepath.Join(dir, ".ocistore", "journal.db")); err != nil {
		t.Fatalf("ocistore recover did not adopt %s: %v\n%v", dir, err, r)
	}
	fsckClean(t, dir, "after adoption by ocistore recover")

	rows, r := ls(t, dir)
	var want []lsRow
	for _, d := range entries(t, dir) {
		want = append(want, lsRow{Name: refName(d), Digest: d.Digest.String()})
	}
	if !slices.Equal(rows, want) {
		t.Fatalf("ocistore ls lists %v, index.json has %v:\n%v", rows, want, r)
	}
}

// rmOutput is `ocistore rm --format json`.
type rmOutput struct {
	Removed []string `json:"removed"`
	Freed   []struct {
		Digest string `json:"digest"`
		Size   int64  `json:"size"`
	} `json:"freed"`
	BytesFreed int64 `json:"bytesFreed"`
}

// rm runs ocistore rm REFS (tags or digests) and checks, against the layout
// on disk before and after, that it removed exactly the entries of refs and
// freed exactly the blobs that only they reached: what rm reports, what
// disappeared from blobs/ and the closure difference must agree. It returns
// the freed digests.
func rm(t *testing.T, dir string, refs ...string) []string {
	t.Helper()
	named := func(d v1.Descriptor) bool {
		return slices.Contains(refs, refName(d)) || slices.Contains(refs, d.Digest.String())
	}
	gone := reachable(t, dir, named)
	kept := reachable(t, dir, func(d v1.Descriptor) bool { return !named(d) })
	var wantFreed []string
	for d := range gone {
		if !kept[d] {
			wantFreed = append(wantFreed, d)
		}
	}
	sort.Strings(wantFreed)
	var wantEntries []string
	for _, d := range entries(t, dir) {
		if !named(d) {
			wantEntries = append(wantEntries, entryKey(d))
		}
	}
	sort.Strings(wantEntries)
	before := blobFiles(t, dir)

	r := mustOcistore(t, dir, append([]string{"rm", "--format", "json"}, refs...)...)
	var out rmOutput
	decodeJSON(t, r, &out)
	var freed []string
	var sum int64
	for _, b := range out.Freed {
		freed = append(freed, b.Digest)
		sum += b.Size
	}
	sort.Strings(freed)
	if !slices.Equal(freed, wantFreed) {
		t.Fatalf("ocistore rm %v freed %v, want the blobs only those entries reached: %v\n%v", refs, freed, wantFreed, r)
	}
	if sum != out.BytesFreed {
		t.Fatalf("ocistore rm: bytesFreed %d, the freed blobs add up to %d:\n%v", out.BytesFreed, sum, r)
	}
	unlinked := minus(before, blobFiles(t, dir))
	if !slices.Equal(unlinked, wantFreed) {
		t.Fatalf("ocistore rm %v unlinked %v from blobs/, want %v:\n%v", refs, unlinked, wantFreed, r)
	}
	var got []string
	for _, d := range entries(t, dir) {
		got = append(got, entryKey(d))
	}
	sort.Strings(got)
	if !slices.Equal(got, wantEntries) {
		t.Fatalf("ocistore rm %v: index.json entries are %v, want %v:\n%v", refs, got, wantEntries, r)
	}
	return freed
}
