package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/ocistore/ocistore/store"
)

// cutBody is a request body that gives data, then fails as a connection
// cut in the middle of the body does.
type cutBody struct {
	r   io.Reader
	err error
}

func (b *cutBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		err = b.err
	}
	return n, err
}

func (b *cutBody) Close() error { return nil }

// levels records the levels of the log records it gets.
type levels struct {
	mu     sync.Mutex
	errors []string
}

func (l *levels) Enabled(context.Context, slog.Level) bool { return true }
func (l *levels) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		l.mu.Lock()
		l.errors = append(l.errors, r.Message)
		l.mu.Unlock()
	}
	return nil
}
func (l *levels) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *levels) WithGroup(string) slog.Handler      { return l }

// TestUploadBodyCut: a PATCH or a monolithic POST whose body is cut (the
// client's connection dropped, a body shorter than its Content-Length) is
// the client's failure, not the server's: 400 BLOB_UPLOAD_INVALID, no
// error logged (it was a 500 INTERNAL_ERROR, logged as an error, counted
// as a server error by the metrics). The bytes that came stay in the
// session, the response's Range says so, and the client resumes from
// there.
func TestUploadBodyCut(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	log := &levels{}
	s := New(st, &Options{Logger: slog.New(log)})
	defer s.Close()
	serve := func(method, target string, body io.Reader, size int64, header http.Header) *httptest.ResponseRecorder {
		t.Helper()
		r := httptest.NewRequest(method, target, body)
		r.ContentLength = size
		for k, v := range header {
			r.Header[k] = v
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	code := func(w *httptest.ResponseRecorder) string {
		var e struct{ Errors []struct{ Code string } }
		if json.Unmarshal(w.Body.Bytes(), &e) != nil || len(e.Errors) != 1 {
			return ""
		}
		return e.Errors[0].Code
	}
	blob := bytes.Repeat([]byte("0123456789abcdef"), 10000)
	d := digest.FromBytes(blob)
	const cut = 70000

	// A chunk cut part way.
	w := serve(http.MethodPost, "/v2/a/b/blobs/uploads/", nil, 0, nil)
	loc := w.Header().Get("Location")
	if w.Code != http.StatusAccepted || loc == "" {
		t.Fatalf("POST: %d %q", w.Code, loc)
	}
	w = serve(http.MethodPatch, loc, &cutBody{bytes.NewReader(blob[:cut]), io.ErrUnexpectedEOF}, int64(len(blob)), nil)
	if w.Code != http.StatusBadRequest || code(w) != codeBlobUploadInvalid || w.Header().Get("Range") != fmt.Sprintf("0-%d", cut-1) {
		t.Errorf("PATCH cut after %d bytes: %d %s, Range %q; want 400 %s and 0-%d\n%s", cut, w.Code, code(w), w.Header().Get("Range"), codeBlobUploadInvalid, cut-1, w.Body)
	}
	// The client resumes where the upload ends.
	w = serve(http.MethodGet, loc, nil, 0, nil)
	if w.Code != http.StatusNoContent || w.Header().Get("Range") != fmt.Sprintf("0-%d", cut-1) {
		t.Fatalf("GET the upload: %d, Range %q; want 204 and 0-%d", w.Code, w.Header().Get("Range"), cut-1)
	}
	w = serve(http.MethodPatch, loc, bytes.NewReader(blob[cut:]), int64(len(blob)-cut),
		http.Header{"Content-Range": {fmt.Sprintf("%d-%d", cut, len(blob)-1)}})
	if w.Code != http.StatusAccepted {
		t.Fatalf("PATCH the rest: %d\n%s", w.Code, w.Body)
	}
	if w = serve(http.MethodPut, loc+"?digest="+d.String(), nil, 0, nil); w.Code != http.StatusCreated {
		t.Fatalf("PUT: %d\n%s", w.Code, w.Body)
	}

	// A monolithic upload cut part way: nothing is stored.
	other := bytes.Repeat([]byte("x"), 50000)
	od := digest.FromBytes(other)
	w = serve(http.MethodPost, "/v2/a/b/blobs/uploads/?digest="+od.String(), &cutBody{bytes.NewReader(other[:1000]), errors.New("read tcp: connection reset by peer")}, int64(len(other)), nil)
	if w.Code != http.StatusBadRequest || code(w) != codeBlobUploadInvalid {
		t.Errorf("monolithic POST cut: %d %s; want 400 %s\n%s", w.Code, code(w), codeBlobUploadInvalid, w.Body)
	}
	if w = serve(http.MethodHead, "/v2/a/b/blobs/"+od.String(), nil, 0, nil); w.Code != http.StatusNotFound {
		t.Errorf("HEAD the blob of the cut POST: %d, want 404", w.Code)
	}
	if len(log.errors) > 0 {
		t.Errorf("errors logged for bodies the clients cut: %s", strings.Join(log.errors, "; "))
	}
}
