package interop

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/gen"
)

// entryState reads index.json as skopeo does and sorts its entries into
// those whose whole closure is on disk and those missing a blob (reading
// blobs with encoding/json, independently of ocistore).
func entryState(t *testing.T, dir string) (whole, broken map[string]bool) {
	t.Helper()
	whole, broken = map[string]bool{}, map[string]bool{}
	var ok func(d v1.Descriptor, depth int) bool
	ok = func(d v1.Descriptor, depth int) bool {
		b, err := os.ReadFile(blobPath(dir, d.Digest.String()))
		if err != nil {
			return false
		}
		if depth > 8 || (d.MediaType != v1.MediaTypeImageManifest && d.MediaType != v1.MediaTypeImageIndex) {
			return true
		}
		var m manifestDoc
		if json.Unmarshal(b, &m) != nil {
			return false
		}
		for _, k := range m.children() {
			if !ok(k, depth+1) {
				return false
			}
		}
		return true
	}
	for _, e := range entries(t, dir) {
		name := refName(e)
		if ok(e, 0) {
			whole[name] = true
		} else {
			broken[name] = true
		}
	}
	return whole, broken
}

// TestSkopeoRacesPrune: the real skopeo copies an image into a layout
// while ocistore prunes it, started at random offsets of each other.
// skopeo takes no lock: it reads index.json when it starts and writes it
// back, with its image added, when it ends. What ocistore guarantees:
//   - the images the prune keeps are whole, whatever skopeo does;
//   - when skopeo's write lands before the prune renames its index.json,
//     or while it removes blobs, the prune notices (exit 1, "changed by
//     another tool"; exit 4 when the recount must wait for the next
//     recovery): it renames nothing or puts back what it took out, and
//     every image skopeo's index.json names is whole;
//   - when skopeo's write lands after the prune, it may name images the
//     prune removed, and skopeo's own image may reuse their blobs: those
//     entries can miss blobs (ocistore cannot know of a write that has not
//     happened); fsck reports them and fsck --repair --drop-broken --force
//     brings the layout back to a consistent state.
func TestSkopeoRacesPrune(t *testing.T) {
	requireTools(t)
	t.Parallel()
	const trials = 6
	var conflicts, after, broke int
	rng := rand.New(rand.NewPCG(7, uint64(time.Now().UnixNano())))
	for trial := range trials {
		tmp := t.TempDir()
		l := filepath.Join(tmp, "L")
		if _, err := gen.Write(l, gen.Spec{Images: 400, Repos: 2, LayerSize: 1024, Seed: uint64(trial + 1)}); err != nil {
			t.Fatal(err)
		}
		adopt(t, l)
		// skopeo's image: a copy of one the prune removes, so that it
		// reuses blobs the prune frees.
		src := filepath.Join(tmp, "S")
		mustSkopeo(t, "copy", "-q", ociRef(l, "example.com/repo0:v0"), ociRef(src, "src"))
		var plan struct {
			Removed []struct {
				Name string `json:"ref"`
			} `json:"removed"`
		}
		r := mustOcistore(t, l, "prune", "--keep-last", "1", "--dry-run", "--format", "json")
		decodeJSON(t, r, &plan)
		removed := map[string]bool{}
		for _, im := range plan.Removed {
			removed[im.Name] = true
		}
		var kept []string
		for _, e := range entries(t, l) {
			if !removed[refName(e)] {
				kept = append(kept, refName(e))
			}
		}
		if len(kept) != 2 || len(removed) != 398 {
			t.Fatalf("prune would keep %v and remove %d", kept, len(removed))
		}

		// How long a copy takes here, to start the prune near the moment
		// skopeo writes index.json (it reads it when it starts).
		start := time.Now()
		mustSkopeo(t, "copy", "-q", ociRef(src, "src"), ociRef(filepath.Join(tmp, "T"), "timing"))
		took := time.Since(start)
		var wg sync.WaitGroup
		var sk, pr result
		delay := max(took-time.Duration(rng.IntN(350))*time.Millisecond, 0)
		wg.Go(func() { sk = skopeo(t, "copy", "-q", ociRef(src, "src"), ociRef(l, "copied")) })
		time.Sleep(delay)
		wg.Go(func() { pr = ocistore(t, l, "prune", "--keep-last", "1") })
		wg.Wait()
		if sk.code != 0 {
			t.Fatalf("trial %d: skopeo copy failed:\n%v", trial, sk)
		}
		whole, broken := entryState(t, l)
		for _, k := range kept {
			if !whole[k] {
				t.Fatalf("trial %d: %s, which the prune keeps, is not whole after the race:\n%v\n%v", trial, k, pr, sk)
			}
		}
		switch {
		case (pr.code == 1 || pr.code == 4) && strings.Contains(pr.stderr, "changed by another tool"):
			// Exit 4: the prune noticed skopeo's write while it removed
			// blobs, and could not recount at once (skopeo was still
			// writing index.json in place): the record is left for the
			// next recovery, which recounts from skopeo's index.
			conflicts++
			if len(broken) > 0 {
				t.Fatalf("trial %d: the prune noticed skopeo's write, yet entries miss blobs: %v\n%v", trial, sortedKeys(broken), pr)
			}
		case pr.code == 0:
			after++
			if len(broken) > 0 {
				broke++
			}
		default:
			t.Fatalf("trial %d: prune:\n%v", trial, pr)
		}
		if !whole["copied"] && !broken["copied"] {
			t.Fatalf("trial %d: skopeo's tag is not in index.json", trial)
		}
		// Whatever happened, the layout can be brought back: fsck names
		// what is broken, and repair drops it.
		mustOcistore(t, l, "recover")
		if len(broken) > 0 {
			rep, _ := fsck(t, l)
			if !slices.Contains(rep.kinds(), "dangling") {
				t.Fatalf("trial %d: fsck does not report the entries missing blobs %v: %v", trial, sortedKeys(broken), rep.kinds())
			}
			mustOcistore(t, l, "fsck", "--repair", "--drop-broken", "--force", "--grace", "0s")
		}
		fsckClean(t, l, fmt.Sprintf("trial %d, after the race", trial))
		for _, k := range append(kept, "copied") {
			if whole[k] {
				skopeoInspect(t, l, k, tags(t, l)[k])
			}
		}
	}
	t.Logf("%d trials (skopeo copy started first, the prune up to 350 ms before the copy's usual end): the prune noticed skopeo's write %d times; it ended first %d times, %d of them leaving entries that miss blobs (skopeo wrote after the prune an index naming blobs the prune had freed)", trials, conflicts, after, broke)
}
