package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// parseLogLine parses the one JSON log line in b.
func parseLogLine(t *testing.T, b []byte) map[string]any {
	t.Helper()
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) != 1 || len(lines[0]) == 0 {
		t.Fatalf("want one log line, got %q", b)
	}
	var m map[string]any
	if err := json.Unmarshal(lines[0], &m); err != nil {
		t.Fatalf("log line %q: %v", lines[0], err)
	}
	return m
}

// jsonLog returns a logger writing JSON lines, at every level, to the
// buffer it returns.
func jsonLog() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

func TestAccessLog(t *testing.T) {
	const dg = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
	log, buf := jsonLog()
	var gotBody string
	hd := AccessLog(log, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		w.Header().Set("Docker-Content-Digest", dg)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "ok")
		time.Sleep(2 * time.Millisecond)
	}))
	r := httptest.NewRequest(http.MethodPut, "/v2/a/b/blobs/uploads/u1?digest="+dg, strings.NewReader("abcdef"))
	r.SetBasicAuth("alice", "s3cret")
	r.RemoteAddr = "192.0.2.7:4711"
	w := httptest.NewRecorder()
	hd.ServeHTTP(w, r)
	if gotBody != "abcdef" || w.Code != 201 || w.Body.String() != "ok" {
		t.Fatalf("handler read %q, response %d %q: the wrapping changed the exchange", gotBody, w.Code, w.Body)
	}
	line := parseLogLine(t, buf.Bytes())
	want := map[string]any{
		"level":      "INFO",
		"msg":        "http request",
		"method":     "PUT",
		"path":       "/v2/a/b/blobs/uploads/u1",
		"query":      "digest=" + dg,
		"route":      "upload",
		"status":     float64(201),
		"resp_bytes": float64(2),
		"req_bytes":  float64(6),
		"remote":     "192.0.2.7:4711",
		"user":       "alice",
		"digest":     dg,
	}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s: %v, want %v", k, line[k], v)
		}
	}
	if d, _ := line["duration"].(float64); d < float64(2*time.Millisecond) {
		t.Errorf("duration %v ns, want at least 2ms", line["duration"])
	}
	if strings.Contains(buf.String(), "s3cret") {
		t.Errorf("the password is in the log: %s", buf)
	}
	if _, ok := r.Body.(*countingBody); ok {
		t.Error("AccessLog changed the body of the request it was given")
	}
}

func TestAccessLogDefaults(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    int
		absent  []string
	}{
		{"nothing written", func(http.ResponseWriter, *http.Request) {}, 200, []string{"query", "user", "digest"}},
		{"write only", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "x") }, 200, nil},
		{"404", http.NotFound, 404, nil},
		{"second WriteHeader ignored", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(204)
			w.WriteHeader(500)
		}, 204, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := jsonLog()
			AccessLog(log, tt.handler).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/v2/", nil))
			line := parseLogLine(t, buf.Bytes())
			if line["status"] != float64(tt.want) {
				t.Errorf("status %v, want %d", line["status"], tt.want)
			}
			if line["route"] != "base" {
				t.Errorf("route %v, want base", line["route"])
			}
			for _, k := range tt.absent {
				if v, ok := line[k]; ok {
					t.Errorf("%s: %v logged, want none", k, v)
				}
			}
		})
	}
}

// fakeWriter is an http.ResponseWriter without Flush or ReadFrom, which
// records its WriteHeader calls.
type fakeWriter struct {
	h     http.Header
	codes []int
	body  bytes.Buffer
}

func newFakeWriter() *fakeWriter { return &fakeWriter{h: make(http.Header)} }

func (f *fakeWriter) Header() http.Header { return f.h }
func (f *fakeWriter) WriteHeader(code int) {
	f.codes = append(f.codes, code)
}
func (f *fakeWriter) Write(p []byte) (int, error) {
	if len(f.codes) == 0 {
		f.codes = append(f.codes, 200)
	}
	return f.body.Write(p)
}

// readFromWriter is a fakeWriter with a ReadFrom that records the readers
// it is given.
type readFromWriter struct {
	*fakeWriter
	readers []io.Reader
}

func (f *readFromWriter) ReadFrom(r io.Reader) (int64, error) {
	f.readers = append(f.readers, r)
	return io.Copy(&f.body, r)
}

