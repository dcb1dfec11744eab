package registry_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/internal/testing/registry"
)

// TestPlain pushes an image with skopeo into a plain HTTP registry,
// inspects it back, and checks that Stop refuses connections and Restart
// keeps the port and the storage.
func TestPlain(t *testing.T) {
	r := registry.Start(t, registry.Options{})
	if !strings.HasPrefix(r.Host, "127.0.0.1:") || r.URL != "http://"+r.Host {
		t.Fatalf("Host %q, URL %q: want 127.0.0.1:PORT and http://Host", r.Host, r.URL)
	}
	if got := status(t, r.Client(), "GET", r.URL+"/v2/"); got != http.StatusOK {
		t.Fatalf("GET /v2/: %d, want 200", got)
	}
	layout, manifest := writeLayout(t, "v1")
	ref := "docker://" + r.Host + "/test/plain:v1"
	skopeo(t, "copy", "-q", "--preserve-digests", "--dest-tls-verify=false", "oci:"+layout+":v1", ref)
	inspect(t, manifest, "--tls-verify=false", ref)

	r.Stop()
	r.Stop() // idempotent
	if _, err := r.Client().Get(r.URL + "/v2/"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET /v2/ after Stop: %v, want connection refused", err)
	}
	r.Restart(t)
	inspect(t, manifest, "--tls-verify=false", ref)
}

// TestTLSAuth pushes and inspects an image through TLS (the rig's CA) and
// basic auth, and checks that the registry refuses a wrong password and a
// client that does not trust the CA.
func TestTLSAuth(t *testing.T) {
	r := registry.Start(t, registry.Options{TLS: true, Auth: true})
	if r.URL != "https://"+r.Host || r.Username == "" || r.Password == "" || r.CertPool() == nil {
		t.Fatalf("URL %q, Username %q, Password %q, CertPool %v: want https, credentials and a pool", r.URL, r.Username, r.Password, r.CertPool())
	}
	if got := status(t, r.Client(), "GET", r.URL+"/v2/"); got != http.StatusOK {
		t.Fatalf("GET /v2/ with the credentials: %d, want 200", got)
	}
	anonymous := &http.Client{Transport: r.Transport()}
	if got := status(t, anonymous, "GET", r.URL+"/v2/"); got != http.StatusUnauthorized {
		t.Fatalf("GET /v2/ without credentials: %d, want 401", got)
	}
	req, _ := http.NewRequest("GET", r.URL+"/v2/", nil)
	req.SetBasicAuth(r.Username, r.Password+"x")
	resp, err := anonymous.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v2/ with a wrong password: %s, want 401", resp.Status)
	}
	_, err = plain.Get(r.URL + "/v2/")
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("GET /v2/ without the CA: %v, want an unknown authority error", err)
	}
	if b, err := os.ReadFile(filepath.Join(r.CertDir, "ca.crt")); err != nil || !bytes.Contains(b, []byte("BEGIN CERTIFICATE")) {
		t.Fatalf("CertDir/ca.crt: %v %q", err, b)
	}

	layout, manifest := writeLayout(t, "v1")
	ref := "docker://" + r.Host + "/test/secure:v1"
	src := "oci:" + layout + ":v1"
	res := run(t, "skopeo", "--insecure-policy", "copy", "-q", "--preserve-digests", "--dest-cert-dir", r.CertDir, "--dest-creds", r.Username+":wrong", src, ref)
	if res.err == nil || !strings.Contains(res.stderr, "401") && !strings.Contains(strings.ToLower(res.stderr), "unauthorized") {
		t.Fatalf("skopeo copy with a wrong password: %v, want a 401:\n%s", res.err, res.stderr)
	}
	skopeo(t, "copy", "-q", "--preserve-digests", "--dest-cert-dir", r.CertDir, "--dest-creds", r.Creds(), src, ref)
	inspect(t, manifest, "--cert-dir", r.CertDir, "--creds", r.Creds(), ref)

	// A faulty proxy in front of it speaks plain HTTP to the client, TLS
	// to the registry, and passes the credentials through.
	host := registry.Faulty(t, r, registry.StopAfter(1))
	req, _ = http.NewRequest("GET", "http://"+host+"/v2/test/secure/manifests/v1", nil)
	req.Header.Set("Accept", v1.MediaTypeImageManifest)
	req.SetBasicAuth(r.Username, r.Password)
	resp, err = plain.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != manifest.String() {
		t.Fatalf("GET the manifest through the proxy: %s, digest %q; want 200, %s", resp.Status, resp.Header.Get("Docker-Content-Digest"), manifest)
	}
}

