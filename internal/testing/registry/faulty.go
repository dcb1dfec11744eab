package registry

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Fault is what a Faulty proxy does wrong; make one with TruncateBlob,
// CorruptBlob or StopAfter.
type Fault struct {
	kind   faultKind
	digest digest.Digest
	n      int64
}

type faultKind int

const (
	truncate faultKind = iota + 1
	corrupt
	stopAfter
)

// TruncateBlob cuts every successful GET of the blob (or manifest) d: the
// headers (Content-Length included) and the first n bytes of the body are
// sent, then the connection is closed. n must be less than the blob's
// size for anything to be cut.
func TruncateBlob(d digest.Digest, n int64) Fault { return Fault{kind: truncate, digest: d, n: n} }

// CorruptBlob serves other bytes of the same length for every successful
// GET of the blob (or manifest) d (each byte inverted); the headers,
// Docker-Content-Digest included, are the registry's.
func CorruptBlob(d digest.Digest) Fault { return Fault{kind: corrupt, digest: d} }

// StopAfter answers the first k requests, then stops answering: the
// connection of request k+1 is closed without an answer, and the proxy
// stops listening (new connections are refused).
func StopAfter(k int) Fault { return Fault{kind: stopAfter, n: int64(k)} }

func (f Fault) String() string {
	switch f.kind {
	case truncate:
		return fmt.Sprintf("truncate %s after %d bytes", f.digest, f.n)
	case corrupt:
		return fmt.Sprintf("corrupt %s", f.digest)
	case stopAfter:
		return fmt.Sprintf("stop after %d requests", f.n)
	}
	return "no fault"
}

// matches reports whether a GET of path fetches the fault's blob or
// manifest by digest.
func (f Fault) matches(method, path string) bool {
	return method == http.MethodGet && (strings.HasSuffix(path, "/blobs/"+f.digest.String()) ||
		strings.HasSuffix(path, "/manifests/"+f.digest.String()))
}

// Faulty starts a reverse proxy on 127.0.0.1 in front of upstream that
// injects fault, and returns its host ("127.0.0.1:PORT"). The proxy speaks
// plain HTTP whatever upstream speaks (clients need --plain-http or the
// like), passes credentials through, and stops when the test ends.
func Faulty(t testing.TB, upstream *Registry, fault Fault) string {
	t.Helper()
	if fault.kind == 0 {
		t.Fatal("registry.Faulty: no fault (use TruncateBlob, CorruptBlob or StopAfter)")
	}
	target, err := url.Parse(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faulty proxy: %v", err)
	}
	transport := upstream.Transport()
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// The registry builds its Location headers from these: they
			// point back at the proxy.
			pr.SetXForwarded()
		},
		Transport: transport,
		// Flush every write: a truncated body reaches the client up to
		// the cut.
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode/100 != 2 || !fault.matches(resp.Request.Method, resp.Request.URL.Path) {
				return nil
			}
			switch fault.kind {
			case truncate:
				resp.Body = &truncatedBody{rc: resp.Body, left: fault.n}
			case corrupt:
				resp.Body = invertedBody{resp.Body}
			}
			return nil
		},
		// A cut body makes the proxy log and abort the connection, as
		// planned.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	var (
		requests atomic.Int64
		stopOnce sync.Once
	)
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if fault.kind == stopAfter && requests.Add(1) > fault.n {
			stopOnce.Do(func() { ln.Close() })
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		proxy.ServeHTTP(w, req)
	})
	srv := &http.Server{Handler: handler, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		transport.CloseIdleConnections()
	})
	return ln.Addr().String()
}

// errCut is the read error that makes the proxy abort a response.
var errCut = errors.New("faulty proxy: body cut")

// truncatedBody returns left bytes of rc, then errCut.
type truncatedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *truncatedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errCut
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *truncatedBody) Close() error { return b.rc.Close() }

// invertedBody inverts every byte of a body.
type invertedBody struct{ io.ReadCloser }

func (b invertedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	for i := range p[:n] {
		p[i] = ^p[i]
	}
	return n, err
}
