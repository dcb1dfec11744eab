package registry

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// PutBlob uploads b to the repository repo (POST, then PUT with the
// digest) and returns its descriptor, of media type
// application/octet-stream.
func (r *Registry) PutBlob(t testing.TB, repo string, b []byte) v1.Descriptor {
	t.Helper()
	d := v1.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromBytes(b), Size: int64(len(b))}
	c := r.Client()
	defer c.CloseIdleConnections()
	start := r.URL + "/v2/" + repo + "/blobs/uploads/"
	resp := r.do(t, c, http.MethodPost, start, "", nil, http.StatusAccepted)
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("POST %s: Location: %v", start, err)
	}
	q := loc.Query()
	q.Set("digest", d.Digest.String())
	loc.RawQuery = q.Encode()
	r.do(t, c, http.MethodPut, loc.String(), "application/octet-stream", b, http.StatusCreated)
	return d
}

// PutManifest uploads the manifest b of media type mt to the repository
// repo under ref (a tag, or b's digest) and returns its descriptor.
func (r *Registry) PutManifest(t testing.TB, repo, ref, mt string, b []byte) v1.Descriptor {
	t.Helper()
	c := r.Client()
	defer c.CloseIdleConnections()
	r.do(t, c, http.MethodPut, r.URL+"/v2/"+repo+"/manifests/"+url.PathEscape(ref), mt, b, http.StatusCreated)
	return v1.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
}

// do sends a request and fails the test unless it answers want; it returns
// the response, its body read and closed.
func (r *Registry) do(t testing.TB, c *http.Client, method, u, ctype string, body []byte, want int) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s, want %d: %s", method, u, resp.Status, want, bytes.TrimSpace(msg))
	}
	return resp
}

// String names the registry in messages.
func (r *Registry) String() string { return fmt.Sprintf("docker-registry at %s", r.URL) }
