package server

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"
)

// responseWriter wraps the http.ResponseWriter of a request to record the
// status of the response and count the bytes of its body, for the access
// log and the metrics. It keeps what the writer it wraps can do: ReadFrom
// hands the reader itself to the wrapped writer's ReadFrom (so the sendfile
// of http.ServeContent still happens, through any number of wrappers),
// FlushError and Flush flush it, and Unwrap gives it to
// http.NewResponseController (Hijack, deadlines, full duplex).
//
// A handler uses it from its own goroutine only, as it does any
// http.ResponseWriter.
type responseWriter struct {
	w       http.ResponseWriter
	status  int   // the final status sent; 0 while none is
	written int64 // bytes of the body written
}

// newResponseWriter wraps w.
func newResponseWriter(w http.ResponseWriter) *responseWriter {
	return &responseWriter{w: w}
}

// Header returns the header map of the wrapped writer.
func (rw *responseWriter) Header() http.Header { return rw.w.Header() }

// WriteHeader sends the response header with status code and records the
// first final status (an informational 1xx other than 101 is not).
func (rw *responseWriter) WriteHeader(code int) {
	rw.w.WriteHeader(code) // first: it panics on an invalid code
	if rw.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		rw.status = code
	}
}

// Write writes body bytes (after an implicit WriteHeader(200)) and counts
// them.
func (rw *responseWriter) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	n, err := rw.w.Write(p)
	rw.written += int64(n)
	return n, err
}

// ReadFrom copies r into the body (after an implicit WriteHeader(200)) with
// the wrapped writer's own ReadFrom when it has one, and counts the bytes.
func (rw *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := rw.w.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(rw.w, r) // rw.w has no ReadFrom: no recursion
	}
	rw.written += n
	return n, err
}

// FlushError flushes the wrapped writer, or returns an error that matches
// http.ErrNotSupported when it cannot flush.
func (rw *responseWriter) FlushError() error {
	err := http.NewResponseController(rw.w).Flush()
	if err == nil && rw.status == 0 {
		rw.status = http.StatusOK // a flush sends the header
	}
	return err
}

// Flush is FlushError for the users of http.Flusher; it does nothing when
// the wrapped writer cannot flush.
func (rw *responseWriter) Flush() { _ = rw.FlushError() }

// Unwrap returns the wrapped writer, for http.NewResponseController.
func (rw *responseWriter) Unwrap() http.ResponseWriter { return rw.w }

// statusFor returns the status to report for a request whose handler
// returned or, if panicked, panicked: the status sent, or when none was,
// 200 (what net/http sends for a handler that wrote nothing) or 500 after a
// panic (net/http then closes the connection without a response).
func (rw *responseWriter) statusFor(panicked bool) int {
	switch {
	case rw.status != 0:
		return rw.status
	case panicked:
		return http.StatusInternalServerError
	}
	return http.StatusOK
}

// countingBody wraps a request body to count the bytes the handler reads.
type countingBody struct {
	rc io.ReadCloser
	n  int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n += int64(n)
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }

// observed is one request seen by a middleware: its wrapped writer and
// body, and its start.
type observed struct {
	rw    *responseWriter
	body  *countingBody // nil for a request without a body (nil or http.NoBody)
	start time.Time
}

// observe wraps the writer and the body of a request; it returns the
// request to hand on (a shallow copy of r with the counting body: a
// middleware does not change the request it was given).
func observe(w http.ResponseWriter, r *http.Request) (*observed, *http.Request) {
	o := &observed{rw: newResponseWriter(w), start: time.Now()}
	if r.Body != nil && r.Body != http.NoBody {
		o.body = &countingBody{rc: r.Body}
		r = r.WithContext(r.Context()) // a shallow copy
		r.Body = o.body
	}
	return o, r
}

// bytesRead returns the bytes of the request body the handler read.
func (o *observed) bytesRead() int64 {
	if o.body == nil {
		return 0
	}
	return o.body.n
}

// AccessLog returns a handler that serves next and logs one line per
// request to log (slog.Default() if log is nil), at Info:
//
//   - method, path, query (when there is one) and route (see the metrics);
//   - status: the status sent; 200 for a handler that wrote nothing;
//   - resp_bytes and req_bytes: the bytes of the response body written and
//     of the request body read;
//   - duration: from the request to the handler's return;
//   - remote: the client's address;
//   - user: the user name of the request's Basic credentials, if any:
//     the user Htpasswd authenticated, or (with a 401) the one it refused;
//     never the password;
//   - digest: the response's Docker-Content-Digest header, when set.
//
// A panic in next is logged at Error with its value and stack, then
// panicked again for net/http (which closes the connection); a request
// aborted with http.ErrAbortHandler is logged at Info with aborted=true and
// its panic goes on silently, as net/http does. After a panic before any
// header was written, the status logged is 500.
//
// Put AccessLog outside Htpasswd.Wrap, so that refused requests are logged
// too.
func AccessLog(log *slog.Logger, next http.Handler) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o, r2 := observe(w, r)
		defer func() {
			p := recover()
			logRequest(log, r, o, p)
			if p != nil {
				panic(p)
			}
		}()
		next.ServeHTTP(o.rw, r2)
	})
}

// logRequest writes the access log line of r; p is the value of the
// handler's panic, if it panicked.
func logRequest(log *slog.Logger, r *http.Request, o *observed, p any) {
	d := time.Since(o.start)
	level, msg := slog.LevelInfo, "http request"
	attrs := make([]slog.Attr, 0, 14)
	attrs = append(attrs,
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path))
	if r.URL.RawQuery != "" {
		attrs = append(attrs, slog.String("query", r.URL.RawQuery))
	}
	attrs = append(attrs,
		slog.String("route", routeOf(r.Method, r.URL.Path)),
		slog.Int("status", o.rw.statusFor(p != nil)),
		slog.Int64("resp_bytes", o.rw.written),
		slog.Int64("req_bytes", o.bytesRead()),
		slog.Duration("duration", d),
		slog.String("remote", r.RemoteAddr))
	if user, _, ok := r.BasicAuth(); ok && user != "" {
		attrs = append(attrs, slog.String("user", user))
	}
	if dg := o.rw.Header().Get("Docker-Content-Digest"); dg != "" {
		attrs = append(attrs, slog.String("digest", dg))
	}
	switch {
	case p == nil:
	case p == http.ErrAbortHandler:
		attrs = append(attrs, slog.Bool("aborted", true))
	default:
		level, msg = slog.LevelError, "http request panicked"
		attrs = append(attrs,
			slog.String("panic", fmt.Sprint(p)),
			slog.String("stack", string(debug.Stack())))
	}
	log.LogAttrs(r.Context(), level, msg, attrs...)
}
