package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/store"
)

func (s *Server) upload(w http.ResponseWriter, r *http.Request, rt route) error {
	if rt.arg == "" {
		if r.Method != http.MethodPost {
			return errMethod(r)
		}
		return s.startUpload(w, r, rt)
	}
	switch r.Method {
	case http.MethodGet:
		return s.uploadStatus(w, r, rt)
	case http.MethodPatch:
		return s.patchUpload(w, r, rt)
	case http.MethodPut:
		return s.finishUpload(w, r, rt)
	case http.MethodDelete:
		return s.cancelUpload(w, r, rt)
	}
	return errMethod(r)
}

// startUpload is POST /v2/<name>/blobs/uploads/: a mount (?mount=), a
// monolithic upload (?digest=, the blob in the body), or a new session.
func (s *Server) startUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	ctx := r.Context()
	q := r.URL.Query()
	if m := q.Get("mount"); m != "" {
		d, err := parseDigest(m)
		if err != nil {
			return err
		}
		// One layout holds every repository: a blob present is mounted
		// wherever it came from (?from= names it, or not). The 201
		// acknowledges it as stored: MountBlob makes its name durable
		// (a push of it may be between its rename and its directory sync).
		// It is held first, as an upload's blob is: the manifest that
		// names it comes later, and GC must not take it meanwhile.
		if err := s.st.Hold(ctx, s.opts.UploadTTL, v1.Descriptor{Digest: d}); err != nil {
			return storeErr(err, codeBlobUnknown, codeBlobUploadInvalid, "mount %s", d)
		}
		ok, err := s.st.MountBlob(ctx, v1.Descriptor{Digest: d, Size: -1})
		if err != nil {
			return storeErr(err, codeBlobUnknown, codeBlobUploadInvalid, "mount %s", d)
		}
		if ok {
			return blobCreated(w, rt.name, d)
		}
		// Not here: a new session, as the spec says.
	}
	if dg := q.Get("digest"); dg != "" {
		d, err := parseDigest(dg)
		if err != nil {
			return err
		}
		return s.monolithic(w, r, rt, d)
	}
	u, err := s.st.NewUpload(ctx, s.opts.UploadTTL)
	if err != nil {
		return storeErr(err, codeBlobUploadUnknown, codeBlobUploadInvalid, "start an upload")
	}
	s.keep(u, rt.name)
	return uploadAccepted(w, http.StatusAccepted, rt.name, u)
}

// monolithic stores the body of a POST as the blob d, held (Store.Hold)
// for UploadTTL before it is written, so that it stays until a manifest
// references it.
func (s *Server) monolithic(w http.ResponseWriter, r *http.Request, rt route, d digest.Digest) error {
	ctx := r.Context()
	size := int64(-1)
	if r.ContentLength >= 0 {
		size = r.ContentLength
	}
	desc := v1.Descriptor{Digest: d, Size: size}
	if err := s.st.Hold(ctx, s.opts.UploadTTL, desc); err != nil {
		return storeErr(err, codeBlobUploadUnknown, codeBlobUploadInvalid, "upload %s", d)
	}
	body := &clientBody{r: r.Body}
	if err := s.st.PutBlob(ctx, desc, body); err != nil {
		if body.err != nil {
			return &apiError{status: http.StatusBadRequest, code: codeBlobUploadInvalid,
				msg: fmt.Sprintf("upload %s: the request body was cut after %d bytes", d, body.n), cause: body.err}
		}
		return storeErr(err, codeBlobUploadUnknown, codeDigestInvalid, "upload %s", d)
	}
	return blobCreated(w, rt.name, d)
}