// TestAuthPlainHTTP: basic auth works without TLS too (distribution 2.8
// does not insist on TLS).
func TestAuthPlainHTTP(t *testing.T) {
	r := registry.Start(t, registry.Options{Auth: true})
	if got := status(t, plain, "GET", r.URL+"/v2/"); got != http.StatusUnauthorized {
		t.Fatalf("GET /v2/ without credentials: %d, want 401", got)
	}
	if got := status(t, r.Client(), "GET", r.URL+"/v2/"); got != http.StatusOK {
		t.Fatalf("GET /v2/ with the credentials: %d, want 200", got)
	}
}

// TestReferrersFallback: distribution 2.8 has no referrers API. It stores a
// manifest with a subject (without the OCI-Subject header), answers 404 to
// GET /v2/NAME/referrers/DIGEST, and takes the referrers tag schema
// (sha256-HEX, an index of the referrers) that oras-go falls back to.
func TestReferrersFallback(t *testing.T) {
	r := registry.Start(t, registry.Options{})
	const repo = "test/referrers"
	layer := r.PutBlob(t, repo, randomBytes(t, 1024))
	layer.MediaType = v1.MediaTypeImageLayer
	config := r.PutBlob(t, repo, []byte("{}"))
	config.MediaType = v1.MediaTypeImageConfig
	image := r.PutManifest(t, repo, "v1", v1.MediaTypeImageManifest, marshal(t, v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		Config: config, Layers: []v1.Descriptor{layer},
	}))

	empty := r.PutBlob(t, repo, []byte("{}"))
	empty.MediaType = v1.MediaTypeEmptyJSON
	sig := r.PutBlob(t, repo, randomBytes(t, 64))
	sig.MediaType = "application/vnd.example.signature"
	const artifactType = "application/vnd.example.signature.v1"
	artifactJSON := marshal(t, v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		ArtifactType: artifactType, Config: empty, Layers: []v1.Descriptor{sig}, Subject: &image,
	})
	c := r.Client()
	req, _ := http.NewRequest("PUT", r.URL+"/v2/"+repo+"/manifests/"+digest.FromBytes(artifactJSON).String(), bytes.NewReader(artifactJSON))
	req.Header.Set("Content-Type", v1.MediaTypeImageManifest)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("OCI-Subject") != "" {
		t.Fatalf("PUT artifact with a subject: %s, OCI-Subject %q: want 201 and no OCI-Subject (2.8 knows no subjects)", resp.Status, resp.Header.Get("OCI-Subject"))
	}
	artifact := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, ArtifactType: artifactType, Digest: digest.FromBytes(artifactJSON), Size: int64(len(artifactJSON))}

	if got := status(t, c, "GET", r.URL+"/v2/"+repo+"/referrers/"+image.Digest.String()); got != http.StatusNotFound {
		t.Fatalf("GET referrers: %d, want 404 (distribution 2.8 has no referrers API)", got)
	}

	// The fallback: an index of the referrers, tagged sha256-HEX.
	tag := image.Digest.Algorithm().String() + "-" + image.Digest.Encoded()
	index := marshal(t, v1.Index{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex,
		Manifests: []v1.Descriptor{artifact},
	})
	r.PutManifest(t, repo, tag, v1.MediaTypeImageIndex, index)
	req, _ = http.NewRequest("GET", r.URL+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", v1.MediaTypeImageIndex)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, index) {
		t.Fatalf("GET the referrers tag %s: %s, %q; want 200 and the index pushed", tag, resp.Status, got)
	}
	// And the artifact reads back by digest, subject included.
	out := run(t, "skopeo", "--insecure-policy", "inspect", "--raw", "--tls-verify=false", "docker://"+r.Host+"/"+repo+"@"+artifact.Digest.String())
	if out.err != nil || out.stdout != string(artifactJSON) {
		t.Fatalf("skopeo inspect --raw of the artifact: %v\n%s\n%s", out.err, out.stderr, out.stdout)
	}
}

