// Package server serves an ocistore layout over the OCI distribution
// spec v1.1: the registry API (pull, push, content discovery and content
// management) of `ocistore serve`, as an http.Handler that a program can
// mount in its own server.
//
// A repository is a set of ref names in the one layout: the tag T of the
// repository R is the index.json entry named "R:T" (what `ocistore ls`
// shows, and what skopeo's oci:DIR:R:T and containerd's images name). One
// layout, one journal: every repository's refcounts, leases, last uses
// and size budget are in one place, so prune and GC see every image at
// once, and a blob shared by repositories is one file, counted once.
// Content is addressed by digest: a blob or manifest of the layout can be
// fetched by digest through any repository name (the layout has no
// per-repository link files; access control, when on, is per server).
// A manifest pushed by digest alone becomes an untagged entry of
// index.json, so that it stays (OCI 1.1 referrers, platform manifests
// pushed before their index).
//
// Uploads are store.Upload sessions: staged in .ocistore/ingest/uploads
// under a lease of the journal each, so that a session survives a restart
// of the server and GC never frees what it wrote before a manifest
// references it; a session nobody writes to expires with its lease, and
// GC then removes what it staged.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/ocistore/ocistore/store"
)

// Options configure New. A nil *Options means the defaults.
type Options struct {
	// Logger receives a line per failed request (the access log is
	// AccessLog's). Nil discards.
	Logger *slog.Logger
	// UploadTTL is how long an upload session lives without a write, and
	// how long a blob it committed stays protected waiting for its
	// manifest. Zero means store.DefaultUploadTTL.
	UploadTTL time.Duration
	// MaxManifestSize is the largest manifest accepted (413 beyond).
	// Zero means store.MaxManifestSize.
	MaxManifestSize int64
	// Metrics, when set, counts the store's transactions and the upload
	// sessions open (its Wrap counts the requests: the caller wraps).
	Metrics *Metrics
	// Upstreams, when set, make the server a pull-through cache of those
	// registries (see Upstream).
	Upstreams []Upstream
	// MaxUploadOpen bounds the upload sessions kept open in memory (their
	// files and running hashes); beyond it, the least recently used is
	// closed and reopened from disk when its client comes back. Zero
	// means 1024.
	MaxUploadOpen int
}

// Server is the registry API over one store.
type Server struct {
	st   *store.Store
	log  *slog.Logger
	opts Options

	uploads struct {
		sync.Mutex
		m map[string]*openUpload
	}
	pull *puller // nil without upstreams
}

// openUpload is an upload session this server has open.
type openUpload struct {
	u    *store.Upload
	repo string
	used time.Time
}

// New returns the registry API over st. The caller keeps st, and closes
// it after the server has stopped (Close first).
func New(st *store.Store, o *Options) *Server {
	s := &Server{st: st}
	if o != nil {
		s.opts = *o
	}
	if s.opts.UploadTTL == 0 {
		s.opts.UploadTTL = store.DefaultUploadTTL
	}
	if s.opts.MaxManifestSize == 0 {
		s.opts.MaxManifestSize = store.MaxManifestSize
	}
	if s.opts.MaxUploadOpen == 0 {
		s.opts.MaxUploadOpen = 1024
	}
	s.log = s.opts.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.uploads.m = map[string]*openUpload{}
	if len(s.opts.Upstreams) > 0 {
		s.pull = &puller{s: s, ups: s.opts.Upstreams}
	}
	return s
}

// Close closes the upload sessions the server holds open, without ending
// them: a client resumes them after a restart.
func (s *Server) Close() error {
	s.uploads.Lock()
	defer s.uploads.Unlock()
	for id, ou := range s.uploads.m {
		ou.u.Close()
		delete(s.uploads.m, id)
	}
	return nil
}

// txn runs fn, a change of the store, and tells the metrics.
func (s *Server) txn(op string, fn func() error) error {
	start := time.Now()
	err := fn()
	s.opts.Metrics.Txn(op, time.Since(start), err)
	return err
}

// Repository names and tags (distribution spec, "Pulling manifests").
var (
	nameRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// ValidRepository reports whether name is a repository name of the
// distribution spec.
func ValidRepository(name string) bool { return nameRE.MatchString(name) }

// route is a parsed /v2/ path.
type route struct {
	kind string // "base", "manifest", "blob", "upload", "tags", "referrers", "catalog"
	name string // the repository
	arg  string // reference, digest or upload id
}

// parsePath parses the path of a request to the /v2/ API. A repository
// name has slashes, so the path is matched from its end.
func parsePath(p string) (route, bool) {
	if p == "/v2/" || p == "/v2" {
		return route{kind: "base"}, true
	}
	if p == "/v2/_catalog" {
		return route{kind: "catalog"}, true
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return route{}, false
	}
	if name, ok := strings.CutSuffix(rest, "/tags/list"); ok {
		return route{kind: "tags", name: name}, true
	}
	if name, ok := strings.CutSuffix(rest, "/blobs/uploads/"); ok {
		return route{kind: "upload", name: name}, true
	}
	if name, ok := strings.CutSuffix(rest, "/blobs/uploads"); ok {
		return route{kind: "upload", name: name}, true
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return route{}, false
	}
	arg, head := rest[i+1:], rest[:i]
	j := strings.LastIndexByte(head, '/')
	if j < 0 {
		return route{}, false
	}
	name, what := head[:j], head[j+1:]
	switch what {
	case "manifests":
		return route{kind: "manifest", name: name, arg: arg}, true
	case "blobs":
		return route{kind: "blob", name: name, arg: arg}, true
	case "referrers":
		return route{kind: "referrers", name: name, arg: arg}, true
	case "uploads":
		if n, ok := strings.CutSuffix(name, "/blobs"); ok {
			return route{kind: "upload", name: n, arg: arg}, true
		}
	}
	return route{}, false
}

// ServeHTTP serves the /v2/ API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt, ok := parsePath(r.URL.Path)
	if !ok {
		s.fail(w, r, apiErr(http.StatusNotFound, codeNotFound, "no such API endpoint: %s", r.URL.Path))
		return
	}
	if rt.kind != "base" && rt.kind != "catalog" && !nameRE.MatchString(rt.name) {
		s.fail(w, r, apiErr(http.StatusBadRequest, codeNameInvalid, "invalid repository name %q", rt.name))
		return
	}
	var err error
	switch rt.kind {
	case "base":
		err = s.base(w, r)
	case "catalog":
		err = s.catalog(w, r)
	case "manifest":
		err = s.manifest(w, r, rt)
	case "blob":
		err = s.blob(w, r, rt)
	case "upload":
		err = s.upload(w, r, rt)
	case "tags":
		err = s.tags(w, r, rt)
	case "referrers":
		err = s.referrers(w, r, rt)
	}
	if err != nil {
		s.fail(w, r, err)
	}
}