// session returns the upload session id: open here, or reopened from the
// store (after a restart).
func (s *Server) session(r *http.Request, rt route) (*store.Upload, error) {
	id := rt.arg
	s.uploads.Lock()
	ou := s.uploads.m[id]
	if ou != nil {
		ou.used = time.Now()
	}
	s.uploads.Unlock()
	if ou != nil {
		return ou.u, nil
	}
	u, err := s.st.ResumeUpload(r.Context(), id, s.opts.UploadTTL)
	if err != nil {
		if errors.Is(err, store.ErrInvalidArgument) {
			err = fmt.Errorf("%w: %w", err, store.ErrNotFound)
		}
		return nil, storeErr(err, codeBlobUploadUnknown, codeBlobUploadInvalid, "upload %s", id)
	}
	return s.keep(u, rt.name), nil
}

// keep notes an open session, closing the least recently used one beyond
// MaxUploadOpen (it stays on disk). Of two opens of one session, the
// first is kept.
func (s *Server) keep(u *store.Upload, repo string) *store.Upload {
	s.uploads.Lock()
	defer s.uploads.Unlock()
	if ou := s.uploads.m[u.ID]; ou != nil {
		u.Close()
		return ou.u
	}
	// Sessions idle past their TTL have expired: their files go.
	for id, ou := range s.uploads.m {
		if time.Since(ou.used) > s.opts.UploadTTL {
			ou.u.Close()
			delete(s.uploads.m, id)
		}
	}
	if len(s.uploads.m) >= s.opts.MaxUploadOpen {
		var oldest string
		var at time.Time
		for id, ou := range s.uploads.m {
			if oldest == "" || ou.used.Before(at) {
				oldest, at = id, ou.used
			}
		}
		s.uploads.m[oldest].u.Close()
		delete(s.uploads.m, oldest)
	}
	s.uploads.m[u.ID] = &openUpload{u: u, repo: repo, used: time.Now()}
	s.opts.Metrics.Uploads(len(s.uploads.m))
	return u
}

// forget drops an ended session.
func (s *Server) forget(id string) {
	s.uploads.Lock()
	delete(s.uploads.m, id)
	s.opts.Metrics.Uploads(len(s.uploads.m))
	s.uploads.Unlock()
}

func (s *Server) uploadStatus(w http.ResponseWriter, r *http.Request, rt route) error {
	u, err := s.session(r, rt)
	if err != nil {
		return err
	}
	return uploadAccepted(w, http.StatusNoContent, rt.name, u)
}

// contentRange parses a chunk's Content-Range ("start-end", or with the
// "bytes " prefix some clients send): the offset it starts at, -1 when
// the header is absent.
func contentRange(r *http.Request) (start, end int64, err error) {
	v := r.Header.Get("Content-Range")
	if v == "" {
		return -1, -1, nil
	}
	v = strings.TrimPrefix(strings.TrimSpace(v), "bytes ")
	a, b, ok := strings.Cut(v, "-")
	if ok {
		b, _, _ = strings.Cut(b, "/")
		start, err1 := strconv.ParseInt(a, 10, 64)
		end, err2 := strconv.ParseInt(b, 10, 64)
		if err1 == nil && err2 == nil && start >= 0 && end >= start-1 {
			return start, end, nil
		}
	}
	return 0, 0, apiErr(http.StatusBadRequest, codeBlobUploadInvalid, "invalid Content-Range %q", r.Header.Get("Content-Range"))
}