func TestResponseWriterStatus(t *testing.T) {
	f := newFakeWriter()
	rw := newResponseWriter(f)
	rw.WriteHeader(http.StatusEarlyHints)
	rw.WriteHeader(http.StatusContinue)
	if rw.status != 0 {
		t.Errorf("status %d after 1xx headers, want none yet", rw.status)
	}
	rw.WriteHeader(http.StatusAccepted)
	rw.WriteHeader(http.StatusTeapot)
	if rw.status != http.StatusAccepted {
		t.Errorf("status %d, want 202", rw.status)
	}
	if want := []int{103, 100, 202, 418}; !equalInts(f.codes, want) {
		t.Errorf("wrapped writer got WriteHeader %v, want %v", f.codes, want)
	}
	rw = newResponseWriter(newFakeWriter())
	rw.WriteHeader(http.StatusSwitchingProtocols)
	if rw.status != 101 {
		t.Errorf("status %d after 101, want 101", rw.status)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestResponseWriterReadFrom: through the metrics and the access log, the
// *os.File that http.ServeContent sends reaches the ReadFrom of the writer
// of net/http (which sends it with sendfile), and both count its bytes.
func TestResponseWriterReadFrom(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	m := NewMetrics(nil)
	log, buf := jsonLog()
	hd := m.Wrap(AccessLog(log, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, f)
	})))
	inner := &readFromWriter{fakeWriter: newFakeWriter()}
	hd.ServeHTTP(inner, httptest.NewRequest(http.MethodGet, "/v2/a/blobs/sha256:x", nil))

	if !bytes.Equal(inner.body.Bytes(), content) {
		t.Fatalf("sent %d bytes, want the %d of the file", inner.body.Len(), len(content))
	}
	if len(inner.readers) != 1 {
		t.Fatalf("the wrapped writer's ReadFrom was called %d times, want once", len(inner.readers))
	}
	lr, ok := inner.readers[0].(*io.LimitedReader)
	if !ok || lr.R != io.Reader(f) {
		t.Errorf("the wrapped writer's ReadFrom got %T, want the *io.LimitedReader of the *os.File that ServeContent passes", inner.readers[0])
	}
	if line := parseLogLine(t, buf.Bytes()); line["resp_bytes"] != float64(len(content)) || line["status"] != float64(200) {
		t.Errorf("logged resp_bytes %v status %v, want %d 200", line["resp_bytes"], line["status"], len(content))
	}
	fams := scrape(t, m)
	if got := value(t, fams, "ocistore_http_response_bytes_total", "route", "blob"); got != float64(len(content)) {
		t.Errorf("ocistore_http_response_bytes_total{route=blob} = %v, want %d", got, len(content))
	}

	// A reader given to ReadFrom reaches the wrapped writer's ReadFrom
	// itself (io.Copy would hand an *os.File's WriteTo the wrapped writer
	// instead, and the file would reach it hidden).
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	inner = &readFromWriter{fakeWriter: newFakeWriter()}
	if n, err := newResponseWriter(newResponseWriter(inner)).ReadFrom(f); err != nil || n != int64(len(content)) {
		t.Fatalf("ReadFrom: %d, %v; want %d", n, err, len(content))
	}
	if len(inner.readers) != 1 || inner.readers[0] != io.Reader(f) {
		t.Errorf("the wrapped writer's ReadFrom got %d readers (%T), want the *os.File itself", len(inner.readers), inner.readers)
	}

	// A writer without ReadFrom: copied all the same.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	plain := newFakeWriter()
	rw := newResponseWriter(plain)
	if n, err := rw.ReadFrom(f); err != nil || n != int64(len(content)) || rw.written != n || rw.status != 200 {
		t.Errorf("ReadFrom into a writer without one: %d, %v, counted %d, status %d", n, err, rw.written, rw.status)
	}
	if !bytes.Equal(plain.body.Bytes(), content) {
		t.Errorf("ReadFrom into a writer without one: wrote %d bytes, want %d", plain.body.Len(), len(content))
	}
}