func (s *Server) base(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return errMethod(r)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		io.WriteString(w, "{}")
	}
	return nil
}

// Error codes of the distribution spec.
const (
	codeBlobUnknown         = "BLOB_UNKNOWN"
	codeBlobUploadInvalid   = "BLOB_UPLOAD_INVALID"
	codeBlobUploadUnknown   = "BLOB_UPLOAD_UNKNOWN"
	codeDigestInvalid       = "DIGEST_INVALID"
	codeManifestBlobUnknown = "MANIFEST_BLOB_UNKNOWN"
	codeManifestInvalid     = "MANIFEST_INVALID"
	codeManifestUnknown     = "MANIFEST_UNKNOWN"
	codeNameInvalid         = "NAME_INVALID"
	codeNameUnknown         = "NAME_UNKNOWN"
	codeSizeInvalid         = "SIZE_INVALID"
	codeUnsupported         = "UNSUPPORTED"
	codeDenied              = "DENIED"
	codeTooManyRequests     = "TOOMANYREQUESTS"
	codeNotFound            = "NOT_FOUND"
	codeRangeInvalid        = "RANGE_INVALID"
	codeUnavailable         = "UNAVAILABLE"
	codeInternal            = "INTERNAL_ERROR"
)

// apiError is an error response of the API.
type apiError struct {
	status int
	code   string
	msg    string
	cause  error
	header http.Header
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

func (e *apiError) Unwrap() error { return e.cause }

func apiErr(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func errMethod(r *http.Request) error {
	return apiErr(http.StatusMethodNotAllowed, codeUnsupported, "method %s not allowed here", r.Method)
}

// storeErr maps an error of the store to the API's: code is the code of
// a 404 (what was not found) and of a 400 of the operation.
func storeErr(err error, notFound, invalid string, format string, args ...any) error {
	if err == nil {
		return nil
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return err
	}
	msg := fmt.Sprintf(format, args...)
	mk := func(status int, code string) error {
		return &apiError{status: status, code: code, msg: msg, cause: err}
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return mk(http.StatusNotFound, notFound)
	case errors.Is(err, store.ErrInvalidDigest), errors.Is(err, store.ErrDigestMismatch):
		return mk(http.StatusBadRequest, codeDigestInvalid)
	case errors.Is(err, store.ErrSizeMismatch):
		return mk(http.StatusBadRequest, codeSizeInvalid)
	case errors.Is(err, store.ErrMissingDependency):
		return mk(http.StatusBadRequest, codeManifestBlobUnknown)
	case errors.Is(err, store.ErrInvalidArgument), errors.Is(err, store.ErrCorrupt) && invalid == codeManifestInvalid:
		return mk(http.StatusBadRequest, invalid)
	case errors.Is(err, store.ErrTooLarge):
		return mk(http.StatusRequestEntityTooLarge, invalid)
	case errors.Is(err, store.ErrReadOnly):
		return mk(http.StatusMethodNotAllowed, codeUnsupported)
	case errors.Is(err, store.ErrLocked):
		e := &apiError{status: http.StatusServiceUnavailable, code: codeTooManyRequests, msg: msg, cause: err, header: http.Header{}}
		e.header.Set("Retry-After", "5")
		return e
	case errors.Is(err, store.ErrPoisoned), errors.Is(err, store.ErrClosed):
		return mk(http.StatusServiceUnavailable, codeUnavailable)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return mk(499, codeUnavailable)
	}
	return mk(http.StatusInternalServerError, codeInternal)
}

// fail writes err as an error response of the API.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{status: http.StatusInternalServerError, code: codeInternal, msg: "internal error", cause: err}
	}
	level := slog.LevelDebug
	if ae.status >= 500 {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "request failed", "method", r.Method, "path", r.URL.Path, "status", ae.status, "code", ae.code, "err", err)
	if ae.status == 499 {
		return // the client is gone
	}
	for k, v := range ae.header {
		w.Header()[k] = v
	}
	// An error that follows the start of a body cannot be sent.
	h := w.Header()
	h.Del("Content-Length")
	h.Del("Docker-Content-Digest")
	h.Del("ETag")
	h.Set("Content-Type", "application/json")
	w.WriteHeader(ae.status)
	if r.Method == http.MethodHead {
		return
	}
	type detail struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Detail  any    `json:"detail"`
	}
	msg := ae.msg
	if ae.cause != nil && ae.status < 500 {
		msg = ae.Error()
	}
	json.NewEncoder(w).Encode(struct {
		Errors []detail `json:"errors"`
	}{[]detail{{Code: ae.code, Message: msg}}})
}

// writeJSON writes v as a 200 response of type contentType.
func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(b)
	}
	return nil
}
