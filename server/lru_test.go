package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/server"
	"github.com/ocistore/ocistore/store"
)

// newRegistry serves a new layout's store; cleanup closes both.
func newRegistry(t *testing.T) (*store.Store, *httptest.Server) {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "layout"), nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := server.New(st, nil)
	srv := httptest.NewServer(reg)
	t.Cleanup(func() {
		srv.Close()
		reg.Close()
		st.Close()
	})
	return st, srv
}

// push sends an image of one random layer of size bytes to repo:tag.
func push(t *testing.T, base, repo, tag string, size int) {
	t.Helper()
	put := func(b []byte) v1.Descriptor {
		d := digest.FromBytes(b)
		resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), "application/octet-stream", bytes.NewReader(b))
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("push blob: %v %v", resp, err)
		}
		resp.Body.Close()
		return v1.Descriptor{Digest: d, Size: int64(len(b))}
	}
	layer := make([]byte, size)
	rand.Read(layer)
	cfg := put([]byte(fmt.Sprintf(`{"os":"linux","architecture":"amd64","tag":%q}`, tag)))
	cfg.MediaType = v1.MediaTypeImageConfig
	l := put(layer)
	l.MediaType = v1.MediaTypeImageLayer
	m := v1.Manifest{MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: []v1.Descriptor{l}}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	req, _ := http.NewRequest(http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(mb))
	req.Header.Set("Content-Type", v1.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("push manifest: %v %v", resp, err)
	}
	resp.Body.Close()
}

func status(t *testing.T, method, u string) int {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	req.Header.Set("Accept", v1.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestPruneEvictsLeastRecentlyPulled: last use is the last pull, so a
// size budget evicts the image nobody pulled since it was pushed, not the
// oldest push that clients still pull.
func TestPruneEvictsLeastRecentlyPulled(t *testing.T) {
	ctx := context.Background()
	st, srv := newRegistry(t)
	for _, tag := range []string{"old", "mid", "new"} {
		push(t, srv.URL, "team/app", tag, 100<<10)
		time.Sleep(20 * time.Millisecond) // distinct first-seen times
	}
	if c := status(t, http.MethodGet, srv.URL+"/v2/team/app/manifests/old"); c != 200 {
		t.Fatalf("pull old: %d", c)
	}
	res, err := st.Prune(ctx, store.Policy{MaxSize: 250 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Removed) != 1 || res.Removed[0].Name != "team/app:mid" {
		t.Fatalf("prune removed %+v, want team/app:mid (the least recently pulled)", res.Removed)
	}
	for tag, want := range map[string]int{"old": 200, "mid": 404, "new": 200} {
		if c := status(t, http.MethodHead, srv.URL+"/v2/team/app/manifests/"+tag); c != want {
			t.Errorf("HEAD %s after the prune: %d, want %d", tag, c, want)
		}
	}
}

// TestCatalog lists the repositories with a tag, a page at a time.
func TestCatalog(t *testing.T) {
	_, srv := newRegistry(t)
	for _, repo := range []string{"b/two", "a/one", "c/three"} {
		push(t, srv.URL, repo, "1", 10)
	}
	push(t, srv.URL, "a/one", "2", 10)
	var got []string
	next := "/v2/_catalog?n=2"
	for next != "" {
		resp, err := http.Get(srv.URL + next)
		if err != nil {
			t.Fatal(err)
		}
		var page struct {
			Repositories []string `json:"repositories"`
		}
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", next, resp.StatusCode, err)
		}
		got = append(got, page.Repositories...)
		next = ""
		if l := resp.Header.Get("Link"); l != "" {
			next = l[1:strings.Index(l, ">")]
		}
	}
	if want := "a/one b/two c/three"; strings.Join(got, " ") != want {
		t.Errorf("catalog %v, want %s", got, want)
	}
}
