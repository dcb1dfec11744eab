package store_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// jcLayout writes, as another tool would, a layout of two images (sharing
// a layer; the second's manifest spells its keys "Config" and "Layers")
// and one orphan blob, with an index.json whose entries are under the key
// manifestsKey, written as it is in the file. It returns the graph of the
// images (every blob skopeo and umoci reach) and the orphan.
func jcLayout(t *testing.T, dir, manifestsKey string) (reached []digest.Digest, orphan digest.Digest) {
	t.Helper()
	blobs := map[digest.Digest][]byte{}
	add := func(b []byte, mt string) v1.Descriptor {
		d := testutil.Blob(b, mt)
		blobs[d.Digest] = b
		return d
	}
	shared := []byte("shared layer " + manifestsKey)
	m1 := testutil.RawImage(blobs, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), shared, []byte("own layer 1"))
	cfg2 := add([]byte(`{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), v1.MediaTypeImageConfig)
	l2 := add([]byte("own layer 2"), v1.MediaTypeImageLayerGzip)
	sh := testutil.Blob(shared, v1.MediaTypeImageLayerGzip)
	desc := func(d v1.Descriptor) string { b, _ := json.Marshal(d); return string(b) }
	m2 := add([]byte(`{"schemaVersion":2,"mediaType":"`+v1.MediaTypeImageManifest+`","Config":`+desc(cfg2)+`,"Layers":[`+desc(sh)+`,`+desc(l2)+`]}`), v1.MediaTypeImageManifest)
	orphan = add([]byte("nothing references me"), v1.MediaTypeImageLayerGzip).Digest
	testutil.WriteRawLayout(t, dir, blobs, nil)
	ix := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","` + manifestsKey + `":[` +
		desc(testutil.Named(m1, "app:1")) + `,` + desc(testutil.Named(m2, "app:2")) + `]}` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "index.json"), []byte(ix), 0o644); err != nil {
		t.Fatal(err)
	}
	for d := range blobs {
		if d != orphan {
			reached = append(reached, d)
		}
	}
	slices.Sort(reached)
	// What the tools read: both images, every blob but the orphan.
	var tools v1.Index
	if err := json.Unmarshal([]byte(ix), &tools); err != nil || len(tools.Manifests) != 2 {
		t.Fatalf("encoding/json reads %d entries (%v)", len(tools.Manifests), err)
	}
	var graph []digest.Digest
	for _, m := range tools.Manifests {
		graph = append(graph, testutil.Graph(t, dir, m)...)
	}
	slices.Sort(graph)
	if graph = slices.Compact(graph); !slices.Equal(graph, reached) {
		t.Fatalf("the tools reach %v, want %v", graph, reached)
	}
	return reached, orphan
}

// jcKeys are spellings of "manifests" in index.json that skopeo and umoci
// read (encoding/json matches keys under case folding, after unescaping).
var jcKeys = []string{"Manifests", `\u006danifests`, `\u004danifests`}

// TestForeignSpellingGC: with index.json's entries under "Manifests" or an
// escaped "manifests", the store lists the images, and a GC with no grace
// frees the orphan alone; a tag rewrites index.json under "manifests", which
// the tools still read whole.
func TestForeignSpellingGC(t *testing.T) {
	for _, key := range jcKeys {
		t.Run(strings.ReplaceAll(key, `\`, "_"), func(t *testing.T) {
			ctx := context.Background()
			dir := filepath.Join(t.TempDir(), "layout")
			reached, orphan := jcLayout(t, dir, key)
			l := libOpen(t, dir, 1)
			imgs, err := l.s.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, im := range imgs {
				names = append(names, im.Name)
			}
			if !slices.Equal(names, []string{"app:1", "app:2"}) {
				t.Fatalf("List: %v, want app:1 app:2", names)
			}
			res, err := l.s.GC(ctx, store.GCOptions{Grace: 0})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Freed) != 1 || res.Freed[0].Digest != orphan.String() {
				t.Errorf("GC freed %v, want the orphan %s alone", res.Freed, orphan)
			}
			l.wantBlobs(true, reached...)
			l.wantBlobs(false, orphan)
			l.clean()
			// A transaction rewrites index.json: the tools read every
			// image in it still.
			l.tag(imgs[0].Descriptor, "app:3")
			var tools v1.Index
			if err := json.Unmarshal(l.indexFile(), &tools); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range tools.Manifests {
				got = append(got, m.Annotations[v1.AnnotationRefName])
			}
			if !slices.Equal(got, []string{"app:1", "app:2", "app:3"}) {
				t.Errorf("after a tag the tools read %v in %s", got, l.indexFile())
			}
			l.del("app:2")
			l.wantBlobs(true, l.graph(imgs[0].Descriptor)...)
			l.clean()
		})
	}
}

// TestForeignSpellingRepair: fsck --repair (store.Repair, removing orphans
// with no grace) on such a layout removes the orphan alone.
func TestForeignSpellingRepair(t *testing.T) {
	for _, key := range jcKeys {
		t.Run(strings.ReplaceAll(key, `\`, "_"), func(t *testing.T) {
			ctx := context.Background()
			dir := filepath.Join(t.TempDir(), "layout")
			reached, orphan := jcLayout(t, dir, key)
			if _, err := store.Repair(ctx, dir, &store.RepairOptions{Grace: -1}); err != nil {
				t.Fatal(err)
			}
			for _, d := range reached {
				if !testutil.HasBlob(t, dir, d) {
					t.Errorf("repair removed %s, which the tools reach", d)
				}
			}
			if testutil.HasBlob(t, dir, orphan) {
				t.Errorf("repair kept the orphan %s", orphan)
			}
			l := libOpen(t, dir, 1)
			if got := l.index(); len(got) != 2 {
				t.Errorf("after repair: %v", got)
			}
			l.clean()
		})
	}
}
