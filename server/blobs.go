package server

import (
	"errors"
	"io"
	"net/http"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/ocistore/ocistore/store"
)

func (s *Server) blob(w http.ResponseWriter, r *http.Request, rt route) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return s.getBlob(w, r, rt)
	case http.MethodDelete:
		return s.deleteBlob(w, r, rt)
	}
	return errMethod(r)
}

// getBlob serves a blob from the store's read path: Range requests get
// 206 (http.ServeContent), and a blob's ETag is its digest.
func (s *Server) getBlob(w http.ResponseWriter, r *http.Request, rt route) error {
	d, err := parseDigest(rt.arg)
	if err != nil {
		return err
	}
	if s.pull != nil {
		if _, err := s.pull.blob(r, rt, d); err != nil {
			return err
		}
	}
	br, err := s.st.OpenBlob(r.Context(), v1.Descriptor{Digest: d, Size: -1})
	if err != nil {
		return storeErr(err, codeBlobUnknown, codeBlobUnknown, "blob %s", d)
	}
	defer br.Close()
	h := w.Header()
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "max-age=31536000, immutable")
	// The open file itself when there is one: ServeContent's copy of an
	// *os.File to the connection is a sendfile, no copy through user
	// space (BlobReader's own reads give the same bytes).
	var content io.ReadSeeker = br
	if f := br.File(); f != nil {
		content = f
	}
	http.ServeContent(w, r, "", time.Time{}, content)
	return nil
}

// deleteBlob removes a blob that no manifest references: 202, or 405
// (UNSUPPORTED, with the reason) while a manifest of the layout still
// references it (delete the manifests first, as the spec's content
// management workflow does).
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, rt route) error {
	d, err := parseDigest(rt.arg)
	if err != nil {
		return err
	}
	err = s.txn("delete", func() error {
		_, err := s.st.DeleteBlob(r.Context(), d)
		return err
	})
	if err != nil {
		if errors.Is(err, store.ErrReferenced) || errors.Is(err, store.ErrRefused) {
			return &apiError{status: http.StatusMethodNotAllowed, code: codeDenied, msg: "blob " + d.String() + " cannot be deleted", cause: err}
		}
		return storeErr(err, codeBlobUnknown, codeBlobUnknown, "delete blob %s", d)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}
