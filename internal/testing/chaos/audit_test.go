package chaos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/gen"
)

// TestAuditFindsDamage proves that the checks TestChaos relies on are not
// vacuous: on a generated layout the audit finds nothing, and it finds each
// kind of damage a broken engine could leave.
func TestAuditFindsDamage(t *testing.T) {
	newAuditor := func() *harness {
		return &harness{cache: &blobCache{ino: map[digest.Digest]uint64{}, kids: map[digest.Digest][]v1.Descriptor{}}}
	}
	layoutWith := func(t *testing.T, damage func(dir string, s *layoutState)) (probs []string, orphans []digest.Digest) {
		t.Helper()
		dir := filepath.Join(t.TempDir(), "layout")
		if _, err := gen.Write(dir, gen.Spec{Images: 20, Repos: 4, Seed: 7}); err != nil {
			t.Fatal(err)
		}
		s, err := readLayout(dir)
		if err != nil {
			t.Fatal(err)
		}
		damage(dir, s)
		_, orphans, probs = newAuditor().audit(dir)
		return probs, orphans
	}
	// layer returns the first layer of the first image.
	layer := func(t *testing.T, dir string, s *layoutState) digest.Digest {
		h := newAuditor()
		if _, probs := h.cache.closure(dir, s); len(probs) > 0 {
			t.Fatal(probs)
		}
		kids := h.cache.kids[s.index.Manifests[0].Digest]
		return kids[len(kids)-1].Digest
	}
	write := func(t *testing.T, p string, b []byte) {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if probs, orphans := layoutWith(t, func(string, *layoutState) {}); len(probs) > 0 || len(orphans) > 0 {
		t.Fatalf("clean layout: problems %v, orphans %v", probs, orphans)
	}
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string, s *layoutState)
		want   string // in a problem; "orphan" means in the orphan list
	}{
		{"missing layer", func(t *testing.T, dir string, s *layoutState) {
			if err := os.Remove(blobFile(dir, layer(t, dir, s))); err != nil {
				t.Fatal(err)
			}
		}, "dangling"},
		{"corrupt layer", func(t *testing.T, dir string, s *layoutState) {
			p := blobFile(dir, layer(t, dir, s))
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0xff
			write(t, p, b)
		}, "hashes to"},
		{"truncated manifest", func(t *testing.T, dir string, s *layoutState) {
			write(t, blobFile(dir, s.index.Manifests[0].Digest), []byte("{"))
		}, "size"},
		{"orphan", func(t *testing.T, dir string, s *layoutState) {
			b := []byte("nobody uses me")
			write(t, blobFile(dir, digest.FromBytes(b)), b)
		}, "orphan"},
		{"index temp", func(t *testing.T, dir string, s *layoutState) {
			write(t, filepath.Join(dir, ".index.json123"), s.raw)
		}, "leftover temp file"},
		{"ingest temp", func(t *testing.T, dir string, s *layoutState) {
			if err := os.MkdirAll(filepath.Join(dir, ".ocistore", "ingest"), 0o755); err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, ".ocistore", "ingest", "1-x"), nil)
		}, "leftover temp file"},
		{"tag twice", func(t *testing.T, dir string, s *layoutState) {
			ix := strings.Replace(string(s.raw), s.index.Manifests[1].Annotations[v1.AnnotationRefName], s.index.Manifests[0].Annotations[v1.AnnotationRefName], 1)
			write(t, filepath.Join(dir, "index.json"), []byte(ix))
		}, "more than one entry"},
		{"torn index", func(t *testing.T, dir string, s *layoutState) {
			write(t, filepath.Join(dir, "index.json"), s.raw[:len(s.raw)/2])
		}, "index.json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			probs, orphans := layoutWith(t, func(dir string, s *layoutState) { c.damage(t, dir, s) })
			if c.want == "orphan" {
				if len(orphans) != 1 || len(probs) > 0 {
					t.Fatalf("want one orphan and no problem, got orphans %v, problems %v", orphans, probs)
				}
				return
			}
			for _, p := range probs {
				if strings.Contains(p, c.want) {
					return
				}
			}
			t.Fatalf("want a problem with %q, got %v (orphans %v)", c.want, probs, orphans)
		})
	}
}

// TestTagModel checks the concurrent run's model: an acknowledged op sets
// its tags, a killed or failed one only adds a possibility.
func TestTagModel(t *testing.T) {
	def := func(tag string) string {
		if tag == "tpl" {
			return "sha256:t"
		}
		return ""
	}
	m := tagModel{}
	m.apply(&cop{effects: map[string]string{"a": "sha256:1", "tpl": ""}, outcome: outAck}, def)
	m.apply(&cop{effects: map[string]string{"a": "", "b": "sha256:2"}, outcome: outKilled}, def)
	m.apply(&cop{effects: map[string]string{"c": "sha256:3"}, outcome: outFailed}, def)
	for tag, want := range map[string][]string{"a": {"sha256:1", ""}, "b": {"", "sha256:2"}, "c": {"", "sha256:3"}, "tpl": {""}} {
		if len(m[tag]) != len(want) {
			t.Errorf("%s: %v, want %v", tag, m[tag], want)
		}
		for _, w := range want {
			if !m[tag][w] {
				t.Errorf("%s: %v, want %v", tag, m[tag], want)
			}
		}
	}
	if v, ok := m.definite("tpl", def); !ok || v != "" {
		t.Errorf("tpl: definite %q %v, want absent", v, ok)
	}
	if _, ok := m.definite("a", def); ok {
		t.Error("a: definite after a killed rm")
	}
	m.apply(&cop{effects: map[string]string{"a": "sha256:9"}, outcome: outAck}, def)
	if v, ok := m.definite("a", def); !ok || v != "sha256:9" {
		t.Errorf("a: definite %q %v after an acknowledged tag", v, ok)
	}
	if v, ok := m.definite("untouched", def); !ok || v != "" {
		t.Errorf("untouched: %q %v", v, ok)
	}
}

// TestSettledClass: a run that exited 0 is "after" also when the operation
// changed no entry (before-set == after-set). Regression: full run, seed
// 20260127, trial 174, "prune --filter until=2026-01-01T00:00:06Z --filter
// ref=example.com/repo7*" matched nothing, exited 0, and was reported as a
// violation ("exited 0 ... but left the layout before").
func TestSettledClass(t *testing.T) {
	a, b := entry{"a", "sha256:1"}, entry{"b", "sha256:2"}
	noop := &trialOp{before: []entry{a, b}, after: []entry{a, b}}
	rm := &trialOp{before: []entry{a, b}, after: []entry{a}}
	for _, c := range []struct {
		op       *trialOp
		entries  []entry
		exitedOK bool
		want     string
	}{
		{noop, []entry{a, b}, true, classAfter},
		{noop, []entry{a, b}, false, classBefore},
		{rm, []entry{a, b}, false, classBefore},
		{rm, []entry{a, b}, true, classBefore}, // then flagged: exited 0 but not after
		{rm, []entry{a}, false, classAfter},
		{rm, []entry{a}, true, classAfter},
		{rm, []entry{b}, true, ""},
	} {
		if got := settledClass(c.entries, c.op, c.exitedOK); got != c.want {
			t.Errorf("before %v after %v, entries %v, exited 0 %v: %q, want %q", c.op.before, c.op.after, c.entries, c.exitedOK, got, c.want)
		}
	}
}
