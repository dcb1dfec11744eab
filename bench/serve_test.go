package main

import (
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestRegistryStorageLikePush: the docker-registry storage that
// registryStorage writes from a generated layout is, file for file and
// byte for byte, the one docker-registry writes itself when the same
// images are pushed to it over HTTP; and a registry started on it answers
// every tag with its manifest.
func TestRegistryStorageLikePush(t *testing.T) {
	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	if _, err := generate(lay, genSpec{Images: 4, Seed: 4}); err != nil {
		t.Fatal(err)
	}
	if err := renameRefs(lay, tagsRepo); err != nil {
		t.Fatal(err)
	}

	// Pushed over HTTP.
	pushed, err := startRegistrySrv(filepath.Join(dir, "pushed"))
	if err != nil {
		t.Fatal(err)
	}
	p := &pusher{c: httpClient(1), base: pushed.base}
	raw, err := os.ReadFile(filepath.Join(lay, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ix manifest
	if err := json.Unmarshal(raw, &ix); err != nil {
		t.Fatal(err)
	}
	blob := func(d string) []byte {
		b, err := os.ReadFile(filepath.Join(lay, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, e := range ix.Manifests {
		mb := blob(e.Digest)
		var m manifest
		if err := json.Unmarshal(mb, &m); err != nil {
			t.Fatal(err)
		}
		for _, d := range append([]desc{*m.Config}, m.Layers...) {
			b := blob(d.Digest)
			if err := p.blob(tagsRepo, digest.Digest(d.Digest), d.Size, func() io.Reader { return bytes.NewReader(b) }); err != nil {
				t.Fatal(err)
			}
		}
		_, tag, _ := strings.Cut(e.Annotations[refName], ":")
		if err := p.manifest(tagsRepo, tag, mb); err != nil {
			t.Fatal(err)
		}
	}
	pushed.stop()

	// Written directly.
	want, err := registryStorage(lay, filepath.Join(dir, "written", "storage"), tagsRepo, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 4 {
		t.Fatalf("%d tags written, want 4", len(want))
	}
	tree := func(root string) map[string]string {
		out := map[string]string{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.Contains(p, "/_uploads/") {
				return err
			}
			b, err := os.ReadFile(p)
			rel, _ := filepath.Rel(root, p)
			out[rel] = string(b)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	a, b := tree(filepath.Join(dir, "pushed", "storage")), tree(filepath.Join(dir, "written", "storage"))
	if len(a) == 0 {
		t.Fatal("the push wrote nothing")
	}
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s: pushed %q, written %q", k, trunc(v, 80), trunc(b[k], 80))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("%s written, not pushed", k)
		}
	}

	written, err := startRegistrySrv(filepath.Join(dir, "written"))
	if err != nil {
		t.Fatal(err)
	}
	defer written.stop()
	c := httpClient(1)
	tags, err := tagsList(c, written.base, tagsRepo)
	if err != nil || len(tags) != 4 {
		t.Fatalf("tags list: %v, %v", tags, err)
	}
	for tag, d := range want {
		if err := getManifest(c, written.base, tag, d); err != nil {
			t.Error(err)
		}
	}
}

// TestLoopBudget: every loop manifest has the same size, so that the
// budget holds loopTags of them whatever their numbers.
func TestLoopBudget(t *testing.T) {
	li := newLoopImages()
	a, _ := li.manifest(0)
	b, tag := li.manifest(123456789)
	if len(a) != len(b) || bytes.Equal(a, b) {
		t.Errorf("loop manifests: %d and %d bytes, equal %v", len(a), len(b), bytes.Equal(a, b))
	}
	if tag != "t9" {
		t.Errorf("tag %q", tag)
	}
	if want := int64(len(li.cfg)+3*loopLayer+loopTags*len(a)) + 256; li.budget() != want {
		t.Errorf("budget %d, want %d", li.budget(), want)
	}
}

// TestServeRowsEndToEnd runs every serve row at tiny sizes, the servers
// in their own processes (ocistore serve built from this checkout,
// docker-registry, the file server in this test binary: TestMain), and
// writes the report: every run completes without error, and the report
// has the section's tables and a verdict for each target.
func TestServeRowsEndToEnd(t *testing.T) {
	p := quickPlan()
	p.Serve = serveSizes{BlobSize: 2 << 20, SmallBlobs: 12, SmallMin: 16 << 10, SmallMax: 64 << 10, SmallClients: 4, BlobRuns: 2,
		Tags: 40, PushImages: 12, PushClients: 4, PruneImages: 60, PruneInterval: 3 * time.Second, Runs: 1}
	r, err := newRunner(p, filepath.Join(t.TempDir(), "work"))
	if err != nil {
		t.Fatal(err)
	}
	r.log, r.noWait = testLog{t}, true
	rows := map[string]bool{}
	for _, s := range serveRows {
		rows[s] = true
	}
	if err := r.serving(rows); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{scSrvBlobBig: 6, scSrvBlobSmall: 6, scSrvTags: 2, scSrvPush: 2, scSrvPrune: 1}
	got := map[string]int{}
	for _, x := range r.results {
		got[x.Scenario]++
		if x.Err != "" || x.Res.Errors > 0 {
			t.Errorf("%s %s run %d: %s %s", x.Scenario, x.Peer, x.Run, x.Err, x.Res.ErrMsg)
		}
		if x.Serve == nil || x.Serve.Seconds <= 0 {
			t.Errorf("%s %s run %d: no measure: %+v", x.Scenario, x.Peer, x.Run, x.Serve)
		}
	}
	for sc, n := range want {
		if got[sc] != n {
			t.Errorf("%s: %d runs, want %d", sc, got[sc], n)
		}
	}
	if x := r.sel(scSrvPrune, pServe, -1); len(x) == 1 && x[0].Serve != nil {
		if st := x[0].Serve; st.Pruned < 60 || st.During == 0 || math64(st.DuringMaxMs) {
			t.Errorf("prune row: %+v", st)
		}
	}
	out := filepath.Join(t.TempDir(), "report.md")
	if err := r.writeReport(out, reportInfo{versions: moduleVersions("..")}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	rep := string(raw)
	for _, s := range []string{
		"## 10. Registry server", "### Blob GET: one 2 MiB blob (curl)", "### Manifest GET by tag at 40 tags", "### Push: 12 small images by 4 clients",
		"### PUT manifest during a prune of 60 images", "| " + pServe + " |", "| " + pRegistry + " |", "| " + pFileServer + " |",
	} {
		if !strings.Contains(rep, s) {
			t.Errorf("the report lacks %q", s)
		}
	}
	if strings.Contains(rep, "FAILED") || strings.Contains(rep, "Not measured in this run") {
		t.Errorf("the report has a failed or missing cell:\n%s", rep)
	}
	n := 0
	for _, line := range strings.Split(rep, "\n") {
		if strings.HasPrefix(line, "**Target**: ") {
			n++
			if !strings.Contains(line, "— not measured in this mode (at ") {
				t.Errorf("target line without the tiny size's verdict: %s", line)
			}
		}
	}
	if n != 5 {
		t.Errorf("%d target lines, want 5", n)
	}
}

func math64(v float64) bool { return v != v } // NaN

// TestMergeServe: bench serve -into puts its rows into a saved run in
// place of that run's rows of the same names, keeps every other result,
// records the re-measure, and the report written from the saved run has
// them.
func TestMergeServe(t *testing.T) {
	dir := t.TempDir()
	saved := filepath.Join(dir, "results.json")
	old := savedRun{Full: true, Runs: 3, Results: []runResult{
		{Scenario: scDeleteOne, Peer: pOcistore, N: 100, K: 10, Run: 1, WallMs: 5, Res: childResult{TotalMs: 4}},
		{Scenario: scSrvPush, Peer: pServe, N: 500, Run: 1, WallMs: 1000, Serve: &serveStats{Items: 500, Seconds: 50}},
		{Scenario: scSrvTags, Peer: pServe, N: 20000, Run: 1, WallMs: 1000, Serve: &serveStats{Items: 20000, Seconds: 10, P50Ms: 0.5, P99Ms: 2}},
	}}
	raw, _ := json.Marshal(old)
	if err := os.WriteFile(saved, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := newRunner(fullPlan(), filepath.Join(dir, "work"))
	if err != nil {
		t.Fatal(err)
	}
	r.log = testLog{t}
	for _, name := range []string{pServe, pRegistry} {
		r.results = append(r.results, runResult{Scenario: scSrvPush, Peer: name, N: 500, Run: 1, WallMs: 10000, Serve: &serveStats{Items: 500, Seconds: 10, P50Ms: 100, P99Ms: 200, MaxMs: 250, Load: 1.5}})
	}
	r.loads = dist{1.5, 1.5}
	if err := mergeServe(saved, r, map[string]bool{rowPush: true}, time.Now(), time.Minute, ".."); err != nil {
		t.Fatal(err)
	}
	sr, _, err := loadSaved(saved)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, x := range sr.Results {
		got[x.Scenario+"/"+x.Peer]++
		if x.Scenario == scSrvPush && x.Serve.Seconds != 10 {
			t.Errorf("an old push run kept: %+v", x.Serve)
		}
	}
	want := map[string]int{scDeleteOne + "/" + pOcistore: 1, scSrvTags + "/" + pServe: 1, scSrvPush + "/" + pServe: 1, scSrvPush + "/" + pRegistry: 1}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d runs, want %d (all: %v)", k, got[k], n, got)
		}
	}
	if len(sr.Remeasured) != 1 || sr.Remeasured[0].Scenario != serveFamily || sr.Remeasured[0].Peer != rowPush || sr.Remeasured[0].Replaced != 1 {
		t.Errorf("re-measure record: %+v", sr.Remeasured)
	}
	out := filepath.Join(dir, "report.md")
	if err := reportMain([]string{"-from", saved, "-out", out, "-work", filepath.Join(dir, "rwork")}); err != nil {
		t.Fatal(err)
	}
	rep, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"**Re-measured**: section 10 (rows push,", "| push of 500 small images by 8 clients: at least docker-registry's images/s | 50.0 images/s vs 50.0 (1×), every fsync in place | met |", "| blob GET of a 1 GiB blob (curl): at least docker-registry's throughput, and ≥80% of http.FileServer's on the same file | — | not measured in this run |"} {
		if !strings.Contains(string(rep), s) {
			t.Errorf("the report lacks %q", s)
		}
	}
}