// appendChunk writes the body of a PATCH or PUT to the session: 416 when
// its Content-Range does not start where the upload ends.
func (s *Server) appendChunk(w http.ResponseWriter, r *http.Request, rt route, u *store.Upload) error {
	start, end, err := contentRange(r)
	if err != nil {
		return err
	}
	off := u.Size()
	if start >= 0 {
		if start != off {
			e := apiErr(http.StatusRequestedRangeNotSatisfiable, codeRangeInvalid, "chunk starts at %d, the upload holds %d bytes", start, off)
			e.header = uploadHeaders(rt.name, u.ID, off)
			return e
		}
		if r.ContentLength >= 0 && r.ContentLength != end-start+1 {
			return apiErr(http.StatusBadRequest, codeBlobUploadInvalid, "Content-Range %d-%d is %d bytes, Content-Length %d", start, end, end-start+1, r.ContentLength)
		}
	}
	body := &clientBody{r: r.Body}
	if r.ContentLength >= 0 {
		body.r = io.LimitReader(r.Body, r.ContentLength)
	}
	n, err := u.Write(r.Context(), off, body)
	if err != nil {
		if errors.Is(err, store.ErrUploadOffset) {
			e := apiErr(http.StatusRequestedRangeNotSatisfiable, codeRangeInvalid, "chunk starts at %d, the upload holds %d bytes", off, u.Size())
			e.header = uploadHeaders(rt.name, u.ID, u.Size())
			return e
		}
		if body.err != nil {
			// What came is in the session: the client resumes after it.
			e := apiErr(http.StatusBadRequest, codeBlobUploadInvalid, "upload %s: the chunk was cut after %d bytes; the upload holds %d", u.ID, n, u.Size())
			e.cause, e.header = body.err, uploadHeaders(rt.name, u.ID, u.Size())
			return e
		}
		return storeErr(err, codeBlobUploadUnknown, codeBlobUploadInvalid, "upload %s", u.ID)
	}
	if r.ContentLength >= 0 && n != r.ContentLength {
		return apiErr(http.StatusBadRequest, codeBlobUploadInvalid, "chunk of %d bytes, Content-Length said %d", n, r.ContentLength)
	}
	return nil
}

func (s *Server) patchUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	u, err := s.session(r, rt)
	if err != nil {
		return err
	}
	if err := s.appendChunk(w, r, rt, u); err != nil {
		return err
	}
	return uploadAccepted(w, http.StatusAccepted, rt.name, u)
}

// finishUpload is the PUT that ends a session, with the last chunk or
// none: 201 once the blob is in the layout.
func (s *Server) finishUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	dg := r.URL.Query().Get("digest")
	if dg == "" {
		return apiErr(http.StatusBadRequest, codeDigestInvalid, "the digest parameter is missing")
	}
	d, err := parseDigest(dg)
	if err != nil {
		return err
	}
	u, err := s.session(r, rt)
	if err != nil {
		return err
	}
	if r.ContentLength != 0 {
		if err := s.appendChunk(w, r, rt, u); err != nil {
			return err
		}
	}
	err = s.txn("upload_commit", func() error {
		_, err := u.Commit(r.Context(), v1.Descriptor{Digest: d, Size: -1})
		return err
	})
	if err != nil {
		return storeErr(err, codeBlobUploadUnknown, codeDigestInvalid, "upload %s", u.ID)
	}
	s.forget(u.ID)
	return blobCreated(w, rt.name, d)
}

func (s *Server) cancelUpload(w http.ResponseWriter, r *http.Request, rt route) error {
	u, err := s.session(r, rt)
	if err != nil {
		return err
	}
	s.forget(u.ID)
	if err := u.Cancel(r.Context()); err != nil {
		return storeErr(err, codeBlobUploadUnknown, codeBlobUploadInvalid, "cancel upload %s", u.ID)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// uploadHeaders are the headers that describe a session: where to send
// the next chunk, and what the upload holds (Range 0-0 when empty, as
// distribution says it).
func uploadHeaders(repo, id string, size int64) http.Header {
	h := http.Header{}
	h.Set("Location", "/v2/"+repo+"/blobs/uploads/"+id)
	h.Set("Range", fmt.Sprintf("0-%d", max(size-1, 0)))
	h.Set("Docker-Upload-UUID", id)
	return h
}

func uploadAccepted(w http.ResponseWriter, status int, repo string, u *store.Upload) error {
	for k, v := range uploadHeaders(repo, u.ID, u.Size()) {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
	return nil
}

func blobCreated(w http.ResponseWriter, repo string, d digest.Digest) error {
	h := w.Header()
	h.Set("Location", "/v2/"+repo+"/blobs/"+d.String())
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// clientBody reads a request's body and keeps the error of a read that
// failed: the client's connection dropped, or the body ended before its
// Content-Length. Such a failure is the client's (400), not the store's.
type clientBody struct {
	r   io.Reader
	n   int64
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}
