package server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/testutil"
	"github.com/ocistore/ocistore/store"
)

// A manifest whose blob is in blobs/ but that the layout does not keep
// (nothing references it, no lease holds it) is not in the registry: GET
// and HEAD by digest say 404, as for a manifest never pushed. That is what
// a server killed in the middle of a manifest PUT leaves (the blob
// written, the transaction not committed: the PUT was not acknowledged),
// and GC removes it; a client that asked whether its push landed and
// heard 200 would never push it again (TestServeCrash found it). Pushed,
// it is there; a platform manifest of an index, reached but no entry, is
// there by digest too.
func TestManifestByDigestNotHeld(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "layout"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b := testutil.NewBuilder(t, st, 1)
	orphan := b.Manifest(nil, 1) // its blob only, as the killed PUT left it
	platform := b.Manifest(nil, 1)
	b.Tag(b.Index(platform), "multi:1")
	raw, err := st.FetchManifest(ctx, orphan)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(st, nil))
	defer srv.Close()
	req := func(method, path string, body []byte) (int, []byte) {
		t.Helper()
		r, err := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", v1.MediaTypeImageManifest)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, got
	}
	path := "/v2/app/manifests/" + orphan.Digest.String()
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		if code, body := req(m, path, nil); code != http.StatusNotFound {
			t.Errorf("%s of a manifest the layout does not keep: %d %s, want 404", m, code, body)
		}
	}
	if code, body := req(http.MethodPut, path, raw); code != http.StatusCreated {
		t.Fatalf("PUT by digest: %d %s", code, body)
	}
	if code, body := req(http.MethodGet, path, nil); code != http.StatusOK || !bytes.Equal(body, raw) {
		t.Errorf("GET after the PUT: %d %s, want 200 with the manifest", code, body)
	}
	if code, body := req(http.MethodHead, "/v2/multi/manifests/"+platform.Digest.String(), nil); code != http.StatusOK {
		t.Errorf("HEAD of a platform manifest of an index: %d %s, want 200", code, body)
	}
}