// TestFaulty checks each fault of the proxy as a plain HTTP client sees it,
// and that Stop cuts a blob in the middle of its body.
func TestFaulty(t *testing.T) {
	r := registry.Start(t, registry.Options{})
	const repo = "test/faulty"
	content := randomBytes(t, 64<<10)
	blob := r.PutBlob(t, repo, content)
	other := r.PutBlob(t, repo, randomBytes(t, 4<<10))
	blobPath := func(host string, d digest.Digest) string {
		return "http://" + host + "/v2/" + repo + "/blobs/" + d.String()
	}

	t.Run("truncate", func(t *testing.T) {
		host := registry.Faulty(t, r, registry.TruncateBlob(blob.Digest, 1000))
		resp, err := plain.Get(blobPath(host, blob.Digest))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if resp.ContentLength != blob.Size || len(got) != 1000 || !errors.Is(err, io.ErrUnexpectedEOF) || !bytes.Equal(got, content[:1000]) {
			t.Fatalf("truncated GET: Content-Length %d, %d bytes (a prefix: %v), %v; want %d, 1000 bytes of the blob, unexpected EOF",
				resp.ContentLength, len(got), bytes.HasPrefix(content, got), err, blob.Size)
		}
		if b := get(t, blobPath(host, other.Digest)); digest.FromBytes(b) != other.Digest {
			t.Fatalf("another blob through the truncating proxy: digest %s, want %s", digest.FromBytes(b), other.Digest)
		}
	})

	t.Run("corrupt", func(t *testing.T) {
		host := registry.Faulty(t, r, registry.CorruptBlob(blob.Digest))
		resp, err := plain.Get(blobPath(host, blob.Digest))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || int64(len(got)) != blob.Size || digest.FromBytes(got) == blob.Digest ||
			resp.Header.Get("Docker-Content-Digest") != blob.Digest.String() {
			t.Fatalf("corrupted GET: %s, %d bytes, digest %s, Docker-Content-Digest %q, %v; want 200, %d bytes of another digest under the header %s",
				resp.Status, len(got), digest.FromBytes(got), resp.Header.Get("Docker-Content-Digest"), err, blob.Size, blob.Digest)
		}
		if b := get(t, blobPath(host, other.Digest)); digest.FromBytes(b) != other.Digest {
			t.Fatalf("another blob through the corrupting proxy: digest %s, want %s", digest.FromBytes(b), other.Digest)
		}
	})

	t.Run("stop after", func(t *testing.T) {
		host := registry.Faulty(t, r, registry.StopAfter(2))
		c := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
		for i := range 2 {
			if got := status(t, c, "GET", "http://"+host+"/v2/"); got != http.StatusOK {
				t.Fatalf("request %d: %d, want 200", i+1, got)
			}
		}
		if _, err := c.Get(blobPath(host, blob.Digest)); !errors.Is(err, io.EOF) {
			t.Fatalf("request 3: %v, want EOF (closed without an answer)", err)
		}
		if _, err := c.Get("http://" + host + "/v2/"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("request 4: %v, want connection refused", err)
		}
	})

	t.Run("stop registry mid-body", func(t *testing.T) {
		// 16 MiB, far more than the socket buffers hold with the client's
		// receive buffer held at 64 KiB (the sender's is at most
		// net.ipv4.tcp_wmem's 4 MiB).
		big := r.PutBlob(t, repo, randomBytes(t, 16<<20))
		dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10) })
			return errors.Join(err, serr)
		}}
		c := &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: dialer.DialContext}}
		resp, err := c.Get(blobPath(r.Host, big.Digest))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
			t.Fatal(err)
		}
		r.Stop()
		n, err := io.Copy(io.Discard, resp.Body)
		if !errors.Is(err, io.ErrUnexpectedEOF) || 1<<20+n >= big.Size {
			t.Fatalf("body after Stop: %d more bytes, %v; want unexpected EOF before the end (%d bytes)", n, err, big.Size)
		}
		r.Restart(t)
		if b := get(t, blobPath(r.Host, big.Digest)); digest.FromBytes(b) != big.Digest {
			t.Fatalf("blob after Restart: digest %s, want %s", digest.FromBytes(b), big.Digest)
		}
	})
}