// TestWrappedServer serves a big blob, a flushed stream and a write
// deadline through the metrics and the access log on a real server.
func TestWrappedServer(t *testing.T) {
	content := bytes.Repeat([]byte("ocistore"), 256<<10) // 2 MiB
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(nil)
	log, buf := jsonLog()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/a/blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, path)
	})
	flushed := make(chan struct{})
	mux.HandleFunc("GET /v2/a/tags/list", func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("SetWriteDeadline through the wrappers: %v", err)
		}
		io.WriteString(w, "first")
		fl, ok := w.(http.Flusher)
		if !ok {
			t.Error("the wrapped writer is not an http.Flusher")
			return
		}
		fl.Flush()
		select {
		case <-flushed: // the client read "first" before the handler returned
		case <-time.After(10 * time.Second):
			t.Error("the client did not get the flushed \"first\" in 10s")
		}
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("ResponseController.Flush through the wrappers: %v", err)
		}
		io.WriteString(w, "second")
	})
	srv := httptest.NewServer(m.Wrap(AccessLog(log, mux)))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/v2/a/blobs/sha256:abc")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("blob: %d bytes, %v; want the %d of the file", len(got), err, len(content))
	}

	resp, err = http.Get(srv.URL + "/v2/a/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first" {
		t.Fatalf("stream: read %q, %v before the handler returned; want the flushed \"first\"", first, err)
	}
	close(flushed)
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(rest) != "second" {
		t.Fatalf("stream: then %q, %v; want \"second\"", rest, err)
	}
	srv.Close() // the handlers have returned: the log is complete

	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2: %s", len(lines), buf)
	}
	routes := make(map[any]any)
	for _, l := range lines {
		line := parseLogLine(t, l)
		routes[line["route"]] = line["resp_bytes"]
	}
	if routes["blob"] != float64(len(content)) || routes["tags"] != float64(11) {
		t.Errorf("logged resp_bytes by route %v, want blob %d and tags 11", routes, len(content))
	}
	fams := scrape(t, m)
	if got := value(t, fams, "ocistore_http_response_bytes_total", "route", "blob"); got != float64(len(content)) {
		t.Errorf("response bytes of blob %v, want %d", got, len(content))
	}
	if got := value(t, fams, "ocistore_http_response_bytes_total", "route", "tags"); got != 11 {
		t.Errorf("response bytes of tags %v, want 11", got)
	}
}

func TestResponseWriterFlushNotSupported(t *testing.T) {
	rw := newResponseWriter(newFakeWriter())
	if err := rw.FlushError(); !errors.Is(err, http.ErrNotSupported) {
		t.Errorf("FlushError of a writer that cannot flush: %v, want http.ErrNotSupported", err)
	}
	rw.Flush() // does nothing
	if rw.status != 0 {
		t.Errorf("status %d after a flush that did nothing, want none", rw.status)
	}
	rec := httptest.NewRecorder()
	rw = newResponseWriter(rec)
	rw.Flush()
	if !rec.Flushed || rw.status != 200 {
		t.Errorf("Flush of a recorder: flushed %v, status %d; want true, 200", rec.Flushed, rw.status)
	}
	if rw.Unwrap() != http.ResponseWriter(rec) {
		t.Error("Unwrap does not return the wrapped writer")
	}
}

// servePanicking serves r with hd and returns the value hd panicked with.
func servePanicking(hd http.Handler, r *http.Request) (p any) {
	defer func() { p = recover() }()
	hd.ServeHTTP(httptest.NewRecorder(), r)
	return nil
}

func TestAccessLogPanic(t *testing.T) {
	log, buf := jsonLog()
	hd := AccessLog(log, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	}))
	if p := servePanicking(hd, httptest.NewRequest(http.MethodGet, "/v2/a/manifests/x", nil)); p != "boom" {
		t.Fatalf("panic %v after AccessLog, want the handler's \"boom\"", p)
	}
	line := parseLogLine(t, buf.Bytes())
	if line["level"] != "ERROR" || line["panic"] != "boom" || line["status"] != float64(500) || line["route"] != "manifest" {
		t.Errorf("level %v panic %v status %v route %v, want ERROR boom 500 manifest", line["level"], line["panic"], line["status"], line["route"])
	}
	if s, _ := line["stack"].(string); !strings.Contains(s, "TestAccessLogPanic") {
		t.Errorf("stack %q does not show the panicking handler", s)
	}

	// http.ErrAbortHandler: logged as a request, aborted, at Info.
	buf.Reset()
	hd = AccessLog(log, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "part")
		panic(http.ErrAbortHandler)
	}))
	if p := servePanicking(hd, httptest.NewRequest(http.MethodGet, "/v2/a/blobs/sha256:x", nil)); p != http.ErrAbortHandler {
		t.Fatalf("panic %v after AccessLog, want http.ErrAbortHandler", p)
	}
	line = parseLogLine(t, buf.Bytes())
	if line["level"] != "INFO" || line["aborted"] != true || line["status"] != float64(200) || line["resp_bytes"] != float64(4) {
		t.Errorf("level %v aborted %v status %v resp_bytes %v, want INFO true 200 4", line["level"], line["aborted"], line["status"], line["resp_bytes"])
	}
	if _, ok := line["stack"]; ok {
		t.Error("an aborted request logged a stack")
	}
}

func TestAccessLogNilLogger(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewJSONHandler(&buf, nil)))
	defer slog.SetDefault(old)
	AccessLog(nil, http.NotFoundHandler()).ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if line := parseLogLine(t, buf.Bytes()); line["route"] != "healthz" || line["status"] != float64(404) {
		t.Errorf("route %v status %v, want healthz 404", line["route"], line["status"])
	}
}
