package testutil

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ocistore/ocistore/internal/fsio"
	"github.com/ocistore/ocistore/recovery"
	"github.com/ocistore/ocistore/store"
)

// The damaged-layout corpus (testdata/damaged, written by
// internal/testing/mkdamaged): helpers shared by the golden tests of the library
// and of the CLI.

// DamagedCase is one case of the corpus.
type DamagedCase struct {
	Name string
	Dir  string // testdata/damaged/<name>
	Spec DamagedSpec
}

// DamagedSpec is a case's case.json.
type DamagedSpec struct {
	Description string `json:"description"`
	Repair      struct {
		DropBroken  bool `json:"dropBroken"`
		KeepOrphans bool `json:"keepOrphans"`
		// Refused: the repair refuses (store.ErrRefused), changing nothing.
		Refused bool `json:"refused"`
	} `json:"repair"`
	SparseIndex int64    `json:"sparseIndex"`
	Fifos       []string `json:"fifos"`
}

// DamagedCases reads the cases under root (testdata/damaged).
func DamagedCases(t testing.TB, root string) []DamagedCase {
	t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var out []DamagedCase
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		c := DamagedCase{Name: e.Name(), Dir: filepath.Join(root, e.Name())}
		b, err := os.ReadFile(filepath.Join(c.Dir, "case.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &c.Spec); err != nil {
			t.Fatalf("%s/case.json: %v", c.Name, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("no cases under %s", root)
	}
	return out
}

// DamagedCaseNamed returns the case of the corpus under root named name.
func DamagedCaseNamed(t testing.TB, root, name string) DamagedCase {
	t.Helper()
	for _, c := range DamagedCases(t, root) {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no case %s under %s", name, root)
	return DamagedCase{}
}

// canaryContent is what the file next to every materialized layout holds.
const canaryContent = "canary: nothing may read, write or remove this file\n"

// Materialize copies the case's layout (symlinks as symlinks) to a new
// directory, next to a canary file that the corpus's symlinks point at,
// and applies what could not be committed (a sparse index.json, named
// pipes). It
// returns the layout directory and a function that fails the test if
// anything outside the layout was touched since the layout was made: the
// canary opened, read, written or renamed by any process (inotify), its
// content, mode or times changed, or a new file beside it.
func (c DamagedCase) Materialize(t testing.TB) (string, func()) {
	t.Helper()
	parent := t.TempDir()
	dir := filepath.Join(parent, "layout")
	canary := filepath.Join(parent, "canary")
	if err := writeUnforked(canary, []byte(canaryContent), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(canary, old, old); err != nil {
		t.Fatal(err)
	}
	CopyTree(t, filepath.Join(c.Dir, "layout"), dir)
	if c.Spec.SparseIndex > 0 {
		if err := os.Truncate(filepath.Join(dir, "index.json"), c.Spec.SparseIndex); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range c.Spec.Fifos {
		if err := syscall.Mkfifo(filepath.Join(dir, filepath.FromSlash(f)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before, err := os.Stat(canary)
	if err != nil {
		t.Fatal(err)
	}
	w := WatchFiles(t, canary)
	return dir, func() {
		t.Helper()
		var fi os.FileInfo
		var b []byte
		w.Ignore(t, func() {
			if fi, err = os.Stat(canary); err != nil {
				t.Fatalf("the canary outside the layout is gone: %v", err)
			}
			b, _ = os.ReadFile(canary)
		})
		if string(b) != canaryContent || fi.Mode() != before.Mode() || !fi.ModTime().Equal(before.ModTime()) || fi.Size() != before.Size() {
			t.Errorf("the canary outside the layout changed: %q, %v, %v", b, fi.Mode(), fi.ModTime())
		}
		ents, _ := os.ReadDir(parent)
		if len(ents) != 2 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("files appeared next to the layout: %v", names)
		}
	}
}

// CopyTree copies the tree src to dst: directories, regular files (with
// their modes) and symlinks (as symlinks, never followed), but not the
// space reserve (.ocistore/reserve).
func CopyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := WalkRel(src, func(rel, p string, d fs.DirEntry) error {
		to := filepath.Join(dst, filepath.FromSlash(rel))
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case rel == fsio.ReserveFile:
			return nil // the space reserve: the copy's first open makes its own
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return CopyFile(p, to, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

var (
	asideName = regexp.MustCompile(`(journal\.db|ingest|quarantine)\.corrupt-[0-9]+`)
	pinTime   = regexp.MustCompile(`(rebuilt at|freed until) [0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z`)
)

// NormalizeDamaged makes output that names the layout directory, the
// time a journal was moved aside or the times of a pin (a journal rebuilt
// without its leases) comparable across runs.
func NormalizeDamaged(s, dir string) string {
	s = strings.ReplaceAll(s, filepath.Dir(dir), "$TMP")
	s = pinTime.ReplaceAllString(s, "$1 TIME")
	return asideName.ReplaceAllString(s, "$1.corrupt-N")
}

// LayoutState lists the files of the layout in dir (type, size and sha256
// of regular files; the target of symlinks; journals by name only: bbolt's
// bytes are not reproducible), then index.json's content.
func LayoutState(t testing.TB, dir string) string {
	t.Helper()
	var lines []string
	err := WalkRel(dir, func(rel, p string, d fs.DirEntry) error {
		switch {
		case rel == ".":
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			lines = append(lines, fmt.Sprintf("l %s -> %s", rel, target))
		case d.IsDir():
			lines = append(lines, "d "+rel+"/")
		case !d.Type().IsRegular():
			lines = append(lines, fmt.Sprintf("%s %s", d.Type(), rel)) // never opened: a pipe would block
		case strings.HasPrefix(rel, ".ocistore/journal.db"):
			lines = append(lines, "f "+rel+" (journal)")
		case rel == fsio.ReserveFile:
			// The space reserve holds no data and comes and goes with
			// the space free on the test's file system.
		default:
			fi, err := d.Info()
			if err != nil {
				return err
			}
			if fi.Size() > 1<<20 {
				lines = append(lines, fmt.Sprintf("f %s %d bytes", rel, fi.Size()))
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h := sha256.Sum256(b)
			lines = append(lines, fmt.Sprintf("f %s %d %s", rel, len(b), hex.EncodeToString(h[:6])))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	out := strings.Join(NormalizeLines(lines), "\n") + "\n--- index.json\n"
	fi, err := os.Lstat(filepath.Join(dir, "index.json"))
	switch {
	case err != nil:
		out += "(" + err.Error() + ")\n"
	case !fi.Mode().IsRegular() || fi.Size() > 1<<20:
		out += fmt.Sprintf("(%s, %d bytes)\n", fi.Mode(), fi.Size())
	default:
		b, _ := os.ReadFile(filepath.Join(dir, "index.json"))
		out += string(b)
		if !strings.HasSuffix(out, "\n") {
			out += "\n"
		}
	}
	return NormalizeDamaged(out, dir)
}

// NormalizeLines sorts nothing and changes journal aside names only.
func NormalizeLines(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = asideName.ReplaceAllString(l, "$1.corrupt-N")
	}
	return out
}

// RenderRepair renders what a repair did and left, then the layout's state:
// the content of a case's repaired.txt.
func RenderRepair(t testing.TB, dir string, res *store.RepairResult) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("--- actions\n")
	for _, a := range res.Actions {
		if a.Txn != 0 {
			fmt.Fprintf(&b, "%s txn %d: %s\n", a.Kind, a.Txn, a.Detail)
		} else {
			fmt.Fprintf(&b, "%s: %s\n", a.Kind, a.Detail)
		}
	}
	b.WriteString("--- broken\n")
	for _, e := range res.Broken {
		fmt.Fprintf(&b, "%q %s: %s\n", e.Name, e.Digest, e.Reason)
	}
	if len(res.Invalid) > 0 {
		b.WriteString("--- invalid\n")
		for _, e := range res.Invalid {
			fmt.Fprintf(&b, "manifests[%d] %s: %s\n", e.Pos, e.Raw, e.Err)
		}
	}
	b.WriteString("--- problems left\n")
	b.WriteString(RenderProblems(res.Report))
	b.WriteString("--- files\n")
	return NormalizeDamaged(b.String(), dir) + LayoutState(t, dir)
}

// RenderProblems renders a report's problems, one a line, and its counts.
func RenderProblems(r *recovery.Report) string {
	var b strings.Builder
	for _, p := range r.Problems {
		fmt.Fprintln(&b, p.String())
	}
	fmt.Fprintf(&b, "(%d images, %d blobs, %d bytes)\n", r.Images, r.Blobs, r.Bytes)
	return b.String()
}

// ReportJSON renders a check report as the golden fsck.json holds it.
func ReportJSON(t testing.TB, dir string, r *recovery.Report) string {
	t.Helper()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return NormalizeDamaged(string(b), dir) + "\n"
}

// ProblemLines renders problems one a line (Problem.String), for comparing
// two reports' lists.
func ProblemLines(ps []recovery.Problem) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintln(&b, p.String())
	}
	return b.String()
}

// DeepOnly reports whether only the deep check can find p: a blob whose
// bytes do not hash to its name (the walk verifies manifests only, and
// words it otherwise), or one that cannot be read to the end.
func DeepOnly(p recovery.Problem) bool {
	return p.Kind == recovery.KindUnreadable || p.Kind == recovery.KindDigestMismatch && strings.HasPrefix(p.Detail, "content (")
}

// WithoutDeepOnly returns the problems of ps a quick check finds too.
func WithoutDeepOnly(ps []recovery.Problem) []recovery.Problem {
	var out []recovery.Problem
	for _, p := range ps {
		if !DeepOnly(p) {
			out = append(out, p)
		}
	}
	return out
}

// CheckProblemList fails the test unless every problem of ps names a file
// or a digest, and none is reported twice (same kind, digest and path).
func CheckProblemList(t testing.TB, ps []recovery.Problem) {
	t.Helper()
	seen := map[recovery.Problem]bool{}
	for _, p := range ps {
		if p.Kind == "" || p.Detail == "" || p.Path == "" && p.Digest == "" {
			t.Errorf("a problem without a kind, a detail, or a file or digest: %+v", p)
		}
		k := recovery.Problem{Kind: p.Kind, Digest: p.Digest, Path: p.Path}
		if seen[k] {
			t.Errorf("reported twice: %s %s %s", p.Kind, p.Digest, p.Path)
		}
		seen[k] = true
	}
}