// TestMissingBinary: without docker-registry on PATH, Start fails the test
// and says to run make tools; it never skips.
func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		registry.Start(ft, registry.Options{})
	}()
	<-done
	if !ft.fatal || !strings.Contains(ft.msg, "run make tools") || ft.skipped {
		t.Fatalf("Start without docker-registry: fatal %v, skipped %v, message %q; want a fatal naming make tools", ft.fatal, ft.skipped, ft.msg)
	}
}

// fakeT records a fatal failure instead of failing the test.
type fakeT struct {
	testing.TB
	fatal, skipped bool
	msg            string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.fatal, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (f *fakeT) Fatal(args ...any) { f.Fatalf("%v", args...) }
func (f *fakeT) Skip(args ...any)  { f.skipped = true; runtime.Goexit() }

// Helpers ----------------------------------------------------------------

// plain is an HTTP client with no proxy, no credentials and no CA.
var plain = &http.Client{Transport: &http.Transport{Proxy: nil}}

// writeLayout writes an OCI layout with one image (a config and one random
// layer) tagged tag, and returns its directory and manifest digest.
func writeLayout(t *testing.T, tag string) (string, digest.Digest) {
	t.Helper()
	dir := t.TempDir()
	put := func(b []byte, mt string) v1.Descriptor {
		d := v1.Descriptor{MediaType: mt, Digest: digest.FromBytes(b), Size: int64(len(b))}
		p := filepath.Join(dir, "blobs", "sha256", d.Digest.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	// A gzipped tar of one random file: registries get compressed layers,
	// so skopeo copies it as it is (--preserve-digests checks it does).
	var tarball, gz bytes.Buffer
	tw := tar.NewWriter(&tarball)
	file := randomBytes(t, 2048)
	if err := tw.WriteHeader(&tar.Header{Name: "random", Mode: 0o644, Size: int64(len(file)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(file)
	tw.Close()
	zw := gzip.NewWriter(&gz)
	zw.Write(tarball.Bytes())
	zw.Close()
	layer := put(gz.Bytes(), v1.MediaTypeImageLayerGzip)
	config := put(marshal(t, v1.Image{
		Platform: v1.Platform{Architecture: "amd64", OS: "linux"},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tarball.Bytes())}},
	}), v1.MediaTypeImageConfig)
	manifest := put(marshal(t, v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		Config: config, Layers: []v1.Descriptor{layer},
	}), v1.MediaTypeImageManifest)
	manifest.Annotations = map[string]string{v1.AnnotationRefName: tag}
	index := marshal(t, v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{manifest}})
	if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, v1.ImageLayoutFile), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, manifest.Digest
}

type result struct {
	stdout, stderr string
	err            error
}

// run runs a program; only one that cannot start fails the test.
func run(t *testing.T, name string, args ...string) result {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is not installed (%v): run make tools", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return result{stdout.String(), stderr.String(), err}
}

// skopeo runs skopeo --insecure-policy and fails the test unless it
// succeeds.
func skopeo(t *testing.T, args ...string) string {
	t.Helper()
	r := run(t, "skopeo", append([]string{"--insecure-policy"}, args...)...)
	if r.err != nil {
		t.Fatalf("skopeo %s: %v\n%s", strings.Join(args, " "), r.err, r.stderr)
	}
	return r.stdout
}

// inspect runs skopeo inspect with args and fails unless it reports the
// manifest digest want.
func inspect(t *testing.T, want digest.Digest, args ...string) {
	t.Helper()
	out := skopeo(t, append([]string{"inspect"}, args...)...)
	var got struct{ Digest digest.Digest }
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Digest != want {
		t.Fatalf("skopeo inspect %s: digest %s (%v), want %s:\n%s", strings.Join(args, " "), got.Digest, err, want, out)
	}
}

func status(t *testing.T, c *http.Client, method, u string) int {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// get fetches u with a plain client and fails unless it answers 200.
func get(t *testing.T, u string) []byte {
	t.Helper()
	resp, err := plain.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", u, resp.Status, err)
	}
	return b
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func marshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
